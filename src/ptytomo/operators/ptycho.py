"""Ptychography operator: transmission -> far fields of all scan positions, and its adjoint.

``forward`` cuts the M x M window of every position out of the (padded)
transmission, multiplies by the probe and takes the unitary, centred 2D DFT
of FORMAT.md.  ``adjoint`` inverts the DFT, multiplies by the conjugate probe
and scatter-adds the windows back.  The operator is linear in the
transmission; free space outside the projected volume is the caller's padding
(``exp(i k 0) = 1`` on a zero-padded projection), so no constant hides here.

Pruned transforms: a probe that is zero outside a small box (a clean disc
of 15 px in a 63 px window) makes the exit wave zero there too, so the
centred DFT reduces to two small matrix products with the box's columns of
the DFT matrix, and only the box of each window is read or written.  The
result equals the full FFT path to float precision; probes that fill the
window (measured, band-limited or sub-pixel-shifted ones) take the FFT path.

Sub-pixel positions: a window at ``n + f`` (integer ``n``, fraction ``f``)
sees the object shifted by ``f``.  Shifting the probe by ``f`` instead (a
Fourier phase ramp) and cutting the window at ``n`` gives the same exit wave
up to a shift of the whole frame, which changes only the phase of the far
field, never its modulus.  So measured intensities are modelled exactly
without interpolating the object.
"""

from __future__ import annotations

import torch


def shift_probe(probe: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Probe translated by ``shifts`` (K, 2) pixels (row, col): P(u - shift), band-limited.

    Returns (K, M, M).  Integer-free callers pass the fractional parts only.
    """
    m = probe.shape[-1]
    freq = torch.fft.fftfreq(m, device=probe.device, dtype=shifts.dtype)
    phase = -2j * torch.pi * (
        shifts[:, 0, None, None] * freq[None, :, None] + shifts[:, 1, None, None] * freq[None, None, :]
    )
    return torch.fft.ifft2(torch.fft.fft2(probe)[None] * torch.exp(phase).to(probe.dtype))


def centred_dft_matrix(m: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The (M, M) matrix D with ``D @ v = fftshift(fft(v, norm="ortho"))``."""
    eye = torch.eye(m, dtype=dtype, device=device)
    return torch.fft.fftshift(torch.fft.fft(eye, dim=0, norm="ortho"), dim=0)


def support_box(probe: torch.Tensor) -> tuple[slice, slice]:
    """Row and column ranges outside which the probe is exactly zero."""
    nonzero = probe.abs() > 0
    rows = torch.nonzero(nonzero.any(dim=1)).flatten()
    cols = torch.nonzero(nonzero.any(dim=0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def far_field(exit_wave: torch.Tensor) -> torch.Tensor:
    """FORMAT.md's ``fftshift(fft2(., norm="ortho"))`` over the last two axes."""
    return torch.fft.fftshift(torch.fft.fft2(exit_wave, norm="ortho"), dim=(-2, -1))


def far_field_adjoint(field: torch.Tensor) -> torch.Tensor:
    """Inverse (= adjoint, the transform is unitary) of :func:`far_field`."""
    return torch.fft.ifft2(torch.fft.ifftshift(field, dim=(-2, -1)), norm="ortho")


class Ptychography:
    """Q: transmission (B, H, W) -> far fields (B, J, M, M) for one batch of angles.

    ``positions`` (B, J, 2) are window corners in the coordinates of the
    transmission array given to ``forward`` (the caller adds its padding).
    Every window must lie inside (H, W).  ``valid`` (B, J) zeroes padding
    entries in both directions, so they take no part in anything.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        probe: torch.Tensor,
        transmission_shape: tuple[int, int],
        valid: torch.Tensor | None = None,
        pruned: bool | None = None,
    ):
        self.probe = probe
        self.m = probe.shape[-1]
        self.transmission_shape = tuple(transmission_shape)
        positions = positions.to(device=probe.device, dtype=torch.float64)
        corner = torch.round(positions)
        fraction = positions - corner
        corner = corner.to(torch.int64)
        height, width = self.transmission_shape
        if corner.numel() and (
            corner.min() < 0 or corner[..., 0].max() + self.m > height or corner[..., 1].max() + self.m > width
        ):
            raise ValueError("a scan window falls outside the padded transmission")
        self.batch, self.n_positions = positions.shape[:2]
        self.angle_index = torch.arange(self.batch, device=probe.device)[:, None, None, None]
        if torch.any(fraction != 0):
            shifted = shift_probe(probe, fraction.reshape(-1, 2))
            self.frame_probe = shifted.reshape(self.batch, self.n_positions, self.m, self.m)
            box = (slice(0, self.m), slice(0, self.m))
        else:
            box = support_box(probe)
            box_area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            if pruned is None:
                pruned = box_area <= self.m**2 // 4
            if not pruned:
                box = (slice(0, self.m), slice(0, self.m))
            self.frame_probe = probe[box]  # broadcasts over (B, J)
        self.pruned = box[0].stop - box[0].start < self.m or box[1].stop - box[1].start < self.m
        if self.pruned:
            dft = centred_dft_matrix(self.m, probe.dtype, probe.device)
            self.dft_rows = dft[:, box[0]]  # (M, Kr)
            self.dft_cols_t = dft[:, box[1]].T.contiguous()  # (Kc, M)
        self.rows = corner[..., 0, None] + torch.arange(box[0].start, box[0].stop, device=probe.device)
        self.cols = corner[..., 1, None] + torch.arange(box[1].start, box[1].stop, device=probe.device)
        self.weight = None if valid is None else valid.to(device=probe.device, dtype=probe.real.dtype)[..., None, None]

    def windows(self, transmission: torch.Tensor) -> torch.Tensor:
        """(B, J, Kr, Kc) windows of the transmission (the probe's box of each M x M window)."""
        return transmission[self.angle_index, self.rows[..., :, None], self.cols[..., None, :]]

    def windows_adjoint(self, frames: torch.Tensor) -> torch.Tensor:
        """Scatter-add of (B, J, Kr, Kc) frames into a (B, H, W) array."""
        out = frames.new_zeros((self.batch, *self.transmission_shape))
        index = (self.angle_index, self.rows[..., :, None], self.cols[..., None, :])
        return out.index_put_(index, frames, accumulate=True)

    def exit_waves(self, transmission: torch.Tensor) -> torch.Tensor:
        waves = self.frame_probe * self.windows(transmission)
        return waves if self.weight is None else waves * self.weight

    def transform(self, waves: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return self.dft_rows @ waves @ self.dft_cols_t
        return far_field(waves)

    def transform_adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return self.dft_rows.conj().T @ fields @ self.dft_cols_t.conj().T
        return far_field_adjoint(fields)

    def forward(self, transmission: torch.Tensor) -> torch.Tensor:
        return self.transform(self.exit_waves(transmission))

    def adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        waves = self.transform_adjoint(fields) * self.frame_probe.conj()
        if self.weight is not None:
            waves = waves * self.weight
        return self.windows_adjoint(waves)
