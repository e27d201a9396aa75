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
    """Probe translated by ``shifts`` (F, 2) pixels (row, col): P(u - shift), band-limited.

    ``probe`` (M, M) or (K, M, M) modes, or (F, K, M, M) one stack per shift; returns
    (F, M, M) or (F, K, M, M).  Integer-free callers pass the fractional parts only.
    """
    ramp = shift_ramp(shifts, probe.shape[-1], probe.dtype, probe.device)  # (F, M, M)
    spectrum = torch.fft.fft2(probe)
    if probe.dim() == 2:
        return torch.fft.ifft2(spectrum[None] * ramp)
    if probe.dim() == 3:  # (K, M, M) modes, every shift applied to all of them
        return torch.fft.ifft2(spectrum[None] * ramp[:, None])
    return torch.fft.ifft2(spectrum * ramp[:, None])  # (F, K, M, M), one shift per stack


def shift_ramp(shifts: torch.Tensor, m: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(F, M, M) Fourier phase ramps ``exp(-2 pi i (s_r f_r + s_c f_c))`` of ``shifts`` (F, 2).

    The ramp separates into a row and a column factor, so it costs 2 M exponentials per shift
    instead of M^2 (the exponentials dominated the refinement's cost)."""
    freq = torch.fft.fftfreq(m, device=device, dtype=shifts.dtype)
    shifts = shifts.to(device)
    rows = torch.exp(-2j * torch.pi * shifts[:, 0, None] * freq).to(dtype)  # (F, M)
    cols = torch.exp(-2j * torch.pi * shifts[:, 1, None] * freq).to(dtype)
    return rows[:, :, None] * cols[:, None, :]


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

    ``probe`` is (M, M), or (K, M, M) mutually incoherent modes: then the far
    fields carry a mode axis, (B, J, K, M, M), whose intensities the losses add.
    The operator stays linear in the transmission (one coherent field per mode).
    ``pruned=False`` keeps whole M x M windows, as the probe and position
    gradients need.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        probe: torch.Tensor,
        transmission_shape: tuple[int, int],
        valid: torch.Tensor | None = None,
        pruned: bool | None = None,
    ):
        self.probe = probe  # as given: (M, M) or (K, M, M)
        self.valid = valid
        self.single_mode = probe.dim() == 2
        probe = probe[None] if self.single_mode else probe  # (K, M, M) from here on
        self.m = probe.shape[-1]
        self.n_modes = probe.shape[0]
        self.transmission_shape = tuple(transmission_shape)
        positions = positions.to(device=probe.device, dtype=torch.float64)
        corner = torch.round(positions)
        self.fraction = positions - corner
        corner = corner.to(torch.int64)
        height, width = self.transmission_shape
        if corner.numel() and (
            corner.min() < 0 or corner[..., 0].max() + self.m > height or corner[..., 1].max() + self.m > width
        ):
            raise ValueError("a scan window falls outside the padded transmission")
        self.batch, self.n_positions = positions.shape[:2]
        self.angle_index = torch.arange(self.batch, device=probe.device)[:, None, None, None]
        self.shifted = bool(torch.any(self.fraction != 0))
        if self.shifted:
            shifted = shift_probe(probe, self.fraction.reshape(-1, 2))  # (B*J, K, M, M)
            self.frame_probe = shifted.reshape(self.batch, self.n_positions, self.n_modes, self.m, self.m)
            box = (slice(0, self.m), slice(0, self.m))
        else:
            box = support_box(probe.abs().sum(dim=0))
            box_area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            if pruned is None:
                pruned = box_area <= self.m**2 // 4
            if not pruned:
                box = (slice(0, self.m), slice(0, self.m))
            self.frame_probe = probe[:, box[0], box[1]]  # (K, Kr, Kc), broadcasts over (B, J)
        self.pruned = box[0].stop - box[0].start < self.m or box[1].stop - box[1].start < self.m
        if self.pruned:
            dft = centred_dft_matrix(self.m, probe.dtype, probe.device)
            self.dft_rows = dft[:, box[0]]  # (M, Kr)
            self.dft_cols_t = dft[:, box[1]].T.contiguous()  # (Kc, M)
        self.rows = corner[..., 0, None] + torch.arange(box[0].start, box[0].stop, device=probe.device)
        self.cols = corner[..., 1, None] + torch.arange(box[1].start, box[1].stop, device=probe.device)
        self.weight = None if valid is None else valid.to(device=probe.device, dtype=probe.real.dtype)[..., None, None]

    def moved(self, positions: torch.Tensor) -> "Ptychography":
        """The same operator with its windows at ``positions`` (whole windows: a position search's trials)."""
        return Ptychography(positions, self.probe, self.transmission_shape, self.valid, pruned=False)

    def release(self) -> None:
        """Nothing to forget: a single plane keeps no state between passes (see MultislicePtychography)."""

    def windows(self, transmission: torch.Tensor) -> torch.Tensor:
        """(B, J, Kr, Kc) windows of the transmission (the probe's box of each M x M window)."""
        return transmission[self.angle_index, self.rows[..., :, None], self.cols[..., None, :]]

    def windows_adjoint(self, frames: torch.Tensor) -> torch.Tensor:
        """Scatter-add of (B, J, Kr, Kc) frames into a (B, H, W) array."""
        out = frames.new_zeros((self.batch, *self.transmission_shape))
        index = (self.angle_index, self.rows[..., :, None], self.cols[..., None, :])
        return out.index_put_(index, frames, accumulate=True)

    def _weighted(self, frames: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return frames
        return frames * (self.weight if frames.dim() == 4 else self.weight[..., None])

    def window_stack(self, transmission: torch.Tensor) -> torch.Tensor:
        """What :meth:`carry` multiplies a probe-plane wave by: the (B, J, Kr, Kc) windows."""
        return self.windows(transmission)

    def carry(self, wave: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """A probe-plane wave (B, J, K, Kr, Kc) through the sample to the exit (valid windows only); the exit
        waves are linear in it."""
        return self._weighted(wave * windows[:, :, None])

    def exit_waves(self, transmission: torch.Tensor) -> torch.Tensor:
        """(B, J, K, Kr, Kc): every mode times every window."""
        return self.carry(self.frame_probe, self.window_stack(transmission))

    def transform(self, waves: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return self.dft_rows @ waves @ self.dft_cols_t
        return far_field(waves)

    def transform_adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return self.dft_rows.conj().T @ fields @ self.dft_cols_t.conj().T
        return far_field_adjoint(fields)

    def forward(self, transmission: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """Far fields (B, J, [K,] M, M).  ``keep`` is for a multislice operator's state; one plane keeps none."""
        fields = self.transform(self.exit_waves(transmission))
        return fields[:, :, 0] if self.single_mode else fields

    def back_waves(self, fields: torch.Tensor) -> torch.Tensor:
        """F^H of detector-plane residuals, (B, J, K, Kr, Kc), valid entries only: with
        ``d cost = 2 Re <r, d far field>`` it is the residual every unknown's gradient starts from."""
        if self.single_mode:
            fields = fields[:, :, None]
        return self._weighted(self.transform_adjoint(fields))

    def adjoint_of_back_waves(self, back: torch.Tensor) -> torch.Tensor:
        """Q^H from :meth:`back_waves`: conjugate probe modes summed, windows scattered back."""
        return self.windows_adjoint(torch.sum(back * self.frame_probe.conj(), dim=2))

    def adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        return self.adjoint_of_back_waves(self.back_waves(fields))

    def transmission_gradient(self, transmission: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        """G with ``d cost = 2 Re <G, d transmission>`` from :meth:`back_waves`' ``back`` (the model is linear
        in the transmission, so G does not depend on it)."""
        return self.adjoint_of_back_waves(back)

    def linear_forward(self, perturbation: torch.Tensor) -> torch.Tensor:
        """The far fields' derivative at an empty object (O = 1) in the direction ``perturbation``."""
        return self.forward(perturbation)

    def linear_adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`linear_forward`."""
        return self.adjoint(fields)

    # -- gradients with respect to the probe and the positions ----------------
    # Both use whole windows (pruned=False): a refined probe has no compact support.
    def probe_gradient(self, transmission: torch.Tensor, back: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad, curvature): d cost = 2 Re <grad, d probe> for the (K, M, M) modes, and the
        Gauss-Newton diagonal sum_frames |window|^2 (M, M) that preconditions the probe's step."""
        grad_frames, power = self.probe_frames_gradient(transmission, back)
        weighted = self._weighted(power).sum(dim=(0, 1))
        if not self.shifted:
            return grad_frames.sum(dim=(0, 1)), weighted
        # The frame's probe is the probe shifted by the position's fraction: undo the shift (unitary),
        # summing the frames' spectra so that one inverse transform serves them all.
        flat = torch.fft.fft2(grad_frames.reshape(-1, self.n_modes, self.m, self.m))
        ramp = shift_ramp(-self.fraction.reshape(-1, 2), self.m, flat.dtype, flat.device)
        return torch.fft.ifft2(torch.sum(flat * ramp[:, None], dim=0)), weighted

    def probe_frames_gradient(self, transmission: torch.Tensor, back: torch.Tensor):
        """(d cost / d frame probe (B, J, K, M, M), |window|^2 (B, J, M, M)): every window's gradient with
        respect to its (shifted) probe, and the Gauss-Newton diagonal of the probe's step per window."""
        windows = self.windows(transmission)
        return back * windows.conj()[:, :, None], windows.abs() ** 2

    def position_gradient(self, transmission: torch.Tensor, back: torch.Tensor,
                          fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad (B, J, 2), hessian (B, J, 2, 2)): d cost / d position (row, col) of every window, and
        the Gauss-Newton matrix of the amplitude cost, ``2 J^T J`` with ``J = d|far field| / d position``,
        which preconditions the step (each window's cost depends on its own position only, so the
        per-window 2 x 2 matrices are the whole Gauss-Newton Hessian).  ``fields`` are the forward
        far fields of the same evaluation."""
        windows = self.window_stack(transmission)
        # The window at n + f is modelled as P(u - f) O(u + n): d/df = -grad P(u - f) O(u + n).
        if self.shifted:  # the shifted probes' spectra: the probe's times each frame's ramp
            ramp = shift_ramp(self.fraction.reshape(-1, 2), self.m, self.probe.dtype, self.probe.device)
            spectrum = (torch.fft.fft2(self.probe if not self.single_mode else self.probe[None])[None]
                        * ramp[:, None]).reshape(self.frame_probe.shape)
        else:
            spectrum = torch.fft.fft2(self.frame_probe)
        freq = torch.fft.fftfreq(self.m, device=self.probe.device, dtype=self.fraction.dtype).to(spectrum.dtype)
        if self.single_mode:
            fields = fields[:, :, None]
        modulus = torch.sqrt(torch.sum(fields.abs() ** 2, dim=2)).clamp_min(1e-20)  # (B, J, M, M)
        grads, sensitivities = [], []
        for ramp in (freq[:, None], freq[None, :]):
            d_wave = self.carry(-torch.fft.ifft2(spectrum * (2j * torch.pi * ramp)), windows)
            grads.append(2 * torch.real(torch.sum(back.conj() * d_wave, dim=(2, 3, 4))))
            d_field = self.transform(d_wave)
            sensitivities.append(torch.sum(torch.real(fields.conj() * d_field), dim=2) / modulus)  # d|g|/df
        grad = torch.stack(grads, dim=-1)
        rows, cols = sensitivities
        cross = torch.sum(rows * cols, dim=(-2, -1))
        hessian = 2 * torch.stack([torch.stack([torch.sum(rows**2, dim=(-2, -1)), cross], dim=-1),
                                   torch.stack([cross, torch.sum(cols**2, dim=(-2, -1))], dim=-1)], dim=-2)
        return grad, hessian
