"""Tests of the multislice building blocks: free-space propagation and slab projectors.

Every claim is a number: adjointness gaps, slab projections adding up to the full projection,
analytic propagation (composition, inversion, power, the paraxial Gaussian beam) and a uniform
slab under a plane wave, which a multislice model must turn into the projection approximation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptytomo.errors import PtytomoError
from ptytomo.model.probe import propagate as paraxial_propagate
from ptytomo.operators import FresnelPropagator, ParallelProjector, SlabProjector, adjointness_gap, slab_edges
from ptytomo.operators.propagation import band_limit_frequency
from ptytomo.operators.tomo import slab_centres
from ptytomo.physics import depth_of_field_m, wavelength_m, wavenumber

GAP_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
# The axes, the diagonal, an octant's edge past 90 degrees and irregular angles.
ANGLES = np.array([0.0, np.pi / 2, np.pi / 4, 0.3, 2.0, 3.9, 5.9, np.pi, 3 * np.pi / 4, 2 * np.pi - 1e-3])
ENERGY_KEV = 10.0
LAMBDA = wavelength_m(ENERGY_KEV)
K = wavenumber(ENERGY_KEV)
PIXEL = 1e-8


def random_tensor(shape, dtype, is_complex=False, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=g, dtype=dtype)
    return torch.complex(real, torch.randn(shape, generator=g, dtype=dtype)) if is_complex else real


def rel_error(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def band_limited_wave(shape, keep_fraction, seed=0) -> torch.Tensor:
    """A random complex wave whose spectrum is zero beyond ``keep_fraction`` of Nyquist per axis."""
    spectrum = random_tensor(shape, torch.float64, is_complex=True, seed=seed)
    fy = np.abs(np.fft.fftfreq(shape[-2]))[:, None] * 2
    fx = np.abs(np.fft.fftfreq(shape[-1]))[None, :] * 2
    mask = torch.from_numpy((fy < keep_fraction) & (fx < keep_fraction))
    return torch.fft.ifft2(spectrum * mask, norm="ortho")


# ---------------------------------------------------------------------------
# FresnelPropagator
# ---------------------------------------------------------------------------

# Distances: a multislice step, a back-propagation, and one long enough for the band limit to bite.
LONG = 1.25e-4  # the band limit falls at 0.41 of Nyquist on 64 px of 10 nm, 0.31 on 48 px


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", [3e-7, -5e-6, LONG])
@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_propagator_adjoint(dtype, distance, shape):
    prop = FresnelPropagator(shape, PIXEL, LAMBDA, distance, dtype=dtype)
    x = random_tensor((3, *shape), dtype, True, seed=1)  # a leading batch axis
    y = random_tensor((3, *shape), dtype, True, seed=2)
    assert adjointness_gap(prop, x, y) < GAP_TOLERANCE[dtype]


def test_distance_zero_is_the_identity_bit_for_bit():
    wave = random_tensor((2, 16, 16), torch.float64, True)
    prop = FresnelPropagator((16, 16), PIXEL, LAMBDA, 0.0, dtype=torch.float64)
    assert torch.equal(prop.forward(wave), wave) and torch.equal(prop.adjoint(wave), wave)


def test_composed_steps_equal_one_long_step():
    """N steps of dz are one step of N dz: the phases add (no band limit, which depends on dz)."""
    wave = random_tensor((48, 48), torch.float64, True, seed=3)
    dz, n = 7e-6, 9
    step = FresnelPropagator((48, 48), PIXEL, LAMBDA, dz, band_limit=False, dtype=torch.float64)
    out = wave
    for _ in range(n):
        out = step.forward(out)
    once = FresnelPropagator((48, 48), PIXEL, LAMBDA, n * dz, band_limit=False, dtype=torch.float64)
    assert rel_error(out, once.forward(wave)) < 1e-13


def test_back_propagation_inverts_on_a_band_limited_wave():
    """+d then -d is the identity where the band limit passes (|f| below 0.41 Nyquist at LONG)."""
    wave = band_limited_wave((64, 64), keep_fraction=0.35, seed=4)
    forward = FresnelPropagator((64, 64), PIXEL, LAMBDA, LONG, dtype=torch.float64)
    backward = FresnelPropagator((64, 64), PIXEL, LAMBDA, -LONG, dtype=torch.float64)
    assert rel_error(backward.forward(forward.forward(wave)), wave) < 1e-13
    # A wave with components beyond the limit loses them: the same test must then fail.
    full = random_tensor((64, 64), torch.float64, True, seed=5)
    assert rel_error(backward.forward(forward.forward(full)), full) > 0.5


def test_power_is_conserved_for_propagating_waves():
    wave = band_limited_wave((2, 64, 64), keep_fraction=0.35, seed=6)
    for distance in (1e-6, -3e-5, LONG):
        out = FresnelPropagator((64, 64), PIXEL, LAMBDA, distance, dtype=torch.float64).forward(wave)
        power_in, power_out = float(wave.abs().square().sum()), float(out.abs().square().sum())
        assert abs(power_out / power_in - 1) < 1e-13


def test_band_limit_keeps_exactly_the_frequencies_below_matsushima_shimobaba():
    shape = (64, 48)
    prop = FresnelPropagator(shape, PIXEL, LAMBDA, LONG, dtype=torch.float64)
    fy = np.fft.fftfreq(shape[0], d=PIXEL)[:, None]
    fx = np.fft.fftfreq(shape[1], d=PIXEL)[None, :]
    expected = ((np.abs(fy) < band_limit_frequency(shape[0], PIXEL, LAMBDA, LONG))
                & (np.abs(fx) < band_limit_frequency(shape[1], PIXEL, LAMBDA, LONG)))
    passed = (prop.transfer.abs() > 0).numpy()
    assert np.array_equal(passed, expected)
    assert 0.05 < expected.mean() < 0.5  # the limit bites at this distance: the test is not vacuous
    assert np.allclose(np.abs(prop.transfer.numpy()[passed]), 1.0, atol=1e-15, rtol=0)
    # A multislice step removes nothing.
    assert bool(torch.all(FresnelPropagator(shape, PIXEL, LAMBDA, 1e-6).transfer.abs() > 0))


def test_evanescent_components_are_dropped():
    """At pixels of 0.3 lambda the grid holds frequencies beyond k; exactly those are zero."""
    pixel = 0.3 * LAMBDA
    prop = FresnelPropagator((32, 32), pixel, LAMBDA, 5 * LAMBDA, band_limit=False, dtype=torch.float64)
    f = np.fft.fftfreq(32, d=pixel)
    evanescent = (f[:, None] ** 2 + f[None, :] ** 2) >= 1 / LAMBDA**2
    assert 0 < evanescent.mean() < 1
    assert np.array_equal((prop.transfer.abs() == 0).numpy(), evanescent)


def test_gaussian_beam_matches_the_closed_form_of_this_convention():
    """A Gaussian waist exp(-r^2 / w0^2) propagated by z against the paraxial closed form.

    The textbook wave exp(+ikz) A has A = q0 / q exp(+i k r^2 / (2 q)), q = z - i zR, zR = pi w0^2 /
    lambda, from its transfer function exp(+i z (kz - k)) ~ exp(-i z q^2 / 2k).  FORMAT.md's transfer
    function exp(-i z (kz - k)) is that one's conjugate (its transmission exp(+i k P x) is the
    conjugated one), so its envelope solves the conjugate paraxial equation and is conj(A):

        u(r, z) = i zR / (z + i zR) * exp(-i k r^2 / (2 (z + i zR)))
                = w0 / w exp(-r^2 / w^2) exp(-i k r^2 / (2 R)) exp(+i arctan(z / zR)),

    diverging for z > 0 with a negative quadratic phase.  The residual is the non-paraxial term
    z q^4 / (8 k^3) of the exact transfer function (~ 3e-7 per Rayleigh range here); the textbook
    form (the conjugate) misses by O(1).
    """
    n, w0 = 128, 4 * PIXEL
    z_rayleigh = math.pi * w0**2 / LAMBDA
    c = (np.arange(n) - n // 2) * PIXEL
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    waist = torch.from_numpy(np.exp(-r2 / w0**2).astype(np.complex128))
    for fraction in (0.3, 1.0, 3.0, -2.0):
        z = fraction * z_rayleigh
        out = FresnelPropagator((n, n), PIXEL, LAMBDA, z, dtype=torch.float64).forward(waist).numpy()
        closed_form = 1j * z_rayleigh / (z + 1j * z_rayleigh) * np.exp(-1j * K * r2 / (2 * (z + 1j * z_rayleigh)))
        assert rel_error(out, closed_form) < 1e-6 * max(1.0, abs(fraction))
        if fraction > 0.5:
            assert rel_error(out, np.conj(closed_form)) > 0.5


def test_paraxial_agreement_with_probe_defocus():
    """Same sign as model.probe.propagate (--probe-defocus), to the non-paraxial term: the two transfer
    functions' phases differ by z q^4 / (8 k^3) + O(q^6), which bounds the relative difference
    (|exp(ia) - exp(ib)| <= |a - b|) at the wave's highest frequency."""
    wave = band_limited_wave((64, 64), keep_fraction=0.5, seed=7)
    distance = 4e-5
    ours = FresnelPropagator((64, 64), PIXEL, LAMBDA, distance, dtype=torch.float64).forward(wave)
    theirs = paraxial_propagate(wave.numpy(), distance, LAMBDA, PIXEL)
    q_max = 2 * math.pi * math.hypot(0.25, 0.25) / PIXEL  # 0.5 Nyquist on both axes
    non_paraxial = distance * q_max**4 / (8 * K**3)
    assert 1e-3 * non_paraxial < rel_error(ours, theirs) < 1.01 * non_paraxial
    assert rel_error(ours, paraxial_propagate(wave.numpy(), -distance, LAMBDA, PIXEL)) > 0.5


