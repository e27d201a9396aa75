"""File input and output: one module per layout.

- :mod:`.ptytomo_format`: ptytomo's own data and reconstruction files (FORMAT.md).
- :mod:`.foreign`: one angle's scan from any foreign layout (``AngleScan``), units, HDF5 errors.
- :mod:`.cxi`, :mod:`.nexus`, :mod:`.ptychodus`, :mod:`.mapping`: one foreign layout each.
- :mod:`.series`: per-angle foreign inputs -> one FORMAT.md file, streamed (``ptytomo import``).
- :mod:`.export`: a reconstruction's volume -> TIFF, OME-Zarr or .npy for viewers, streamed
  (``ptytomo export``; imported on its own, it is not re-exported here).

Everything the rest of the package and users need is re-exported here, so
``from ptytomo.io import read_data`` keeps working whatever module holds it.
"""

from .ptytomo_format import *  # noqa: F401,F403
from .ptytomo_format import (  # noqa: F401  (names the package's modules use)
    ANGLES, DATA_FORMAT, FORMAT_VERSION, GEOMETRY, HISTORY, INTENSITIES, MASK, POSITIONS, PROBE,
    RECONSTRUCTION, RECONSTRUCTION_FORMAT, SIMULATION, TRUTH, VALID, VOLUME,
    Geometry, LazyIntensities, PtychoTomoData, Reconstruction, atomic_h5, intensities_shape, read_data,
    read_intensities, read_reconstruction, validate_data, validate_reconstruction, write_data,
    write_reconstruction,
)
