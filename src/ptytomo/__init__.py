"""ptytomo: joint ptycho-tomographic reconstruction of complex refractive-index volumes.

The pipeline, one module each: physics and phantoms -> scan geometry ->
operators (tomography, ptychography, the joint model) -> solvers -> I/O ->
metrics -> reports -> CLI.  See docs/ARCHITECTURE.md.
"""

from .errors import PtytomoError
from .io import Geometry, PtychoTomoData, Reconstruction, read_data, read_reconstruction, write_data, write_reconstruction
from .simulate import SimulationConfig, simulate

__version__ = "0.1.0"

__all__ = [
    "PtytomoError",
    "Geometry",
    "PtychoTomoData",
    "Reconstruction",
    "read_data",
    "read_reconstruction",
    "write_data",
    "write_reconstruction",
    "SimulationConfig",
    "simulate",
]
