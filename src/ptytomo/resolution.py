"""``ptytomo resolution``: the resolution of a reconstruction, estimated from the data (docs/resolution.md).

The data are split into two independent halves (every other angle, or every
other frame of each angle), each half is reconstructed with the same options,
and the Fourier shell correlation (FSC) of the two half volumes is compared
with the 1/2-bit threshold of van Heel and Schatz (J. Struct. Biol. 151, 250
(2005)), separately for delta and beta: the criterion of published
ptycho-tomography (e.g. Holler et al., Sci. Rep. 4, 3857 (2014)).  The
resolution is reported as a half-period, ``voxel / (2 f)`` at the crossing
frequency f (cycles per voxel).  The result is the mean of the two half
volumes, with the curves in the file's optional ``/resolution`` group.

The halves run one after the other, so the peak memory is one
reconstruction's; the cost is two reconstructions of half the data.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import asdict, replace

import numpy as np
import torch

from .errors import PtytomoError
from .io import LazyIntensities, PtychoTomoData, Reconstruction
from .metrics import (fourier_shell_correlation, half_bit_threshold, half_period, resolution_crossing,
                      tomography_mask, volume_errors)
from .options import ReconstructOptions
from .physics import physical_units
from .reconstruct import reconstruct

SPLITS = ("angles", "frames")
MASKS = ("none", "cylinder")
HALVES = ("a", "b")
QUANTITIES = (("delta", "real"), ("beta", "imag"))
log = logging.getLogger("ptytomo")


def split_data(data: PtychoTomoData, split: str = "angles") -> tuple[PtychoTomoData, PtychoTomoData]:
    """Two independent halves of ``data``.

    ``angles``: the even-indexed and the odd-indexed angles, each with its
    angles' frames, positions, valid flags and per-angle truths
    (:meth:`PtychoTomoData.angle_subset`; streamed frames stay in the file).
    ``frames``: every angle in both halves, the 1st, 3rd, ... valid frame of
    each angle in the first and the 2nd, 4th, ... in the second (by their valid
    flags; the frames themselves are shared, not copied).
    """
    check_split(split)
    if split == "angles":
        if data.n_angles < 4:
            raise PtytomoError(f"--split angles needs at least 4 angles (2 a half), the data have {data.n_angles}")
        return data.angle_subset(slice(0, None, 2)), data.angle_subset(slice(1, None, 2))
    valid = data.valid_or_all()
    counts = valid.sum(axis=1)
    if counts.min() < 2:
        angle = int(np.argmin(counts))
        raise PtytomoError(f"--split frames needs at least 2 valid frames at every angle; angle index {angle} has "
                           f"{int(counts[angle])}")
    order = np.cumsum(valid, axis=1) - 1  # each valid frame's rank among its angle's valid frames
    return tuple(_with_valid(data, valid & (order % 2 == parity)) for parity in (0, 1))


def _with_valid(data: PtychoTomoData, valid: np.ndarray) -> PtychoTomoData:
    frames = data.intensities
    if isinstance(frames, LazyIntensities):  # its flags zero the frames that take no part as they are read
        frames = replace(frames, valid=valid)
    return replace(data, intensities=frames, valid=valid)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise PtytomoError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")


def check_mask(mask: str) -> None:
    if mask not in MASKS:
        raise PtytomoError(f"--fsc-mask {mask!r}: choose one of {', '.join(MASKS)}")


def half_path(path: str, half: str) -> str:
    """``run.pt`` -> ``run.half_a.pt``: each half's own checkpoint file."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.half_{half}{suffix}"


def half_options(options: ReconstructOptions, half: str) -> ReconstructOptions:
    """``options`` for one half: its own checkpoint, and resumed from its own checkpoint when that exists
    (a run interrupted during the first half has none for the second)."""
    resume = half_path(options.resume, half) if options.resume else ""
    if resume and not os.path.exists(resume):
        resume = ""
    return replace(options, checkpoint=half_path(options.checkpoint, half) if options.checkpoint else "",
                   resume=resume)


