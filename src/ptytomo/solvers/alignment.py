"""Coarse per-angle alignment by projection matching, before the joint loop (or a baseline's tomography).

The joint loop's shift gradient reaches about a probe width; runout of many
pixels needs a capture range of many pixels.  So first:

1. 2D ptychography of every angle with the recorded positions (a few dozen
   sweeps of :class:`~ptytomo.solvers.subproblems.PtychographyRetrieval`), on
   the whole padded plane (a shifted object leaves the volume's projection
   box, so free space is not pinned there), and its projections (phase, unwrapped).
2. Projection matching (Guizar-Sicairos et al., Opt. Express 19, 21345 (2011)
   use the same loop): undo the current shifts on the measured projections,
   reconstruct a quick volume from them (the Sequential tomography half: a few
   L-BFGS steps, warm-started), reproject it, and cross-correlate each
   measured projection with its reprojection over the lit region (FFT, sub-pixel
   parabola through the peak); the peak's offset is the remaining shift.
   Gauge removed, a few rounds, first on low-passed projections (the capture
   range of a blurred image is larger, and the quick volume of badly aligned
   data is blurred anyway), then at full resolution.

The measured projection of angle ``a`` is ``true(r + s_a)`` in the recorded
frame (the windows saw the object at recorded + s), so undoing the shift is a
translation by ``+s_a``.  Shifts are bounded by ``max_shift`` (the model's padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..distributed import SOLO, Comm, gather_angles, share_of
from ..model.probe import ProbeGroup, ProbeOptions
from ..model.shifts import remove_gauge
from .optimizers import make_optimizer
from .priors import Regularised
from .subproblems import LIT_FRACTION, PtychographyRetrieval, TomographyObjective, unwrap_phase


@dataclass
class AlignmentOptions:
    sweeps: int = 40  # ptychography sweeps per angle (the projections need not be converged)
    smoothing: tuple = (2.0, 0.0)  # Gaussian sigma (px) of each resolution level, coarse to fine
    rounds: int = 4  # projection-matching rounds per level
    tomo_iterations: int = 10  # L-BFGS steps of the quick volume per round (warm-started)
    max_shift: float = 10.0  # pixels per coordinate
    # refine the probe during the sweeps (when the run refines it): with a wrong probe the projections
    # are too poor to match (measured: a nominal disc for a focused beam and no runout gave 3.5-4.5 px rms
    # of spurious shifts, and delta 0.98 instead of 0.26; test_coarse_alignment_refines_a_wrong_probe_first)
    refine_probe: bool = False
    # the coarse shifts are kept only if the projections agree this much better with a quick volume's
    # reprojections than without them (relative misfit); otherwise none are applied (check_shifts)
    min_gain: float = 0.1


def coarse_align(objective, options: AlignmentOptions, gather=None, share=None, log=None) -> torch.Tensor:
    """Per-angle shifts (A, 2) pixels, gauge removed, of the data behind ``objective`` whose model
    holds the recorded positions.  ``gather``/``share`` join ranks' angles for the gauge fit."""
    gather = gather or (lambda t: t)
    share = share or (lambda t: t)
    model = objective.model
    all_angles = gather(torch.as_tensor(model.angles, dtype=torch.float64))
    measured, lit = measured_projections(objective, options.sweeps, options.refine_probe)
    shifts, unshifted = starting_shifts(objective, measured, lit, all_angles, options, gather, share, log)
    u = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    for sigma in options.smoothing:
        for _ in range(options.rounds):
            aligned, aligned_lit = translate(measured, shifts), translate(lit, shifts) > 0.5
            u = quick_volume(objective, aligned, aligned_lit, u, options.tomo_iterations)
            reprojection = reproject(objective, u)
            found = matching_offsets(low_pass(aligned.real, sigma), low_pass(reprojection, sigma), aligned_lit,
                                     options.max_shift)
            shifts = share(remove_gauge(gather(shifts + found), all_angles)).clamp(-options.max_shift,
                                                                                    options.max_shift)
            if log is not None:
                log(f"coarse alignment (sigma {sigma:g} px): update rms {float(found.pow(2).mean().sqrt()):.3g} px")
    return check_shifts(objective, measured, lit, shifts, unshifted, options, log)