def test_propagators_share_the_cached_transfer_function():
    a = FresnelPropagator((32, 32), PIXEL, LAMBDA, 2e-6)
    b = FresnelPropagator((32, 32), PIXEL, LAMBDA, 2e-6)
    assert a.transfer is b.transfer
    assert FresnelPropagator((32, 32), PIXEL, LAMBDA, 3e-6).transfer is not a.transfer


def test_propagator_rejects_bad_input():
    with pytest.raises(PtytomoError, match="pixel_m"):
        FresnelPropagator((8, 8), -1.0, LAMBDA, 1e-6)
    with pytest.raises(PtytomoError, match="distance_m"):
        FresnelPropagator((8, 8), PIXEL, LAMBDA, float("nan"))
    with pytest.raises(PtytomoError, match="shape"):
        FresnelPropagator((8, 8), PIXEL, LAMBDA, 1e-6).forward(torch.zeros(8, 9, dtype=torch.complex64))


def test_depth_of_field():
    assert depth_of_field_m(1e-8, ENERGY_KEV) == pytest.approx(5.2e-16 / LAMBDA, rel=1e-15)
    assert depth_of_field_m(1e-8, ENERGY_KEV) == pytest.approx(4.194083e-6, rel=1e-6)
    assert depth_of_field_m(2e-8, ENERGY_KEV, factor=4) == pytest.approx(16e-16 / LAMBDA, rel=1e-15)
    with pytest.raises(PtytomoError, match="voxel_size_m"):
        depth_of_field_m(0.0, ENERGY_KEV)