def check_options(options: ReconstructOptions) -> None:
    """What ``estimate_resolution`` cannot do, in one line."""
    options.check()
    if options.method == "ptycho":
        raise PtytomoError("resolution compares two volumes; --method ptycho reconstructs none (per-angle "
                           "transmissions only): choose joint, sequential or admm")
    if options.resume and not any(os.path.exists(half_path(options.resume, h)) for h in HALVES):
        raise PtytomoError(f"--resume {options.resume}: neither {half_path(options.resume, 'a')} nor "
                           f"{half_path(options.resume, 'b')} exists (resolution checkpoints each half on its own)")


def estimate_resolution(data: PtychoTomoData, options: ReconstructOptions | None = None, split: str = "angles",
                        progress: bool = True, mask: str = "none") -> Reconstruction:
    """Reconstruct two independent halves of ``data`` with ``options`` and measure their agreement.

    Returns a :class:`Reconstruction` whose volume is the mean of the two half
    volumes (the second registered onto the first), whose parameters hold the
    options, ``resolution_{delta,beta}_{nm,voxels}`` (half-period at the FSC's
    first crossing of the 1/2-bit threshold; NaN when even the coarsest shells
    fall below it, 1 voxel when none does up to Nyquist) and
    ``resolution_split``, and whose ``resolution`` holds the curves
    (``/resolution`` in the file, docs/resolution.md).  ``mask`` ``cylinder``
    multiplies both halves by :func:`~ptytomo.metrics.tomography_mask` before
    the FSC (for samples that cross the box's faces); ``none`` (default) leaves
    them as they are.
    """
    options = options or ReconstructOptions()
    check_split(split)
    check_mask(mask)
    check_options(options)
    halves = split_data(data, split)
    recons = []
    for index, (half, part) in enumerate(zip(HALVES, halves)):
        if progress:  # beside the progress bars (stderr), so that stdout keeps the results alone
            print(f"resolution: half {half} ({index + 1} of 2): {_describe_half(part, split)}", file=sys.stderr)
        recons.append(reconstruct(part, half_options(options, half), progress=progress))
    first, second = (np.asarray(r.volume) for r in recons)
    # Only a refined probe (which may carry the object along) or refined per-angle shifts (each half fixes its
    # own gauge) can move one half against the other; otherwise both sit where the recorded positions put them.
    moving = any(name in ("probe", "shifts") for name in options.refined())
    shift = registration_shift(first.real, second.real) if moving else np.zeros(3)
    second = shifted(second, shift)
    window = tomography_mask(first.shape) if mask == "cylinder" else None
    record = fsc_record(first, second, data.geometry.voxel_size_m, window)
    volume = ((first.astype(np.complex128) + second) / 2).astype(np.complex64)
    parameters = {k: v for k, v in asdict(options).items() if k != "method"}
    parameters.update(
        volume="mean of the two half-data reconstructions (the second registered onto the first)",
        resolution_split=split, resolution_mask=mask, resolution_threshold="1/2-bit (van Heel and Schatz 2005)",
        resolution_convention="half-period: voxel / (2 f) at the crossing frequency f (cycles per voxel)",
        resolution_delta_nm=record["resolution_delta_nm"], resolution_beta_nm=record["resolution_beta_nm"],
        resolution_delta_voxels=record["resolution_delta_voxels"],
        resolution_beta_voxels=record["resolution_beta_voxels"],
        resolution_registration_voxels=[float(s) for s in shift],
        resolution_half_angles=[int(h.n_angles) for h in halves],
        resolution_half_frames=[int(h.valid_or_all().sum()) for h in halves],
    )
    for half, recon in zip(HALVES, recons):  # what each half chose for itself (loss, TV weights, stop, ...)
        for name, value in recon.parameters.items():
            if name not in parameters or parameters[name] != value:
                parameters[f"half_{half}_{name}"] = value
    if data.truth is not None:
        parameters.update(volume_errors(volume, data.truth))
    parameters.update(physical_units(volume, data.geometry.energy_kev, options.compound))
    return Reconstruction(volume=volume, method=options.method, parameters=parameters,
                          history=merged_history([r.history for r in recons]), geometry=data.geometry,
                          resolution=record)


