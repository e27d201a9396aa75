"""Error metrics: RMSE over the whole volume (FORMAT.md), its relative form, SSIM, and the Fourier shell
correlation with its 1/2-bit threshold (the resolution of ``ptytomo resolution``, docs/resolution.md)."""

from __future__ import annotations

import numpy as np
import torch

from .errors import PtytomoError


def rmse(estimate, truth=None) -> float:
    """sqrt(mean((estimate - truth)^2)) of real arrays or tensors (truth None: the RMS of estimate).

    numpy arrays are reduced in float64 one slab of the first axis at a time,
    so a large volume is never copied whole.
    """
    if torch.is_tensor(estimate):
        diff = estimate.double() if truth is None else estimate.double() - truth.double()
        return float(torch.sqrt(torch.mean(diff**2)))
    estimate = np.asarray(estimate)
    if estimate.size == 0:
        return float("nan")
    total = 0.0
    for index in range(estimate.shape[0]) if estimate.ndim else [()]:
        slab = np.asarray(estimate[index], dtype=np.float64)
        if truth is not None:
            slab = slab - np.asarray(truth[index], dtype=np.float64)
        total += float(np.sum(slab * slab))
    return float(np.sqrt(total / estimate.size))


def relative_rmse(estimate, truth) -> float:
    """RMSE divided by sqrt(mean(truth^2)); inf for an all-zero truth."""
    norm = rmse(truth)
    return rmse(estimate, truth) / norm if norm > 0 else float("inf")


