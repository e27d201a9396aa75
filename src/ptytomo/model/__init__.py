"""The forward model's unknowns beside the volume, as parameter groups (see groups.py)."""

from .groups import GroupOptions, ParameterGroup, RefiningStepper
from .positions import PositionOptions, PositionsGroup
from .probe import ProbeGroup, ProbeOptions, initial_probe, orthogonal_modes
from .scale import ScaleGroup, ScaleOptions
from .shifts import ShiftOptions, ShiftsGroup

# Every refinable unknown by its --refine name: (group class, options class).
GROUPS = {"probe": (ProbeGroup, ProbeOptions), "positions": (PositionsGroup, PositionOptions),
          "shifts": (ShiftsGroup, ShiftOptions), "scale": (ScaleGroup, ScaleOptions)}

__all__ = ["GROUPS", "GroupOptions", "ParameterGroup", "PositionOptions", "PositionsGroup", "ProbeGroup",
           "ProbeOptions", "RefiningStepper", "ScaleGroup", "ScaleOptions", "ShiftOptions", "ShiftsGroup", "initial_probe", "orthogonal_modes"]
