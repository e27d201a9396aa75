"""Solvers: optimisers behind one interface, priors, and the shared iteration loop."""

from .optimizers import OPTIMIZERS, make_optimizer
from .priors import Regularised
from .run import History, RunResult, iterate, load_checkpoint

__all__ = ["OPTIMIZERS", "make_optimizer", "Regularised", "History", "RunResult", "iterate", "load_checkpoint"]