def volume_errors(volume: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Relative RMSE of delta and beta of a complex volume against a complex truth."""
    return {
        "relative_rmse_delta": relative_rmse(volume.real, truth.real),
        "relative_rmse_beta": relative_rmse(volume.imag, truth.imag),
    }


def ssim(estimate, truth, sigma: float = 1.5, radius: int = 5) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 13, 600 (2004)) of two real volumes.

    The standard constants (K1 = 0.01, K2 = 0.03) and an isotropic Gaussian
    window (sigma 1.5, 11 taps) applied separably in 3D; the dynamic range is
    the truth's, so a volume scaled by a factor is penalised, not hidden.
    """
    radius = min(radius, (min(np.shape(truth)) - 1) // 2)  # the window fits small volumes too
    x = torch.as_tensor(np.asarray(truth), dtype=torch.float64)[None, None]
    y = torch.as_tensor(np.asarray(estimate), dtype=torch.float64)[None, None]
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    taps = taps / taps.sum()

    def blur(v):
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = taps.numel()
            v = torch.nn.functional.conv3d(v, taps.reshape(shape))
        return v

    value_range = float(x.max() - x.min()) or 1.0
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(index.mean())


# --------------------------------------------------------------------------
# Resolution: Fourier shell correlation of two half-data reconstructions
# --------------------------------------------------------------------------

# The first shells are not searched for a crossing: the zero frequency (one voxel, threshold 1) always
# "crosses", and the lowest non-zero shell holds too few voxels for its FSC to mean much.
CROSSING_START = 2


def fourier_shell_correlation(a, b, shells: int | None = None, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FSC of two real 3D volumes: ``(frequency, fsc, voxels_per_shell)``, float64 arrays of length S.

    ``frequency`` is each shell's radial spatial frequency in cycles per voxel,
    ``sqrt(fz^2 + fy^2 + fx^2)`` with every axis's own ``fftfreq`` (voxels are
    cubic, so a non-cubic volume needs no rescaling).  Shells are ``1/N`` wide,
    ``N`` the smallest edge (the coarsest frequency sampling), from 0 to the
    Nyquist frequency 0.5: a Fourier voxel belongs to shell ``round(f N)``, and
    corners beyond the last shell are left out.  ``shells`` asks for that many
    shells from 0 to 0.5 instead (width ``0.5 / (shells - 1)``).

    ``fsc[k] = Re sum A conj(B) / sqrt(sum |A|^2 sum |B|^2)`` over shell k (0
    where either volume has no power there); ``voxels_per_shell`` counts the
    Fourier voxels of the full (not half) spectrum, the ``n`` of the threshold.
    ``mask`` (real, the volumes' shape) multiplies both volumes first: a soft
    mask (:func:`tomography_mask`) keeps the box's edges out of the spectrum.
    The transforms run in torch at the volumes' precision; the sums are float64,
    accumulated one plane at a time.
    """
    a = _real_volume(a, "first volume")
    b = _real_volume(b, "second volume")
    if a.shape != b.shape:
        raise PtytomoError(f"FSC: the volumes have shapes {tuple(a.shape)} and {tuple(b.shape)}, expected the same")
    if mask is not None:
        mask = _real_volume(mask, "mask")
        if mask.shape != a.shape:
            raise PtytomoError(f"FSC: mask has shape {tuple(mask.shape)}, expected the volumes' {tuple(a.shape)}")
        a, b = a * mask.to(a.dtype), b * mask.to(b.dtype)
    nz, ny, nx = a.shape
    edge = min(a.shape)
    if shells is None:
        count, width = edge // 2 + 1, 1.0 / edge
    else:
        if int(shells) < 2:
            raise PtytomoError(f"FSC: shells must be >= 2, got {shells}")
        count, width = int(shells), 0.5 / (int(shells) - 1)
    spectrum_a, spectrum_b = torch.fft.rfftn(a), torch.fft.rfftn(b)
    fz, fy, fx = np.fft.fftfreq(nz), np.fft.fftfreq(ny), np.fft.rfftfreq(nx)
    # The half spectrum stands for the whole: every column but the zero (and, for even Nx, the Nyquist) one
    # has a conjugate twin that is not stored.
    twins = np.full(fx.size, 2.0)
    twins[0] = 1.0
    if nx % 2 == 0:
        twins[-1] = 1.0
    plane_radius2 = fy[:, None] ** 2 + fx[None, :] ** 2
    weights = np.broadcast_to(twins, plane_radius2.shape)
    cross, power_a, power_b, voxels = (np.zeros(count) for _ in range(4))
    for z in range(nz):
        index = np.rint(np.sqrt(fz[z] ** 2 + plane_radius2) / width).astype(np.int64)
        inside = index < count
        shell = index[inside]
        plane_a = spectrum_a[z].to(torch.complex128).cpu().numpy()[inside]
        plane_b = spectrum_b[z].to(torch.complex128).cpu().numpy()[inside]
        w = weights[inside]
        cross += np.bincount(shell, w * (plane_a * plane_b.conj()).real, count)
        power_a += np.bincount(shell, w * np.abs(plane_a) ** 2, count)
        power_b += np.bincount(shell, w * np.abs(plane_b) ** 2, count)
        voxels += np.bincount(shell, w, count)
    denominator = np.sqrt(power_a * power_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(denominator > 0, cross / np.where(denominator > 0, denominator, 1.0), 0.0)
    if not (torch.isfinite(spectrum_a).all() and torch.isfinite(spectrum_b).all()):
        fsc = np.where(np.isfinite(cross) & np.isfinite(denominator), fsc, np.nan)  # a diverged volume
    return np.arange(count) * width, fsc, voxels


def half_bit_threshold(voxels_per_shell) -> np.ndarray:
    """The 1/2-bit threshold curve of van Heel and Schatz (J. Struct. Biol. 151, 250 (2005)) for an FSC of two
    half-data volumes: ``(0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))`` with n voxels in the shell
    (1 at n = 1, 0.1716 for large n).  Where the FSC crosses it, the full data (both halves) carry 1/2 bit of
    information per Fourier voxel."""
    n = np.maximum(np.asarray(voxels_per_shell, dtype=np.float64), 1.0)
    root = np.sqrt(n)
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def resolution_crossing(frequency, fsc, threshold, start: int = CROSSING_START) -> float:
    """The frequency (the curve's units) where ``fsc`` first falls below ``threshold``, from shell ``start`` on.

    Between the last shell at or above the threshold and the first below it the
    crossing is interpolated linearly in ``fsc - threshold``.  Shells before
    ``start`` are not searched (CROSSING_START: the zero frequency always
    matches, and the first shell holds too few voxels).  Two outcomes are no
    crossing: an FSC that never falls below the threshold gives the highest
    frequency of the curve (Nyquist, 0.5 cycles per voxel for even sizes: the
    volume is resolved to its voxel, the finest the grid can tell), and an FSC
    already below it at shells ``start - 1`` and ``start`` gives NaN (nothing is
    resolved).  A NaN FSC (a diverged volume) counts as below the threshold.
    """
    frequency = np.asarray(frequency, dtype=np.float64)
    excess = np.asarray(fsc, dtype=np.float64) - np.asarray(threshold, dtype=np.float64)
    excess = np.where(np.isfinite(excess), excess, -np.inf)
    start = max(int(start), 1)
    if frequency.size <= start:
        return float("nan")
    for k in range(start, frequency.size):
        if excess[k] < 0:
            above = excess[k - 1]
            if above < 0:
                return float("nan")
            fraction = above / (above - excess[k]) if np.isfinite(excess[k]) else 0.0
            return float(frequency[k - 1] + fraction * (frequency[k] - frequency[k - 1]))
    return float(frequency[-1])


def half_period(frequency: float) -> float:
    """Resolution as a half-period in voxels, ``1 / (2 f)`` for f in cycles per voxel (1 voxel at Nyquist),
    the convention of x-ray ptychography; NaN stays NaN, 0 gives inf."""
    frequency = float(frequency)
    if not np.isfinite(frequency):
        return float("nan")
    return float("inf") if frequency <= 0 else 1.0 / (2.0 * frequency)


def tomography_mask(shape, edge: float | None = None) -> np.ndarray:
    """A soft mask (float64, ``shape``) for the FSC of a tomogram: 1 inside the cylinder about the rotation
    axis z that every angle sees (diameter the smaller of Ny, Nx), falling to 0 at its rim and at the top and
    bottom faces along a raised cosine ``edge`` voxels wide (default: a tenth of the smallest edge, at least 2).

    Without it the volumes' faces meet their periodic images in the FFT: a step that both halves share
    puts correlated power into every shell.  The corners outside the cylinder are measured at some angles
    only; the mask leaves them out too."""
    nz, ny, nx = (int(n) for n in shape)
    edge = max(2.0, 0.1 * min(nz, ny, nx)) if edge is None else float(edge)
    if not edge > 0:
        raise PtytomoError(f"FSC mask: edge must be > 0 voxels, got {edge}")

    def ramp(distance):  # raised cosine: 0 at distance 0 (the boundary), 1 from ``edge`` inwards
        t = np.clip(distance / edge, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * t)

    z = np.arange(nz) + 0.5
    along = ramp(np.minimum(z, nz - z))
    y, x = np.arange(ny) - (ny - 1) / 2, np.arange(nx) - (nx - 1) / 2
    radius = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    across = ramp(min(ny, nx) / 2 - radius)
    return along[:, None, None] * across[None, :, :]


def _real_volume(volume, name: str) -> torch.Tensor:
    tensor = volume if torch.is_tensor(volume) else torch.from_numpy(np.ascontiguousarray(volume))
    if tensor.ndim != 3:
        raise PtytomoError(f"FSC: {name} has shape {tuple(tensor.shape)}, expected a 3D volume (Nz, Ny, Nx)")
    if tensor.is_complex():
        raise PtytomoError(f"FSC: {name} is complex; pass delta (real part) and beta (imaginary part) separately")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    elif tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.detach()