def starting_shifts(objective, measured: torch.Tensor, lit: torch.Tensor, all_angles: torch.Tensor,
                    options: AlignmentOptions, gather, share, log=None) -> tuple[torch.Tensor, float]:
    """Where projection matching starts: no shifts, or the centre-of-mass shifts where a quick volume's
    reprojections agree better with them; and the unshifted projections' misfit (check_shifts' too).
    The quick volume lives in the volume's projection box, so runout of more than about half the box
    leaves it nothing to match against; the centre of mass of a compact object's projection has no
    such limit."""
    zero = torch.zeros((objective.model.n_angles, 2), dtype=torch.float64)
    moved = centre_of_mass_shifts(objective, measured, lit, all_angles, options.max_shift, gather, share)
    iterations = options.rounds * options.tomo_iterations
    before = projection_misfit(objective, measured, lit, zero, iterations)
    after = projection_misfit(objective, measured, lit, moved, iterations)
    if log is not None:
        log(f"coarse alignment: centre-of-mass shifts rms {float(moved.pow(2).mean().sqrt()):.3g} px; projection "
            f"misfit {before:.3g} unshifted, {after:.3g} shifted")
    return (moved if after < before else zero), before


def centre_of_mass_shifts(objective, measured: torch.Tensor, lit: torch.Tensor, all_angles: torch.Tensor,
                          max_shift: float, gather, share) -> torch.Tensor:
    """Per-angle shifts (A, 2), gauge removed, that move each phase projection's centre of mass onto the
    one a rigid volume's projections have: the same row at every angle, and the column ``centre +
    X cos(theta) + Y sin(theta)`` about the rotation axis (the gauge takes X, Y and the row).  Mass is
    the phase above each angle's median over its lit pixels (the free space around a compact object)."""
    model = objective.model
    phase = measured.real * lit
    background = torch.stack([image[mask > 0].median() if bool((mask > 0).any()) else image.new_zeros(())
                              for image, mask in zip(phase, lit)])
    mass = ((phase - background[:, None, None]) * lit).clamp_min(0)
    box = model.pad(torch.ones(model.volume_shape[0], model.volume_shape[2], dtype=mass.dtype, device=mass.device))
    rows = torch.arange(mass.shape[-2], dtype=mass.dtype, device=mass.device)
    cols = torch.arange(mass.shape[-1], dtype=mass.dtype, device=mass.device)

    def centre(weight: torch.Tensor) -> torch.Tensor:  # (..., H, W) -> (..., 2) rows, columns
        total = weight.sum((-2, -1)).clamp_min(1e-30)
        return torch.stack([(weight.sum(-1) * rows).sum(-1) / total, (weight.sum(-2) * cols).sum(-1) / total], -1)

    # undoing a shift s moves the measured projection by +s (module docstring): its centre goes to the axis'
    moved = (centre(box)[None] - centre(mass)).to(torch.float64).cpu()
    # an angle without mass (a scan that missed the object) has no centre: it neither enters the gauge
    # fit nor gets the gauge's part as a shift
    has_mass = gather((mass.sum((-2, -1)) > 0).to(torch.float64).cpu())
    whole = remove_gauge(gather(moved), all_angles, weights=has_mass)
    whole = torch.where(has_mass[:, None] > 0, whole, torch.zeros_like(whole))
    return share(whole).clamp(-max_shift, max_shift)


def check_shifts(objective, measured: torch.Tensor, lit: torch.Tensor, shifts: torch.Tensor, unshifted: float,
                 options: AlignmentOptions, log=None) -> torch.Tensor:
    """``shifts`` if the projections moved by them agree with a quick volume's reprojections better by
    ``min_gain`` (relative misfit) than unmoved, else zeros.  Projection matching on poor projections
    (few angles, little contrast) converges to shifts that explain nothing: measured on the 8^3, 5-angle
    file of tests/test_distributed.py, up to 4.6 px on aligned data.  Both volumes start from zero and
    take the same steps, so neither comparison is favoured.  ``unshifted``: the unmoved projections'
    misfit (measured by starting_shifts)."""
    after = projection_misfit(objective, measured, lit, shifts, options.rounds * options.tomo_iterations)
    if log is not None:
        log(f"coarse alignment: projection misfit {unshifted:.3g} unshifted, {after:.3g} shifted")
    return shifts if after < (1 - options.min_gain) * unshifted else torch.zeros_like(shifts)


