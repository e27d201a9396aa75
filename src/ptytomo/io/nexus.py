"""One angle's scan from a NeXus NXcxi_ptycho file (the NeXus application definition for ptychography).

The paths are CXI's (:mod:`.cxi`), with three differences: the photon energy is
``instrument_1/beam_1/incident_beam_energy`` (``source_1/energy`` is the storage
ring's electron energy), the probe is ``source_1/probe``, and every quantity
carries its unit in ``@units`` (required here: NeXus files state units, so a
missing one is an error, not a guess).  The rotation angle is read from
``/entry_1/sample_1/rotation_angle`` when present (NXtomo's field, in degree
or rad).
"""

from __future__ import annotations

from contextlib import contextmanager

from .cxi import CXI, Layout, read_scan
from .foreign import InputFile, as_text

NXCXI = Layout(
    name="nxcxi",
    frames=CXI.frames,
    translation=CXI.translation,
    energy=("/entry_1/instrument_1/beam_1/incident_beam_energy",),
    probe=("/entry_1/instrument_1/source_1/probe",),
    angle=("/entry_1/sample_1/rotation_angle",),
    length_unit=None,
    energy_unit=None,
    angle_unit=None,
)


def is_nxcxi(f: InputFile) -> bool:
    """An NXcxi_ptycho file names its definition, or has the beam group CXI lacks."""
    for path in ("/entry_1/definition", "/entry/definition"):
        if f.has(path):
            try:
                if (as_text(f.file[path][()]) or "").strip() == "NXcxi_ptycho":
                    return True
            except (OSError, ValueError, TypeError):
                pass
    return f.has("/entry_1/instrument_1/beam_1")


@contextmanager
def open_scan(path: str):
    """Yield the :class:`~.foreign.AngleScan` of one NXcxi_ptycho file."""
    with InputFile(path) as f:
        yield read_scan(f, NXCXI)
