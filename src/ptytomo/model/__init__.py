"""The forward model's unknowns beside the volume, as parameter groups (see groups.py)."""

from .groups import GroupOptions, ParameterGroup, RefiningStepper
from .positions import PositionOptions, PositionsGroup
from .probe import ProbeGroup, ProbeOptions, initial_probe, orthogonal_modes

# Every refinable unknown by its --refine name: (group class, options class).
GROUPS = {"probe": (ProbeGroup, ProbeOptions), "positions": (PositionsGroup, PositionOptions)}

__all__ = ["GROUPS", "GroupOptions", "ParameterGroup", "PositionOptions", "PositionsGroup", "ProbeGroup",
           "ProbeOptions", "RefiningStepper", "initial_probe", "orthogonal_modes"]