def projection_misfit(objective, measured: torch.Tensor, lit: torch.Tensor, shifts: torch.Tensor,
                      iterations: int) -> float:
    """Relative misfit (over all ranks' angles) between the phase projections moved by ``shifts`` and
    the reprojections of a quick volume made from them."""
    aligned, aligned_lit = translate(measured, shifts), translate(lit, shifts) > 0.5
    model = objective.model
    u = quick_volume(objective, aligned, aligned_lit,
                     torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device), iterations)
    weight = aligned_lit.to(aligned.real.dtype)
    residual = objective.reduce(((aligned.real - reproject(objective, u)) ** 2 * weight).sum().to(torch.float64))
    norm = objective.reduce((aligned.real**2 * weight).sum().to(torch.float64))
    return float(residual / norm.clamp_min(1e-300))


def measured_projections(objective, sweeps: int, refine_probe: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(projections xi = unwrapped phase + i attenuation, lit mask), both (A, H, W) on the padded plane,
    from ``sweeps`` sweeps of per-angle ptychography with the model's positions, refining the model's
    probe on the way if asked (it keeps the refined probe: the run's own probe group goes on from it).

    With ``refine_probe``, the probe is refined first, in ``sweeps`` sweeps with the free space outside the volume's
    projection box pinned to O = 1 (what ties the probe's scale and shape down: released, a nominal
    disc for a focused beam gave projections a quick volume could not explain, projection misfit 0.99),
    then frozen for ``sweeps`` more with the free space released, as the object may sit anywhere a shift
    put it."""
    retrieval = PtychographyRetrieval(objective)
    psi = retrieval.initial()
    if refine_probe:
        groups = [ProbeGroup(objective.model, ProbeOptions(enabled=True))]
        for sweep in range(sweeps):
            retrieval.sweep(psi, groups=groups, index=sweep)
    retrieval.free_space.fill_(False)
    for sweep in range(sweeps):
        retrieval.sweep(psi)
    brightest = retrieval.illumination.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    lit = retrieval.illumination > LIT_FRACTION * brightest
    psi = torch.where(lit, psi, torch.ones_like(psi))  # unlit pixels carry nothing: free space
    phase = unwrap_phase(torch.angle(psi))
    attenuation = -torch.log(psi.abs().clamp_min(1e-6))
    return torch.complex(phase, attenuation), lit.to(phase.dtype)


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``images`` (A, H, W) moved by ``shifts`` (A, 2) pixels (out(r) = in(r - shift)), by a Fourier
    phase ramp: sub-pixel without interpolation; the padding is free space, so wrapping is harmless."""
    height, width = images.shape[-2:]
    real_dtype = images.real.dtype if images.is_complex() else images.dtype
    fr = torch.fft.fftfreq(height, device=images.device, dtype=real_dtype)
    fc = torch.fft.fftfreq(width, device=images.device, dtype=real_dtype)
    s = shifts.to(device=images.device, dtype=real_dtype)
    ramp = torch.exp(-2j * math.pi * (s[:, 0, None, None] * fr[None, :, None] + s[:, 1, None, None] * fc[None, None, :]))
    moved = torch.fft.ifft2(torch.fft.fft2(images) * ramp)
    return moved if images.is_complex() else moved.real


def quick_volume(objective, projections: torch.Tensor, lit: torch.Tensor, u0: torch.Tensor,
                 iterations: int) -> torch.Tensor:
    """A few non-negative L-BFGS steps of the Sequential tomography half on the aligned projections."""
    model = objective.model
    tomography = TomographyObjective(model, model.crop(lit), objective.reduce)
    tomography.target = model.crop(projections)
    optimizer = make_optimizer("lbfgs", Regularised(tomography, 0.0, 0.0, nonnegative=True))
    u = u0
    for _ in range(iterations):
        u, _ = optimizer.step(u)
    return u


def reproject(objective, u: torch.Tensor) -> torch.Tensor:
    """Phase of the volume's projections (A, H, W) on the padded plane, real part of R' u."""
    model = objective.model
    scale = model.voxel_size_m
    return torch.cat([model.pad(model.plane_projector(b).forward(u).real / scale) for b in range(len(model.batches))])


def low_pass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (A, H, W) with ``sigma`` pixels (0: unchanged), in Fourier space."""
    if sigma <= 0:
        return images
    height, width = images.shape[-2:]
    fr = torch.fft.fftfreq(height, device=images.device, dtype=images.dtype)
    fc = torch.fft.fftfreq(width, device=images.device, dtype=images.dtype)
    gain = torch.exp(-2 * (math.pi * sigma) ** 2 * (fr[:, None] ** 2 + fc[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(images) * gain).real


def matching_offsets(measured: torch.Tensor, reference: torch.Tensor, lit: torch.Tensor,
                     max_shift: float) -> torch.Tensor:
    """Per image, the offset e (A, 2) with ``measured(r) ~ reference(r + e)`` over the lit region:
    the peak of their FFT cross-correlation within ``max_shift``, refined by a parabola per axis."""
    weight = lit.to(measured.dtype)
    a, b = measured * weight, reference * weight
    correlation = torch.fft.ifft2(torch.fft.fft2(b) * torch.fft.fft2(a).conj()).real  # C(e) = sum a(r) b(r + e)
    height, width = correlation.shape[-2:]
    er = torch.fft.fftfreq(height, 1 / height, device=measured.device, dtype=measured.dtype)
    ec = torch.fft.fftfreq(width, 1 / width, device=measured.device, dtype=measured.dtype)
    reach = max_shift + 1
    outside = (er.abs()[:, None] > reach) | (ec.abs()[None, :] > reach)
    correlation = correlation.masked_fill(outside, -math.inf)
    flat = correlation.flatten(-2).argmax(dim=-1)
    rows, cols = flat // width, flat % width
    index = torch.arange(correlation.shape[0], device=measured.device)

    def parabola(row_offset, col_offset):
        return correlation[index, (rows + row_offset) % height, (cols + col_offset) % width]

    centre = parabola(0, 0)
    offsets = torch.stack([er[rows] + vertex(parabola(-1, 0), centre, parabola(1, 0)),
                           ec[cols] + vertex(parabola(0, -1), centre, parabola(0, 1))], dim=-1)
    return offsets.to(torch.float64).cpu()


def vertex(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Sub-pixel offset of a parabola's peak through three samples at -1, 0, +1 (within half a pixel)."""
    left = torch.where(torch.isfinite(left), left, centre)
    right = torch.where(torch.isfinite(right), right, centre)
    curvature = left - 2 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp_max(-1e-30), torch.zeros_like(centre))
    return offset.clamp(-0.5, 0.5)


def align_before_loop(objective, groups: list, options, comm: Comm = SOLO, log=None) -> None:
    """The coarse-alignment stage of a run: projection matching (:func:`coarse_align`) into the shifts group,
    when it is refined and --coarse-align is on; a resumed joint run has its shifts in the checkpoint
    instead.  ``log`` (a logging.Logger) hears the search's steps (debug) and an empty result (info)."""
    shifts = next((g for g in groups if g.name == "shifts"), None)
    if shifts is None or options.coarse_align != "on" or (options.resume and options.method == "joint"):
        return
    model = objective.model
    refine_probe = any(g.name == "probe" for g in groups)
    bound = options.shift_bound(model.volume_shape)
    found = coarse_align(objective, AlignmentOptions(max_shift=bound, refine_probe=refine_probe),
                         gather=lambda t: gather_angles(comm, t),
                         share=lambda t: share_of(comm, t, model.recorded_positions),
                         log=None if log is None else log.debug)
    if log is not None and comm.is_main and not bool(found.any()):
        log.info("coarse alignment: no shifts that make the projections agree better; starting from none")
    shifts.set(found)
    if comm.anyone(bool(found.any())):  # every rank, or none: the power iteration sums over ranks
        objective.normalise()  # windows moved by up to --max-shift: the illumination of the volume changed