# ---------------------------------------------------------------------------
# SlabProjector
# ---------------------------------------------------------------------------


class SingleSlab:
    """Slab ``s`` of a SlabProjector as an operator of its own: (Nz, Ny, Nx) -> (A, Nz, Nu)."""

    def __init__(self, slabs: SlabProjector, s: int):
        self.slabs, self.s = slabs, s

    def forward(self, volume):
        return self.slabs.forward(volume)[self.s]

    def adjoint(self, projection):
        stacked = projection.new_zeros(self.slabs.projection_shape)
        stacked[self.s] = projection
        return self.slabs.adjoint(stacked)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_complex", [False, True])
@pytest.mark.parametrize("n_slices", [1, 4, 9])
def test_slab_projector_adjoint(dtype, is_complex, n_slices):
    shape = (3, 11, 14)
    slabs = SlabProjector(shape, ANGLES, slab_edges(shape, n_slices), voxel_size_m=0.7, dtype=dtype)
    x = random_tensor(shape, dtype, is_complex, seed=1)
    y = random_tensor(slabs.projection_shape, dtype, is_complex, seed=2)
    assert adjointness_gap(slabs, x, y) < GAP_TOLERANCE[dtype]
    # Each slab on its own: its block of rows, its block of the transpose.
    for s in range(n_slices):
        one = SingleSlab(slabs, s)
        if torch.linalg.vector_norm(one.forward(x)) > 0:
            assert adjointness_gap(one, x, y[s]) < GAP_TOLERANCE[dtype]


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 13, 21), (2, 20, 9)])
@pytest.mark.parametrize("n_slices", [2, 3, 8, 31])
def test_slab_projections_sum_to_the_full_projection(shape, n_slices):
    x = random_tensor(shape, torch.float64, True, seed=3)
    full = ParallelProjector(shape, ANGLES, voxel_size_m=2e-8, dtype=torch.float64).forward(x)
    slabs = SlabProjector(shape, ANGLES, slab_edges(shape, n_slices), voxel_size_m=2e-8, dtype=torch.float64)
    parts = slabs.forward(x)
    assert parts.shape == (n_slices, len(ANGLES), shape[0], shape[2])
    for a in range(len(ANGLES)):
        assert rel_error(parts[:, a].sum(dim=0), full[a]) < 1e-12
    # The slabs split the rays: several slabs carry signal at every angle.
    assert int((parts.abs().sum(dim=(2, 3)) > 0).sum(dim=0).min()) >= min(n_slices, 2)


