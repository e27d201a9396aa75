"""PNG figures of a reconstruction: central slices and convergence history.

``write_report`` draws with :class:`matplotlib.figure.Figure` directly, never
through pyplot, so it changes no global matplotlib state (backend, current
figure, open figures) and works headless.  Each PNG is written under a
temporary name in the output folder and moved into place with ``os.replace``,
so an interrupted report never leaves a half-written image behind.

Relative RMSE follows FORMAT.md: ``sqrt(mean((x_hat - x)^2)) / sqrt(mean(x^2))``
over the whole volume, for delta and beta separately, by :mod:`ptytomo.metrics`.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path

import h5py
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import PtytomoError
from .io import DATA_FORMAT, TRUTH, Reconstruction, read_reconstruction
from .metrics import rmse
from .physics import physical_units
from .report_units import UNITS_NAME, add_electron_density_scale, add_scale_bar, units_figure

SLICES_NAME = "slices.png"
CONVERGENCE_NAME = "convergence.png"
HELDOUT_NAME = "heldout.png"
SHIFTS_NAME = "angle_shifts.png"
PROBE_NAME = "probe_modes.png"
POSITIONS_NAME = "positions.png"
FSC_NAME = "fsc.png"

_QUANTITIES = (("delta", "real"), ("beta", "imag"))
_CMAP = "gray"
_DPI = 110


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def write_report(recon: Reconstruction, out_dir, truth: np.ndarray | None = None, title: str = "",
                 recorded_positions: np.ndarray | None = None, compound: str = "") -> list[Path]:
    """Write ``slices.png`` and ``convergence.png`` into ``out_dir``; return their paths.

    ``truth`` is an optional complex ``(Nz, Ny, Nx)`` volume (delta + i*beta; a
    real array means beta = 0).  With it, the slice figure shows the truth's
    slices beside the reconstruction's with the same colour limits, and the
    relative RMSE of delta and beta; the convergence figure divides the
    history's rmse columns by ``sqrt(mean(truth^2))``.  Every slice panel
    carries a scale bar, and delta's colour bar a second scale in electrons
    per nm^3.  With a ``compound`` (a chemical formula), ``units.png`` shows
    its mass density from delta and from beta (:mod:`ptytomo.report_units`).
    """
    volume = np.asarray(recon.volume)
    if volume.ndim != 3:
        raise PtytomoError(f"report: reconstruction volume has shape {volume.shape}, expected (Nz, Ny, Nx)")
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != volume.shape:
            raise PtytomoError(
                f"report: truth has shape {truth.shape}, expected the reconstruction's {volume.shape}"
            )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtytomoError(f"{out}: cannot create the report folder ({exc.strerror or exc})") from None
    if not out.is_dir():
        raise PtytomoError(f"{out}: exists and is not a folder")

    norms = _truth_norms(truth) if truth is not None else None
    errors = _error_labels(volume, truth, norms) if truth is not None else None

    paths = [
        _save_atomically(_slices_figure(volume, truth, errors, title, recon.geometry), out / SLICES_NAME),
        _save_atomically(_convergence_figure(recon.history, norms, title), out / CONVERGENCE_NAME),
    ]
    if compound:
        paths.append(_save_atomically(units_figure(volume, recon.geometry.voxel_size_m, recon.geometry.energy_kev,
                                                   compound, title, _DPI), out / UNITS_NAME))
    if "heldout_misfit" in (recon.parameters or {}):  # a --tv auto run
        paths.append(_save_atomically(heldout_figure(recon.parameters, title), out / HELDOUT_NAME))
    if recon.probe is not None:  # a --refine probe run
        paths.append(_save_atomically(probe_figure(recon.probe, title), out / PROBE_NAME))
    if recon.positions is not None and recorded_positions is not None:  # a --refine positions run
        paths.append(_save_atomically(positions_figure(recon.positions, recorded_positions, title),
                                      out / POSITIONS_NAME))
    if recon.angle_shifts is not None:  # a --refine shifts run
        paths.append(_save_atomically(shifts_figure(recon.angle_shifts, recon.parameters or {}, title),
                                      out / SHIFTS_NAME))
    if recon.resolution is not None:  # a `ptytomo resolution` file
        paths.append(write_fsc_figure(recon, out, title))
    return paths


def report_from_files(recon_path, data_path=None, out_dir=None, compound: str | None = None) -> list[Path]:
    """Read a reconstruction file (and the truth of a data file) and write its report.

    The truth is ``/truth/volume`` of ``data_path`` when given and present;
    only that dataset is read, not the intensities.  ``out_dir`` defaults to
    ``<recon stem>_report`` next to the reconstruction file.  ``compound``
    defaults to the file's ``compound`` attribute (``reconstruct --compound``).
    """
    recon_path = Path(recon_path)
    recon = read_reconstruction(recon_path)
    truth = None
    if data_path is not None:
        truth = _read_truth(Path(data_path))
        if truth is not None and truth.shape != np.shape(recon.volume):
            raise PtytomoError(
                f"{data_path}: {TRUTH} has shape {truth.shape}, but the reconstruction "
                f"{recon_path.name} has volume shape {np.shape(recon.volume)}"
            )
    if out_dir is None:
        out_dir = recon_path.with_name(recon_path.stem + "_report")
    title = f"{recon_path.name} ({recon.method})"
    recorded = _read_positions(Path(data_path)) if data_path is not None and recon.positions is not None else None
    if compound is None:
        compound = recon.parameters.get("compound") or ""
    return write_report(recon, out_dir, truth=truth, title=title, recorded_positions=recorded,
                        compound=str(compound).strip())


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def _part(array: np.ndarray, attr: str) -> np.ndarray:
    """Real or imaginary part; a real array has imaginary part zero."""
    if attr == "imag" and not np.iscomplexobj(array):
        return np.zeros(array.shape, dtype=np.float32)
    return getattr(array, attr)


def _truth_norms(truth: np.ndarray) -> dict[str, float]:
    """sqrt(mean(truth^2)) of delta and beta."""
    return {name: rmse(_part(truth, attr)) for name, attr in _QUANTITIES}


def _error_labels(volume, truth, norms) -> dict[str, str]:
    """"relative RMSE 0.123" of delta and beta, or the absolute RMSE where that truth is all zero.

    (Relative RMSE is infinite there, FORMAT.md's definition; a pure-phase
    truth has beta = 0, and the absolute number is the useful one then.)
    NaN in the volume (a diverged run) gives "nan".
    """
    labels = {}
    for name, attr in _QUANTITIES:
        error = rmse(_part(volume, attr), _part(truth, attr))
        if norms[name] > 0:
            labels[name] = f"relative RMSE {_format_error(error / norms[name])}"
        else:
            labels[name] = f"RMSE {_format_error(error)} (truth is zero)"
    return labels


def _limits(arrays) -> tuple[float, float]:
    """Shared colour limits: min and max of the finite values of all arrays."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return 0.0, 1.0
    low = float(min(a.min() for a in finite))
    high = float(max(a.max() for a in finite))
    if not high > low:  # constant image: a small symmetric range around the value
        pad = abs(low) * 1e-3 or 1.0
        low, high = low - pad, high + pad
    return low, high


