"""Physical units in the report: scale bars, the electron-density scale and ``units.png``.

Electron density is delta times one constant (:func:`ptytomo.physics.electron_density_per_delta`),
so ``slices.png`` shows it as a second scale on delta's colour bar rather than
as another figure.  A compound's mass density from delta and from beta get a
figure of their own, ``units.png``: on one shared colour scale (g/cm^3) the
places where the two estimates disagree show as a difference in brightness,
which two colour bars of their own would hide.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from . import physics

UNITS_NAME = "units.png"
SCALE_BAR_FRACTION = 0.2
"""A scale bar is the round length closest to this fraction of the field (and at most half of it)."""


def scale_bar_length(field_m: float) -> tuple[float, str]:
    """A round length (1, 2 or 5 x 10^k) near a fifth of ``field_m``, and its label in nm or µm."""
    if not (math.isfinite(field_m) and field_m > 0):
        raise ValueError(f"field must be finite and > 0, got {field_m!r}")
    target = SCALE_BAR_FRACTION * field_m
    decade = math.floor(math.log10(target))
    candidates = [m * 10.0**e for e in (decade - 1, decade, decade + 1) for m in (1, 2, 5)]
    candidates = [c for c in candidates if c <= 0.5 * field_m] or [min(candidates)]
    length = min(candidates, key=lambda c: abs(math.log(c / target)))
    if length < 1e-6:
        value, unit = length * 1e9, "nm"
    else:
        value, unit = length * 1e6, "µm"
    return length, f"{float(f'{value:.3g}'):g} {unit}"


def add_scale_bar(ax, voxel_size_m: float, field_voxels: int) -> AnchoredSizeBar:
    """Draw a scale bar (lower right, on a dark box) on an image of ``voxel_size_m`` voxels; return it.

    ``field_voxels`` is the width the bar's length is chosen from: pass the
    narrowest panel of a figure, so that every panel carries the same bar.
    """
    length, label = scale_bar_length(field_voxels * voxel_size_m)
    bar = AnchoredSizeBar(ax.transData, length / voxel_size_m, label, "lower right", pad=0.3, borderpad=0.4,
                          sep=3, color="white", frameon=True, size_vertical=max(field_voxels / 60, 0.3),
                          fontproperties={"size": 7})
    bar.patch.set_facecolor("black")
    bar.patch.set_alpha(0.55)
    bar.patch.set_edgecolor("none")
    bar.set_gid("scale bar")
    ax.add_artist(bar)
    return bar


def add_electron_density_scale(colorbar, energy_kev: float, object_median_nm3: float | None = None) -> None:
    """A second scale on delta's colour bar: electrons per nm^3, with the object's median in its label."""
    factor = physics.electron_density_per_delta(energy_kev)
    scale = colorbar.ax.secondary_yaxis("left", functions=(lambda d: d * factor, lambda e: e / factor))
    label = "electron density (e/nm³)"
    if object_median_nm3 is not None and math.isfinite(object_median_nm3):
        label += f", object median {object_median_nm3:.4g}"
    scale.set_ylabel(label, fontsize=7)
    scale.tick_params(labelsize=6)


def units_figure(volume: np.ndarray, voxel_size_m: float, energy_kev: float, compound: str, title: str = "",
                 dpi: int = 110) -> Figure:
    """Central slices of the electron density and of ``compound``'s mass density from delta and from beta.

    Both mass-density rows share one colour scale, so where they disagree
    (another material, a part of the reconstruction that is not quantitative)
    is visible; each row's title gives the object's median
    (:data:`ptytomo.physics.OBJECT_DEFINITION`).
    """
    volume = np.asarray(volume)
    units = physics.physical_units(volume, energy_kev, compound)
    delta = volume.real
    beta = volume.imag if np.iscomplexobj(volume) else np.zeros(volume.shape, np.float32)
    rows = [
        ("electron density", "e/nm³", delta, units["electron_density_per_delta_nm3"],
         units["object_electron_density_median_nm3"], "electron"),
        (f"{compound} mass density from delta", "g/cm³", delta, units["mass_density_per_delta_g_cm3"],
         units["object_mass_density_from_delta_median_g_cm3"], "mass"),
        (f"{compound} mass density from beta", "g/cm³", beta, units["mass_density_per_beta_g_cm3"],
         units["object_mass_density_from_beta_median_g_cm3"], "mass"),
    ]
    slices = {label: [(plane, image * factor) for plane, image in _central_planes(part)]
              for label, _, part, factor, _, _ in rows}
    limits = {}
    for label, _, _, _, _, group in rows:
        limits.setdefault(group, []).extend(image for _, image in slices[label])
    limits = {group: _robust_limits(images) for group, images in limits.items()}

    nz, ny, nx = volume.shape
    heading = f"physical units ({compound}, {energy_kev:g} keV)"
    heading = f"{title}: {heading}" if title else heading
    heading += f"\nobject: {physics.OBJECT_DEFINITION}"
    height = 3.0 * len(rows) + 1.4
    fig = Figure(figsize=(12, height), dpi=dpi)
    grid = fig.add_gridspec(len(rows), 4, width_ratios=(1, 1, 1, 0.05), left=0.06, right=0.92,
                            bottom=0.5 / height, top=1 - 0.9 / height, wspace=0.35, hspace=0.45)
    for r, (label, unit, _, _, median, group) in enumerate(rows):
        low, high = limits[group]
        image = None
        for c, (plane, data) in enumerate(slices[label]):
            ax = fig.add_subplot(grid[r, c])
            image = ax.imshow(data, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"{label}, {plane}\nobject median {median:.4g} {unit}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            add_scale_bar(ax, voxel_size_m, min(ny, nx))
        colorbar = fig.colorbar(image, cax=fig.add_subplot(grid[r, 3]))
        colorbar.set_label(unit)
        colorbar.ax.tick_params(labelsize=7)
    fig.suptitle(heading, y=1 - 0.1 / height, va="top", fontsize=10)
    return fig


def _central_planes(part: np.ndarray) -> list[tuple[str, np.ndarray]]:
    nz, ny, nx = part.shape
    return [
        (f"xy (z = {nz // 2})", np.asarray(part[nz // 2, :, :], float)),
        (f"xz (y = {ny // 2})", np.asarray(part[:, ny // 2, :], float)),
        (f"yz (x = {nx // 2})", np.asarray(part[:, :, nx // 2], float)),
    ]


def _robust_limits(images) -> tuple[float, float]:
    """0.5th and 99.5th percentiles of the finite values: a few noisy voxels (beta's) do not set the scale."""
    finite = np.concatenate([np.ravel(a)[np.isfinite(np.ravel(a))] for a in images])
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    if not high > low:
        pad = abs(low) * 1e-3 or 1.0
        low, high = low - pad, high + pad
    return low, high