def test_one_slab_is_the_parallel_projector_bit_for_bit():
    shape = (3, 12, 15)
    x = random_tensor(shape, torch.float32, True, seed=4)
    y = random_tensor((len(ANGLES), 3, 15), torch.float32, True, seed=5)
    full = ParallelProjector(shape, ANGLES, voxel_size_m=0.3)
    one = SlabProjector(shape, ANGLES, slab_edges(shape, 1), voxel_size_m=0.3)
    assert torch.equal(one.forward(x)[0], full.forward(x))
    assert torch.equal(one.adjoint(y[None]), full.adjoint(y))


def test_samples_on_an_edge_go_to_exactly_one_slab():
    """At theta = 0, row y sits at depth t = y - (Ny - 1) / 2, an integer for odd Ny: integer edges
    put samples exactly on them, and each row must land in the slab its depth opens."""
    shape = (2, 9, 6)
    x = random_tensor(shape, torch.float64, seed=6)
    edges = np.array([-4.0, -2.0, 0.0, 1.0, 4.5])
    parts = SlabProjector(shape, [0.0], edges, dtype=torch.float64).forward(x)[:, 0]
    depth = np.arange(9) - 4
    for s in range(len(edges) - 1):
        rows = np.flatnonzero((depth >= edges[s]) & (depth < edges[s + 1]))
        assert torch.allclose(parts[s], x[:, rows].sum(dim=1), rtol=1e-14, atol=0)
    assert rel_error(parts.sum(dim=0), x.sum(dim=1)) < 1e-15


def test_edges_short_of_the_volume_restrict_the_projection():
    """Samples outside [edges[0], edges[-1]) belong to no slab: the projector sees only that depth range."""
    shape = (2, 9, 6)
    x = random_tensor(shape, torch.float64, seed=7)
    part = SlabProjector(shape, [0.0], [-1.0, 2.0], dtype=torch.float64).forward(x)[0, 0]
    assert torch.allclose(part, x[:, 3:6].sum(dim=1), rtol=1e-14, atol=0)


def test_slab_edges_and_geometry():
    shape = (4, 10, 16)
    edges = slab_edges(shape, 5)
    assert len(edges) == 6 and np.allclose(np.diff(edges), np.diff(edges)[0], rtol=1e-14)
    assert edges[-1] == pytest.approx(math.hypot(17 / 2, 11 / 2)) and edges[0] == -edges[-1]
    slabs = SlabProjector(shape, ANGLES, edges, voxel_size_m=1e-8)
    assert np.allclose(slabs.thickness_m, np.diff(edges) * 1e-8, rtol=1e-14)
    assert np.allclose(slabs.centres_m, slab_centres(edges) * 1e-8, rtol=1e-14)
    assert slabs.centres_m[2] == pytest.approx(0.0, abs=1e-20)  # odd S: a slab at the rotation axis
    # Every sample of the full projector lands in a slab, at every angle.
    assert slabs.matrix._nnz() == ParallelProjector(shape, ANGLES).matrix._nnz()
    with pytest.raises(PtytomoError, match="n_slices"):
        slab_edges(shape, 0)
    with pytest.raises(PtytomoError, match="edges"):
        SlabProjector(shape, ANGLES, [0.0, 1.0, 1.0])


# ---------------------------------------------------------------------------
# A uniform slab under a plane wave: multislice = projection approximation
# ---------------------------------------------------------------------------