def _central_slices(volume: np.ndarray, attr: str) -> list[tuple[str, np.ndarray, str, str]]:
    """(label, 2-D slice, horizontal axis, vertical axis) of the three central planes."""
    nz, ny, nx = volume.shape
    part = _part  # short name for the three lines below
    return [
        (f"xy (z = {nz // 2})", np.asarray(part(volume[nz // 2, :, :], attr), float), "x", "y"),
        (f"xz (y = {ny // 2})", np.asarray(part(volume[:, ny // 2, :], attr), float), "x", "z"),
        (f"yz (x = {nx // 2})", np.asarray(part(volume[:, :, nx // 2], attr), float), "y", "z"),
    ]


def _format_error(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else str(value)


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _slices_figure(volume, truth, errors, title: str, geometry=None) -> Figure:
    rows = []  # (row label, slices, colour limits key)
    for name, attr in _QUANTITIES:
        recon_label = name if truth is None else f"{name} recon"
        rows.append((name, recon_label, _central_slices(volume, attr), True))
        if truth is not None:
            rows.append((name, f"{name} truth", _central_slices(truth, attr), False))
    limits = {
        name: _limits([image for row_name, _, slices, _ in rows if row_name == name for _, image, _, _ in slices])
        for name, _ in _QUANTITIES
    }
    object_medians = {}  # row label -> the object's median electron density, e/nm^3
    if geometry is not None:
        for label, part in (("delta" if truth is None else "delta recon", volume), ("delta truth", truth)):
            if part is not None:
                units = physical_units(_part(part, "real"), geometry.energy_kev)
                object_medians[label] = units["object_electron_density_median_nm3"]

    # Fixed margins (in inches) instead of a layout engine: constrained layout
    # costs seconds per figure and these panels never need it.
    heading = title or ""
    if errors is not None:
        summary = ", ".join(f"{name}: {errors[name]}" for name, _ in _QUANTITIES)
        heading = f"{heading}\n{summary}" if heading else summary
    row_height, footer = 3.0, 0.5
    header = 0.6 + 0.3 * (heading.count("\n") + 1 if heading else 0)
    height = row_height * len(rows) + header + footer
    fig = Figure(figsize=(12, height), dpi=_DPI)
    grid = fig.add_gridspec(
        len(rows),
        4,
        width_ratios=(1, 1, 1, 0.05),
        left=0.06,
        right=0.93,
        bottom=footer / height,
        top=1 - header / height,
        wspace=0.35,
        hspace=0.4,
    )
    for r, (name, label, slices, is_recon) in enumerate(rows):
        low, high = limits[name]
        image = None
        for c, (plane, data, xlabel, ylabel) in enumerate(slices):
            ax = fig.add_subplot(grid[r, c])
            image = ax.imshow(data, cmap=_CMAP, vmin=low, vmax=high, interpolation="nearest")
            panel_title = f"{label}, {plane}"
            if errors is not None and is_recon:
                panel_title += f"\n{errors[name]}"
            ax.set_title(panel_title, fontsize=10)
            ax.set_xlabel(f"{xlabel} (voxels)", fontsize=8)
            ax.set_ylabel(f"{ylabel} (voxels)", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.tick_params(labelsize=7)
            if geometry is not None:
                add_scale_bar(ax, geometry.voxel_size_m, min(volume.shape[1:]))
        colorbar = fig.colorbar(image, cax=fig.add_subplot(grid[r, 3]))
        colorbar.set_label(name)
        colorbar.ax.tick_params(labelsize=7)
        if geometry is not None and name == "delta":
            add_electron_density_scale(colorbar, geometry.energy_kev, object_medians.get(label))

    if heading:
        fig.suptitle(heading, y=1 - 0.1 / height, va="top")
    return fig


def _column(history: dict, name: str) -> np.ndarray | None:
    if name not in history:
        return None
    return np.asarray(history[name], dtype=np.float64).reshape(-1)


def _plot_curves(ax, x, curves, marker) -> None:
    """Plot (label, y, colour) curves on a log y axis, or linear when nothing is positive.

    On the log axis, non-positive and infinite values (a diverged run) become
    gaps rather than lines clipped to the bottom of the axis.
    """
    log = any(np.any(np.isfinite(y) & (y > 0)) for _, y, _ in curves)
    for label, y, colour in curves:
        if log:
            y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
        ax.plot(x, y, label=label, color=colour, marker=marker, markersize=3)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.grid(True, which="both", alpha=0.3)


def _convergence_figure(history: dict, norms: dict | None, title: str) -> Figure:
    history = history or {}
    cost = _column(history, "cost")
    if cost is None:
        cost = np.zeros(0)
    iteration = _column(history, "iteration")
    if iteration is None or iteration.shape != cost.shape:
        iteration = np.arange(cost.size, dtype=np.float64)
    marker = "o" if cost.size <= 30 else None

    rmse_curves = []
    kinds = set()  # "relative", "absolute"
    for index, (name, _) in enumerate(_QUANTITIES):
        values = _column(history, f"rmse_{name}")
        if values is None or values.shape != iteration.shape:
            continue
        norm = None if norms is None else norms[name]
        if norm is not None and norm > 0:
            values, label = values / norm, f"{name} (relative)"
            kinds.add("relative")
        else:
            label = f"{name} (absolute)" if norms is None else f"{name} (absolute: truth is zero)"
            kinds.add("absolute")
        rmse_curves.append((label, values, f"C{index + 1}"))

    header = 0.45 + (0.3 if title else 0.0)
    height = 4.2 + header
    fig = Figure(figsize=(12 if rmse_curves else 7, height), dpi=_DPI)
    axes = fig.subplots(1, 2 if rmse_curves else 1, squeeze=False)[0]
    fig.subplots_adjust(
        left=0.07 if rmse_curves else 0.11, right=0.97, bottom=0.12, top=1 - header / height, wspace=0.25
    )

    ax = axes[0]
    _plot_curves(ax, iteration, [("cost", cost, "C0")], marker)
    ax.set_ylabel("cost")
    cost_title = "cost"
    time_s = _column(history, "time_s")
    if time_s is not None and time_s.size and np.isfinite(time_s[-1]):
        cost_title += f" (total {time_s[-1]:.3g} s)"
    ax.set_title(cost_title)
    if not cost.size:
        ax.text(0.5, 0.5, "empty history", ha="center", va="center", transform=ax.transAxes)

    if rmse_curves:
        ax = axes[1]
        _plot_curves(ax, iteration, rmse_curves, marker)
        if norms is None:
            ax.set_ylabel("RMSE")
            ax.set_title("RMSE (absolute; no truth given)")
        elif kinds == {"relative"}:
            ax.set_ylabel("relative RMSE")
            ax.set_title("relative RMSE vs truth")
        else:
            ax.set_ylabel("RMSE")
            ax.set_title("RMSE vs truth (relative where the truth is non-zero)")
        ax.legend(fontsize=8)

    if title:
        fig.suptitle(title, y=1 - 0.1 / height, va="top")
    return fig


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def heldout_figure(parameters: dict, title: str = "") -> Figure:
    """``--tv auto``: the held-out misfit along the path of weights, one colour per weight pair, with
    the chosen point marked (left), and each weight's best scored misfit above the chosen one (right:
    the differences that decide are a fraction of a percent, invisible on the left)."""
    curve = {k: np.asarray(parameters[f"heldout_{k}"], dtype=np.float64).reshape(-1)
             for k in ("misfit", "iteration", "step", "tv_delta", "tv_beta", "scored")}
    fig = Figure(figsize=(10.0, 4.0), dpi=_DPI)
    path_ax, weights_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
    labels, excess = [], []
    best = np.min(curve["misfit"][curve["scored"] > 0]) if np.any(curve["scored"] > 0) else np.nan
    for s in np.unique(curve["step"]):
        at = curve["step"] == s
        first = np.flatnonzero(at)[0]
        label = f"{curve['tv_delta'][first]:.2g} / {curve['tv_beta'][first]:.2g}"
        path_ax.plot(curve["iteration"][at], curve["misfit"][at], marker="o", markersize=3, label=label)
        scored = curve["misfit"][at & (curve["scored"] > 0)]
        labels.append(label)
        excess.append(100 * (scored.min() / best - 1) if scored.size else np.nan)
    chosen = float(np.asarray(parameters.get("heldout_chosen_iteration", -1)).reshape(-1)[0])
    if np.any(curve["iteration"] == chosen):
        path_ax.plot([chosen], [curve["misfit"][curve["iteration"] == chosen][0]], marker="*", markersize=14,
                     color="black", linestyle="none", label="chosen")
    path_ax.set_xlabel("path iteration (training frames)")
    path_ax.set_ylabel("held-out misfit per frame")
    path_ax.grid(True, alpha=0.3)
    path_ax.legend(fontsize=7, ncol=2, title="TV delta / beta", title_fontsize=7)
    weights_ax.barh(np.arange(len(labels)), excess, color="tab:gray")
    weights_ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    weights_ax.invert_yaxis()  # path order, top to bottom
    weights_ax.set_xlabel("best held-out misfit above the chosen (%)")
    weights_ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title or "--tv auto: held-out misfit along the path of TV weights")
    fig.tight_layout()
    return fig


def shifts_figure(shifts: np.ndarray, parameters: dict, title: str = "") -> Figure:
    """``--refine shifts``: the per-angle shifts (rows, columns; gauge removed) against the angle index,
    with the rotation-axis offset (the columns' constant) as a dashed line."""
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    index = np.arange(shifts.shape[0])
    fig = Figure(figsize=(6.4, 3.6), dpi=_DPI)
    ax = fig.add_subplot()
    ax.plot(index, shifts[:, 0], marker=".", label="rows (z)")
    ax.plot(index, shifts[:, 1], marker=".", label="columns (u)")
    axis = parameters.get("rotation_axis_offset_px")
    if axis is not None:
        ax.axhline(float(np.asarray(axis).reshape(-1)[0]), color="gray", linestyle="--", label="rotation-axis offset")
    ax.set_xlabel("angle index")
    ax.set_ylabel("shift (pixels)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-angle shifts (gauge removed)")
    fig.tight_layout()
    return fig


def fsc_figure(resolution: dict, voxel_size_m: float, title: str = "") -> Figure:
    """``ptytomo resolution``: the FSC of the two half volumes' delta and beta against spatial frequency
    (cycles per voxel below, 1/nm above), the 1/2-bit threshold, and each crossing marked with its
    resolution as a half-period (docs/resolution.md)."""
    frequency = np.asarray(resolution["frequency"], dtype=np.float64)
    threshold = np.asarray(resolution["threshold"], dtype=np.float64)
    voxel_nm = voxel_size_m * 1e9
    fig = Figure(figsize=(7.0, 4.6), dpi=_DPI)
    ax = fig.add_subplot()
    ax.axhline(0.0, color="gray", linewidth=0.6)
    ax.plot(frequency, threshold, color="black", linestyle="--", label="1/2-bit threshold")
    for (name, _), colour in zip(_QUANTITIES, ("tab:blue", "tab:orange")):
        key = f"fsc_{name}"
        if key not in resolution:
            continue
        ax.plot(frequency, np.asarray(resolution[key], dtype=np.float64), color=colour, marker=".", label=name)
        crossing = float(resolution.get(f"crossing_{name}", np.nan))
        if np.isfinite(crossing) and crossing > 0:
            level = float(np.interp(crossing, frequency, threshold))
            bound = "<= " if resolution.get(f"crossing_{name}_found") == "nyquist" else ""
            label = f"{name}: {bound}{voxel_nm / (2 * crossing):.3g} nm ({1 / (2 * crossing):.3g} voxels)"
            ax.axvline(crossing, color=colour, linestyle=":", linewidth=1)
            ax.plot([crossing], [level], marker="o", markersize=7, markerfacecolor="none", color=colour)
            ax.annotate(label, (crossing, level), xytext=(6, 10 if name == "delta" else -16),
                        textcoords="offset points", fontsize=8, color=colour)
    curves = [np.asarray(resolution[k], dtype=np.float64) for k in ("fsc_delta", "fsc_beta") if k in resolution]
    lowest = min([-0.2] + [float(c[np.isfinite(c)].min()) for c in curves if np.isfinite(c).any()])
    ax.set_xlim(0, max(0.5, float(frequency[-1])))
    ax.set_ylim(lowest - 0.02, 1.05)
    ax.set_xlabel("spatial frequency (cycles per voxel; 0.5 = Nyquist, a 1-voxel half-period)")
    ax.set_ylabel("Fourier shell correlation")
    top = ax.secondary_xaxis("top", functions=(lambda f: f / voxel_nm, lambda q: q * voxel_nm))
    top.set_xlabel("spatial frequency (1/nm); resolution = half-period = 1 / (2 f)", fontsize=8)
    top.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "resolution: FSC of two half-data reconstructions", fontsize=9)
    fig.tight_layout()
    return fig


def write_fsc_figure(recon: Reconstruction, out_dir, title: str = "") -> Path:
    """``fsc.png`` of ``recon.resolution`` into ``out_dir`` (made when missing); its path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtytomoError(f"{out}: cannot create the report folder ({exc.strerror or exc})") from None
    return _save_atomically(fsc_figure(recon.resolution, recon.geometry.voxel_size_m, title), out / FSC_NAME)


def probe_figure(probe: np.ndarray, title: str = "") -> Figure:
    """``--refine probe``: amplitude and phase of every mode, with its fraction of the total power."""
    probe = np.asarray(probe).reshape(-1, *np.shape(probe)[-2:])
    powers = np.sum(np.abs(probe) ** 2, axis=(1, 2))
    fractions = powers / max(float(powers.sum()), 1e-300)
    fig = Figure(figsize=(2.6 * len(probe) + 0.6, 5.2), dpi=_DPI)
    axes = fig.subplots(2, len(probe), squeeze=False)
    for k, mode in enumerate(probe):
        amplitude = axes[0, k].imshow(np.abs(mode), cmap="magma")
        fig.colorbar(amplitude, ax=axes[0, k], fraction=0.046)
        axes[0, k].set_title(f"mode {k}: {fractions[k]:.1%} of the power", fontsize=8)
        # The phase is shown where the mode carries light; elsewhere it is noise.
        lit = np.abs(mode) > 0.05 * np.abs(mode).max()
        phase = axes[1, k].imshow(np.where(lit, np.angle(mode), np.nan), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        fig.colorbar(phase, ax=axes[1, k], fraction=0.046)
        axes[1, k].set_title("phase (rad)", fontsize=8)
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or "refined probe modes (amplitude, phase)", fontsize=9)
    fig.tight_layout()
    return fig


def positions_figure(refined: np.ndarray, recorded: np.ndarray, title: str = "", angle: int = 0) -> Figure:
    """``--refine positions``: the corrections of one angle's windows as arrows on the recorded scan
    (window corners, pixels; arrows drawn 10x longer than the corrections, whose rms is given)."""
    refined = np.asarray(refined, dtype=np.float64)[angle]
    recorded = np.asarray(recorded, dtype=np.float64)[angle]
    correction = refined - recorded
    fig = Figure(figsize=(5.2, 5.0), dpi=_DPI)
    ax = fig.add_subplot()
    ax.scatter(recorded[:, 1], recorded[:, 0], s=6, color="gray")
    ax.quiver(recorded[:, 1], recorded[:, 0], correction[:, 1], correction[:, 0], angles="xy", scale_units="xy",
              scale=0.1, color="tab:red", width=0.004)
    ax.invert_yaxis()  # rows grow downwards, as in the projection images
    ax.set_aspect("equal")
    ax.set_xlabel("column (pixels)")
    ax.set_ylabel("row (pixels)")
    rms = float(np.sqrt(np.mean(np.sum(correction**2, axis=-1))))
    ax.set_title(title or f"position corrections at angle {angle} (x10; rms {rms:.3g} px)", fontsize=9)
    fig.tight_layout()
    return fig


def _read_positions(path: Path) -> np.ndarray | None:
    """The recorded ``/measurement/positions`` of a data file (without reading its frames)."""
    from .io import POSITIONS

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f[POSITIONS], dtype=np.float64) if POSITIONS in f else None
    except OSError as exc:
        raise PtytomoError(f"{path}: cannot read {POSITIONS} ({exc})") from None


def _save_atomically(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG under a temporary name in the target folder, then os.replace."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fig.savefig(temporary, format="png", dpi=_DPI)
        os.replace(temporary, path)
    except BaseException as exc:
        with suppress(OSError):
            os.remove(temporary)
        if isinstance(exc, OSError):
            raise PtytomoError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
        raise
    return path


def _read_truth(path: Path) -> np.ndarray | None:
    """``/truth/volume`` of a data file as complex64, or None when the file has none.

    Reads only that dataset (a data file's intensities can be many GB).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise PtytomoError(f"{source}: file not found" if not os.path.exists(source) else f"{source}: not a file")
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise PtytomoError(f"{source}: cannot open the HDF5 file ({exc})") from None
    with handle:
        found = handle.attrs.get("format")
        if isinstance(found, bytes):
            found = found.decode("utf-8", "replace")
        if found != DATA_FORMAT:
            raise PtytomoError(f"{source}: root attribute format is {found!r}, expected {DATA_FORMAT!r}")
        dataset = handle.get(TRUTH)
        if dataset is None:
            return None
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiuc" or dataset.ndim != 3:
            raise PtytomoError(f"{source}: {TRUTH} is not a 3-D numeric dataset")
        try:
            return np.asarray(dataset[()]).astype(np.complex64, copy=False)
        except OSError as exc:
            raise PtytomoError(f"{source}: cannot read {TRUTH} ({exc})") from None
