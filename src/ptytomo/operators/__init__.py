"""Linear operators of the forward model (each with forward and adjoint) and the joint model built from them."""

from .base import LinearOperator, adjointness_gap
from .joint import JointModel
from .ptycho import Ptychography, shift_probe
from .tomo import ParallelProjector

__all__ = ["LinearOperator", "adjointness_gap", "JointModel", "Ptychography", "shift_probe", "ParallelProjector"]