def multislice_plane_wave(volume, theta, n_slices, voxel, wavelength):
    """Plane wave at t = 0 -> (propagate to slab centre, multiply exp(i k p_s)) per slab -> back to t = 0."""
    slabs = SlabProjector(volume.shape, [theta], slab_edges(volume.shape, n_slices), voxel, dtype=torch.float64)
    projections = slabs.forward(volume)[:, 0]
    wave = torch.ones(volume.shape[0], volume.shape[2], dtype=torch.complex128)
    depth = 0.0
    for s in range(n_slices):
        step = FresnelPropagator(wave.shape, voxel, wavelength, slabs.centres_m[s] - depth, dtype=torch.float64)
        wave = step.forward(wave)
        wave = wave * torch.exp(1j * K * projections[s])
        depth = slabs.centres_m[s]
    return FresnelPropagator(wave.shape, voxel, wavelength, -depth, dtype=torch.float64).forward(wave)


def rays_crossing_the_whole_slice(shape, theta):
    """Detector bins whose ray meets every major row (column) inside the slice: chord Ny / |cos|."""
    _, ny, nx = shape
    s = np.arange(nx) - (nx - 1) / 2
    cos, sin = math.cos(theta), math.sin(theta)
    if abs(cos) >= abs(sin):
        t = ((np.arange(ny) - (ny - 1) / 2)[None] - s[:, None] * sin) / cos
        minor, n_minor = s[:, None] * cos - t * sin + (nx - 1) / 2, nx
    else:
        t = (s[:, None] * cos - (np.arange(nx) - (nx - 1) / 2)[None]) / sin
        minor, n_minor = s[:, None] * sin + t * cos + (ny - 1) / 2, ny
    chord = ny / abs(cos) if abs(cos) >= abs(sin) else nx / abs(sin)
    return np.all((minor >= 0) & (minor <= n_minor - 1), axis=1), chord


UNIFORM_INDEX = complex(1e-5, 1e-7)
UNIFORM_SHAPE = (4, 32, 48)


@pytest.mark.parametrize("n_slices", [1, 3, 8, 20])
def test_uniform_cube_at_zero_degrees_is_the_projection_approximation(n_slices):
    """At theta = 0 every slab's projection is uniform, the wave stays a plane wave (H(0) = 1) and the
    exit wave is exp(i k x T) wherever the slicing puts the slabs."""
    volume = torch.full(UNIFORM_SHAPE, UNIFORM_INDEX, dtype=torch.complex128)
    exit_wave = multislice_plane_wave(volume, 0.0, n_slices, PIXEL, LAMBDA)
    expected = np.exp(1j * K * UNIFORM_INDEX * UNIFORM_SHAPE[1] * PIXEL)
    assert float((exit_wave - expected).abs().max()) < 1e-13


@pytest.mark.parametrize("theta", [0.35, np.pi / 2 + 0.2])
def test_uniform_cube_at_an_oblique_angle(theta):
    """Rays crossing the whole slice see exp(i k x T) with T = Ny / |cos|.  The slab boundaries cut
    the tilted cube's rows into a staircase (each slab's projection steps by one row's phase, 5e-3 rad
    here, across the detector), which diffracts: the exit wave deviates by a fraction of one row's
    phase, linearly in the wavelength, so it vanishes in the geometric limit."""
    volume = torch.full(UNIFORM_SHAPE, UNIFORM_INDEX, dtype=torch.complex128)
    inside, chord = rays_crossing_the_whole_slice(UNIFORM_SHAPE, theta)
    assert inside.sum() >= 20
    expected = np.exp(1j * K * UNIFORM_INDEX * chord * PIXEL)
    row_phase = K * abs(UNIFORM_INDEX) * PIXEL / max(abs(math.cos(theta)), abs(math.sin(theta)))
    def deviation(n_slices, wavelength):
        exit_wave = multislice_plane_wave(volume, theta, n_slices, PIXEL, wavelength)
        return float((exit_wave[:, inside] - expected).abs().max())

    for n_slices in (1, 8):
        # The slabs add up: the projection approximation itself is exact on these rays.
        assert deviation(n_slices, LAMBDA * 1e-12) < 1e-12
        measured, geometric = deviation(n_slices, LAMBDA), deviation(n_slices, LAMBDA * 1e-6)
        if n_slices == 1:
            assert measured < 1e-13  # one slab at t = 0: propagation out and back cancels
        else:
            assert 1e-6 * row_phase < measured < 0.2 * row_phase  # measured 0.07 and 0.09 row_phase
            assert geometric < 2e-6 * measured + 1e-13
