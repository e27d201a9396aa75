"""Free-space propagation between the slabs of a multislice model (angular spectrum).

FORMAT.md's transmission ``exp(+i k P x)`` is the complex conjugate of the physics texts' one,
so its propagator is conjugated too: over ``dz`` along the beam the angular spectrum is multiplied by

    H(q) = exp(-i dz (sqrt(k^2 - q^2) - k))      (~ exp(+i pi lambda dz f^2) paraxially, f = q / 2 pi)

the same sign as ``model.probe.propagate`` (``--probe-defocus``).  ``sqrt(k^2 - q^2) - k`` is
evaluated as ``-q^2 / (sqrt(k^2 - q^2) + k)``: for x-rays q << k and the direct difference
would cancel most of float64's digits.  Evanescent components (q >= k) are dropped.

Band limit (Matsushima and Shimobaba, Opt. Express 17, 19662 (2009)): the sampled transfer
function aliases where its local frequency exceeds the sampling of the spectrum, which over long
distances makes the periodic FFT grid send energy the wrong way round.  Frequencies with
``|f| >= 1 / (lambda sqrt((2 df |dz|)^2 + 1))``, ``df = 1 / (N dx)`` per axis, are set to zero.
For multislice steps (microns at 10 nm pixels) it removes nothing; it matters for propagating a
probe by millimetres.

The grid is periodic (no zero padding here): a wave spreading past the window wraps around, so the
caller pads.  The transform is unitary (``norm="ortho"``) and ``|H| <= 1``, so ``adjoint`` (the
conjugate transfer function) is exact to rounding, and it inverts ``forward`` on the propagating,
band-passed components: back-propagation is a negative distance.  Distance 0 returns its input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import PtytomoError

COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128,
              torch.complex64: torch.complex64, torch.complex128: torch.complex128}


def band_limit_frequency(n: int, pixel_m: float, wavelength_m: float, distance_m: float) -> float:
    """Matsushima and Shimobaba's limit (cycles per metre) along an axis of ``n`` pixels."""
    df = 1.0 / (n * pixel_m)
    return 1.0 / (wavelength_m * math.sqrt((2.0 * df * abs(distance_m)) ** 2 + 1.0))


@functools.lru_cache(maxsize=64)
def transfer_function(shape: tuple[int, int], pixel_m: float, wavelength_m: float, distance_m: float,
                      band_limit: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (H, W) transfer function on the unshifted FFT grid, cached per (shape, distance, ...).

    Shared between propagators with the same arguments: treat it as read-only."""
    height, width = shape
    fy = np.fft.fftfreq(height, d=pixel_m)[:, None]
    fx = np.fft.fftfreq(width, d=pixel_m)[None, :]
    k = 2.0 * math.pi / wavelength_m
    q2 = (2.0 * math.pi) ** 2 * (fx**2 + fy**2)
    passed = q2 < k**2
    if band_limit:
        passed &= np.abs(fy) < band_limit_frequency(height, pixel_m, wavelength_m, distance_m)
        passed &= np.abs(fx) < band_limit_frequency(width, pixel_m, wavelength_m, distance_m)
    kz_minus_k = -q2 / (np.sqrt(np.where(passed, k**2 - q2, 0.0)) + k)
    transfer = np.where(passed, np.exp(-1j * distance_m * kz_minus_k), 0.0)
    return torch.from_numpy(transfer).to(device=device, dtype=dtype)


def _positive(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PtytomoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise PtytomoError(f"{name} must be finite and > 0, got {value!r}")
    return number


class FresnelPropagator:
    """Free-space propagation by ``distance_m`` along the beam of waves (..., H, W) sampled at
    ``pixel_m``: any leading batch axes, complex (real input is promoted).

    ``forward`` propagates, ``adjoint`` applies the conjugate transfer function (for propagating,
    band-passed waves the inverse, i.e. propagation by ``-distance_m``)."""

    def __init__(
        self,
        shape: tuple[int, int],
        pixel_m: float,
        wavelength_m: float,
        distance_m: float,
        band_limit: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if len(shape) != 2 or min(int(n) for n in shape) < 1:
            raise PtytomoError(f"shape must be (H, W) with H, W >= 1, got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.pixel_m = _positive(pixel_m, "pixel_m")
        self.wavelength_m = _positive(wavelength_m, "wavelength_m")
        self.distance_m = float(distance_m)
        if not math.isfinite(self.distance_m):
            raise PtytomoError(f"distance_m must be finite, got {distance_m!r}")
        if dtype not in COMPLEX_OF:
            raise PtytomoError(f"dtype must be float32, float64, complex64 or complex128, got {dtype}")
        self.band_limit = bool(band_limit)
        self.device = torch.device(device)
        self.dtype = COMPLEX_OF[dtype]
        self.transfer = None if self.distance_m == 0.0 else transfer_function(
            self.shape, self.pixel_m, self.wavelength_m, self.distance_m, self.band_limit, self.device, self.dtype)

    def _apply(self, wave: torch.Tensor, conjugate: bool) -> torch.Tensor:
        if tuple(wave.shape[-2:]) != self.shape:
            raise PtytomoError(f"wave's last two axes {tuple(wave.shape[-2:])} differ from the propagator's "
                               f"shape {self.shape}")
        if self.transfer is None:  # distance 0: the identity, bit for bit
            return wave
        transfer = self.transfer.conj() if conjugate else self.transfer
        return torch.fft.ifft2(torch.fft.fft2(wave, norm="ortho") * transfer, norm="ortho")

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self._apply(wave, conjugate=False)

    def adjoint(self, wave: torch.Tensor) -> torch.Tensor:
        return self._apply(wave, conjugate=True)