def fsc_record(first: np.ndarray, second: np.ndarray, voxel_size_m: float, mask: np.ndarray | None = None) -> dict:
    """``/resolution`` of two complex half volumes: the FSC of delta and of beta, the 1/2-bit threshold, the
    crossings (cycles per voxel) and the resolutions (half-period, nm and voxels)."""
    record: dict = {}
    for name, part in QUANTITIES:
        frequency, fsc, voxels = fourier_shell_correlation(getattr(first, part), getattr(second, part), mask=mask)
        record.update(frequency=frequency, voxels_per_shell=voxels, threshold=half_bit_threshold(voxels))
        record[f"fsc_{name}"] = fsc
    for name, _ in QUANTITIES:
        crossing = resolution_crossing(record["frequency"], record[f"fsc_{name}"], record["threshold"])
        voxels = half_period(crossing)
        record[f"crossing_{name}"] = crossing
        record[f"crossing_{name}_found"] = crossing_kind(crossing, record["frequency"])
        record[f"resolution_{name}_voxels"] = voxels
        record[f"resolution_{name}_nm"] = voxels * voxel_size_m * 1e9
    record.update(threshold_kind="1/2-bit", convention="half-period", frequency_unit="cycles per voxel",
                  voxel_size_nm=voxel_size_m * 1e9)
    return record


def crossing_kind(crossing: float, frequency: np.ndarray) -> str:
    """``threshold`` (a crossing), ``nyquist`` (above the threshold to the last shell) or ``unresolved`` (below
    it from the first searched shells on).  Not "none": the file reads that string back as None."""
    if not math.isfinite(crossing):
        return "unresolved"
    return "nyquist" if crossing >= float(frequency[-1]) else "threshold"


def resolution_line(record: dict, name: str) -> str:
    """``delta 24.1 nm (2.41 voxels)`` and the cases without a crossing, for printing."""
    kind = record.get(f"crossing_{name}_found", "threshold")
    nm, voxels = record[f"resolution_{name}_nm"], record[f"resolution_{name}_voxels"]
    if kind == "unresolved":
        return f"{name} not resolved (the FSC is below the 1/2-bit threshold from the coarsest shells on)"
    text = f"{name} {nm:.3g} nm ({voxels:.3g} voxels)"
    if kind == "nyquist":
        unit = "voxel" if voxels == 1 else "voxels"
        text = f"{name} <= {nm:.3g} nm ({voxels:.3g} {unit}: above the threshold up to Nyquist, the voxel limits it)"
    return text


def merged_history(histories: list[dict]) -> dict[str, np.ndarray]:
    """The halves' histories one after the other: ``half`` (0, 1) says whose row it is, ``iteration``
    counts on through the second half and ``time_s`` adds up; a column one half lacks is NaN there."""
    names = [n for h in histories for n in h if n != "half"]
    names = list(dict.fromkeys(names))
    merged = {name: [] for name in ["half"] + names}
    iteration_offset = time_offset = 0.0
    for index, history in enumerate(histories):
        length = len(np.asarray(history["iteration"]))
        merged["half"].append(np.full(length, float(index)))
        for name in names:
            column = np.asarray(history.get(name, np.full(length, np.nan)), dtype=np.float64)
            if name == "iteration":
                column = column + iteration_offset
            elif name == "time_s":
                column = column + time_offset
            merged[name].append(column)
        if length:
            iteration_offset = float(merged["iteration"][-1][-1])
            time_offset = float(merged["time_s"][-1][-1])
    return {name: np.concatenate(parts) for name, parts in merged.items()}


