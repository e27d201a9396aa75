"""Linear operators of the forward model (each with forward and adjoint) and the joint model built from them."""

from .base import LinearOperator, adjointness_gap
from .joint import JointModel
from .propagation import FresnelPropagator
from .ptycho import Ptychography, shift_probe
from .tomo import ParallelProjector, SlabProjector, slab_edges

__all__ = ["LinearOperator", "adjointness_gap", "JointModel", "Ptychography", "shift_probe", "ParallelProjector",
           "SlabProjector", "slab_edges", "FresnelPropagator"]
