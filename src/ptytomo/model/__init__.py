"""The forward model's unknowns beside the volume, as parameter groups (see groups.py).

Adding a group: a class in its own module here, an entry in :data:`GROUPS` and a branch in
:func:`make_groups`.
"""

from __future__ import annotations

import numpy as np

from ..distributed import SOLO, Comm, gather_angles, share_of

from .groups import GroupOptions, ParameterGroup, RefiningStepper
from .positions import PositionOptions, PositionsGroup
from .probe import ProbeGroup, ProbeOptions, orthogonal_modes
from .probe_init import initial_probe
from .scale import ScaleGroup, ScaleOptions
from .shifts import ShiftOptions, ShiftsGroup

# Every refinable unknown by its --refine name: (group class, options class).
GROUPS = {"probe": (ProbeGroup, ProbeOptions), "positions": (PositionsGroup, PositionOptions),
          "shifts": (ShiftsGroup, ShiftOptions), "scale": (ScaleGroup, ScaleOptions)}

__all__ = ["make_groups", "refined_fields", "GROUPS", "GroupOptions", "ParameterGroup", "PositionOptions", "PositionsGroup", "ProbeGroup",
           "ProbeOptions", "RefiningStepper", "ScaleGroup", "ScaleOptions", "ShiftOptions", "ShiftsGroup", "initial_probe", "orthogonal_modes"]


def make_groups(objective, options, comm: Comm = SOLO) -> list:
    """The parameter groups ``options.refine`` names, on ``objective``'s model."""
    model, refined, groups = objective.model, options.refined(), []
    if "probe" in refined:
        groups.append(ProbeGroup(model, ProbeOptions(enabled=True, start=options.probe_start,
                                                     updates=options.probe_updates)))
    if "positions" in refined:
        position_options = PositionOptions(enabled=True, start=options.positions_start, wait=options.positions_wait,
                                           max_correction=options.max_position_correction,
                                           prior=options.position_prior,
                                           affine=options.position_affine,
                                           pin_scale=options.pins_scan_scale(),
                                           # with per-angle shifts refined, each angle's common offset is theirs
                                           per_angle_mean="shifts" in refined)
        groups.append(PositionsGroup(model, position_options, gather=lambda t: gather_angles(comm, t),
                                     share=lambda t: share_of(comm, t, model.recorded_positions),
                                     counts_per_unit=objective.probe_max**2))
    if "shifts" in refined:
        groups.append(ShiftsGroup(model, ShiftOptions(enabled=True, start=options.shifts_start,
                                                      max_shift=options.shift_bound(model.volume_shape)),
                                  gather=lambda t: gather_angles(comm, t),
                                  share=lambda t: share_of(comm, t, model.recorded_positions)))
    if "scale" in refined:
        groups.append(ScaleGroup(model, ScaleOptions(enabled=True), gather=lambda t: gather_angles(comm, t),
                                 share=lambda t: share_of(comm, t, model.recorded_positions)))
    probe = next((g for g in groups if g.name == "probe"), None)
    for group in groups:
        if group.name in ("positions", "shifts"):  # windows registered against a wrong probe drift
            group.waits_for = probe
    return groups


def refined_fields(objective, groups: list, comm: Comm = SOLO) -> dict:
    """The Reconstruction fields of the groups refined besides the volume (FORMAT.md's optional ones), and
    under ``parameters`` the attributes of those without a FORMAT.md field."""
    model, out = objective.model, {}
    if any(g.name == "probe" for g in groups):
        out["probe"] = (model.probe * objective.probe_max).cpu().numpy().astype(np.complex64)
    for group in groups:
        if group.name == "positions":
            out["positions"] = gather_angles(comm, group.refined_positions()).numpy()
        if group.name == "shifts":
            out["angle_shifts"] = gather_angles(comm, group.shifts).numpy()
        if group.name == "scale":  # no FORMAT.md field: an attribute, in /truth/angle_scale's units (counts)
            out.setdefault("parameters", {})["angle_intensity_scale"] = (gather_angles(comm, group.scale) ** 2).tolist()
    return out