# --------------------------------------------------------------------------
# Registration of the halves
# --------------------------------------------------------------------------


def registration_shift(reference: np.ndarray, moving: np.ndarray, max_shift: float | None = None) -> np.ndarray:
    """The translation (z, y, x) in voxels that moves ``moving`` onto ``reference``: the peak of their
    cross-correlation (FFT) within ``max_shift`` voxels a coordinate (default: the larger of 2 and a tenth
    of the smallest edge), refined to a fraction of a voxel by a parabola through it and its neighbours.

    Each half fixes its own gauge when per-angle shifts are refined, so the two
    may sit a fraction of a voxel apart; left so, the FSC would read that
    offset as a loss of resolution.  The correlation is taken of the volumes'
    differences from their means, smoothed by a Gaussian of one voxel, so that
    noise (independent in the halves, all of it at high frequencies at low
    dose) does not move the peak.  All zeros where either volume is flat."""
    shape = np.shape(reference)
    a = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float64))
    b = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or float(a.abs().max()) == 0 \
            or float(b.abs().max()) == 0:
        return np.zeros(3)
    frequency2 = sum(torch.from_numpy(f.reshape([-1 if i == axis else 1 for i in range(3)]) ** 2)
                     for axis, f in enumerate((np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]),
                                               np.fft.rfftfreq(shape[2]))))
    smoothing = torch.exp(-4 * math.pi**2 * frequency2)  # a Gaussian of one voxel on each volume
    cross = torch.fft.rfftn(a) * torch.fft.rfftn(b).conj() * smoothing
    correlation = torch.fft.irfftn(cross, s=shape, dim=(0, 1, 2)).numpy()
    reach = max(2.0, 0.1 * min(shape)) if max_shift is None else float(max_shift)
    lags = [np.minimum(np.arange(n), n - np.arange(n)) for n in shape]  # circular distance from zero lag
    near = (lags[0][:, None, None] <= reach) & (lags[1][None, :, None] <= reach) & (lags[2][None, None, :] <= reach)
    peak = np.unravel_index(int(np.argmax(np.where(near, correlation, -np.inf))), correlation.shape)
    shift = np.zeros(3)
    for axis, n in enumerate(correlation.shape):
        at = list(peak)
        values = []
        for step in (-1, 0, 1):
            at[axis] = (peak[axis] + step) % n
            values.append(correlation[tuple(at)])
        below, centre, above = values
        curvature = below - 2 * centre + above
        fraction = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
        whole = peak[axis] if peak[axis] <= n // 2 else peak[axis] - n  # a circular lag, signed
        shift[axis] = whole + float(np.clip(fraction, -0.5, 0.5))
    return shift


def shifted(volume: np.ndarray, shift) -> np.ndarray:
    """``volume`` (delta + i beta) translated by ``shift`` voxels (z, y, x) by a Fourier phase ramp, delta and
    beta each as a real volume (so neither leaks into the other), complex128.  No shift: the volume as it is."""
    shift = np.asarray(shift, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.complex128)
    if not np.any(shift):
        return volume
    ramp = 1.0
    for axis, (n, s) in enumerate(zip(volume.shape, shift)):
        frequency = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        shape = [1, 1, 1]
        shape[axis] = frequency.size
        ramp = ramp * np.exp(-2j * np.pi * frequency * s).reshape(shape)

    def move(part: np.ndarray) -> np.ndarray:
        return np.fft.irfftn(np.fft.rfftn(part) * ramp, s=part.shape, axes=(0, 1, 2))

    return move(volume.real) + 1j * move(volume.imag)


def _describe_half(part: PtychoTomoData, split: str) -> str:
    frames = int(part.valid_or_all().sum())
    return f"{part.n_angles} angles, {frames} frames ({'every other angle' if split == 'angles' else 'every other frame'})"
