"""Tests of the simulator (noise-free, oversampled, Poisson) and of the scan geometry it uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptytomo.errors import PtytomoError
from ptytomo.io import read_data
from ptytomo.operators import JointModel
from ptytomo.operators.ptycho import far_field, far_field_adjoint
from ptytomo.phantoms import block_average, woven_wire
from ptytomo.scan import (
    disc_probe,
    equally_spaced_angles,
    linear_overlap,
    probe_diameter_estimate,
    probe_photons,
    raster_centres,
    raster_positions,
    scale_probe,
    step_estimate,
)
from ptytomo.simulate import fine_probe, registration_ramp, simulate


def model_for(data, probe=None, dtype=torch.float64) -> JointModel:
    g = data.geometry
    return JointModel(
        g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions,
        data.probe if probe is None else probe, valid=data.valid, dtype=dtype,
    )


def amplitudes_of_truth(data, probe=None, volume=None) -> np.ndarray:
    model = model_for(data, probe)
    return model.amplitudes(model.volume(data.truth if volume is None else volume)).numpy()


def relative_amplitude_misfit(data, probe=None) -> float:
    """|| sqrt(I) - |g(truth)| || / || sqrt(I) ||."""
    root = np.sqrt(data.intensities.astype(np.float64))
    return float(np.linalg.norm(root - amplitudes_of_truth(data, probe)) / np.linalg.norm(root))


def probe_far_field_intensity(probe) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft2(np.asarray(probe, dtype=np.complex128), norm="ortho"))) ** 2


# ---------------------------------------------------------------------------
# 6. Noise-free data are reproduced exactly from the truth
# ---------------------------------------------------------------------------


def test_noise_free_data_are_reproduced_from_truth(tiny_data_file):
    data = read_data(tiny_data_file)  # float32 intensities, complex64 probe and truth
    intensities = data.intensities.astype(np.float64)
    amplitudes = amplitudes_of_truth(data)
    np.testing.assert_allclose(amplitudes**2, intensities, rtol=1e-5, atol=1e-6 * intensities.max())
    # The amplitude cost at the truth.  Storing I as float32 rounds it by <= 2^-24
    # relative (sqrt(I) by <= 2^-25 = 3e-8), and the complex64 probe and truth
    # add errors of the same order, so cost / sum(I) ~ (3e-8)^2 ~ 1e-15.  1e-12
    # keeps a 1000x margin; any modelling mismatch (a one-pixel offset, the other
    # sign convention) gives > 1e-4.
    cost = np.sum((np.sqrt(intensities) - amplitudes) ** 2)
    assert cost / intensities.sum() < 1e-12


def test_simulation_follows_the_sign_convention(tiny_data):
    """FORMAT.md: the other convention, exp(-i k P delta), point-reflects the frames.

    O -> conj(O) is x -> -conj(x); with the real disc probe the model's
    amplitudes then equal the data flipped about DC (q -> -q), not the data.
    """
    m = tiny_data.detector_size
    assert m % 2 == 1  # for odd M, q -> -q is index i -> M - 1 - i after fftshift
    flipped = np.sqrt(tiny_data.intensities[..., ::-1, ::-1].astype(np.float64))
    other = amplitudes_of_truth(tiny_data, volume=-np.conj(tiny_data.truth))
    assert np.linalg.norm(other - flipped) / np.linalg.norm(flipped) < 1e-6
    unflipped = np.sqrt(tiny_data.intensities.astype(np.float64))
    assert np.linalg.norm(other - unflipped) / np.linalg.norm(unflipped) > 1e-2


def test_simulation_layout(tiny_data, tiny_config):
    config = tiny_config()
    d = tiny_data
    np.testing.assert_array_equal(d.angles, equally_spaced_angles(3))
    expected_positions = raster_positions(3, (16, 16), 3, 15, 1, "both")
    np.testing.assert_array_equal(d.positions, expected_positions)
    assert d.intensities.shape == (3, expected_positions.shape[1], 15, 15)
    assert d.intensities.dtype == np.float32 and d.probe.dtype == np.complex64
    assert d.geometry.volume_shape == (16, 16, 16)
    np.testing.assert_array_equal(d.truth, woven_wire(16, energy_kev=config.energy_kev).astype(np.complex64))
    assert probe_photons(d.probe) == pytest.approx(config.photons, rel=1e-5)
    assert d.simulation["overlap"] == pytest.approx(linear_overlap(3, 5.0))


# ---------------------------------------------------------------------------
# 7. Oversampled simulation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [2, 4])
def test_oversampled_empty_phantom_is_the_probe_far_field(zero_phantom, s, tiny_config):
    m, diameter, photons = 15, 5.0, 1e6
    d = simulate(tiny_config(phantom=str(zero_phantom), oversample=s, n_angles=2, precision="float32"), progress=False)
    assert d.geometry.volume_shape == (12, 12, 12)
    assert np.count_nonzero(d.truth) == 0
    expected = probe_far_field_intensity(d.probe)
    assert np.abs(d.intensities - expected).max() <= 1e-5 * expected.max()
    # Photons: the fine far field cropped to the detector, computed here independently.
    fine = disc_probe(m * s, diameter * s).astype(np.complex128)
    fine *= np.sqrt(photons * s**2 / np.sum(np.abs(fine) ** 2))
    start = (m * s) // 2 - m // 2
    crop = np.fft.fftshift(np.fft.fft2(fine, norm="ortho"))[start : start + m, start : start + m] / s
    kept = np.sum(np.abs(crop) ** 2)
    per_frame = d.intensities.astype(np.float64).sum(axis=(2, 3))
    np.testing.assert_allclose(per_frame, kept, rtol=1e-5)
    assert 0.9 * photons < kept <= photons  # what the detector misses is the disc's far tail


def test_oversampled_truth_is_the_block_average(tiny_config):
    d = simulate(tiny_config(oversample=2, n_angles=1, size=8), progress=False)
    fine = woven_wire(16, energy_kev=5.0)
    np.testing.assert_allclose(d.truth, block_average(fine, 2).astype(np.complex64), rtol=0, atol=1e-12)
    # the phantom module's promise: the same sub-points as supersampling 8 on the coarse grid
    np.testing.assert_allclose(d.truth, woven_wire(8, energy_kev=5.0, supersample=8), rtol=0, atol=1e-10)


def test_oversampled_file_phantom_truth_is_the_file_volume(tmp_path, rng, tiny_config):
    volume = (1e-5 * rng.uniform(size=(10, 10, 10)) + 1e-6j * rng.uniform(size=(10, 10, 10))).astype(np.complex64)
    path = tmp_path / "volume.npy"
    np.save(path, volume)
    d = simulate(tiny_config(phantom=str(path), oversample=2, n_angles=1), progress=False)
    assert d.geometry.volume_shape == (10, 10, 10)
    np.testing.assert_allclose(d.truth, volume, rtol=1e-6, atol=0)


def test_material_makes_the_phantom_one_compound_at_density_fractions(tiny_config):
    """--material SiO2:2.2: the woven wires' delta map, scaled to [0, 1], as density fractions of silica at the
    beam energy (beta in proportion); the truth is its block average; bad values are one line naming the flag."""
    from ptytomo.physics import delta_beta

    silica = simulate(tiny_config(oversample=2, n_angles=1, size=8, material="SiO2:2.2"), progress=False)
    wires = woven_wire(16, energy_kev=5.0)
    delta, beta = delta_beta("SiO2", 2.2, 5.0)
    expected = block_average((wires.real / wires.real.max()) * complex(delta, beta), 2)
    np.testing.assert_allclose(silica.truth, expected.astype(np.complex64), rtol=1e-6, atol=0)
    assert silica.truth.real.max() <= delta * (1 + 1e-6)
    np.testing.assert_allclose(silica.truth.imag, silica.truth.real * (beta / delta), rtol=1e-5, atol=0)
    assert silica.simulation["material"] == "SiO2:2.2"
    for bad, message in [("SiO2", "FORMULA:DENSITY"), ("SiO2:dense", "FORMULA:DENSITY"), ("Qq:2", "xraydb"),
                         ("SiO2:0", "density")]:
        with pytest.raises(PtytomoError, match=f"--material.*{message}"):
            simulate(tiny_config(material=bad), progress=False)


@pytest.fixture(scope="module")
def oversampled_pair(tiny_config):
    exact = simulate(tiny_config(precision="float64"), progress=False)
    fine = simulate(tiny_config(precision="float64", oversample=2), progress=False)
    return exact, fine


def test_coarse_model_fits_only_inverse_crime_data(oversampled_pair):
    exact, fine = oversampled_pair
    assert relative_amplitude_misfit(exact) < 1e-6
    misfit = relative_amplitude_misfit(fine)
    assert misfit > 1e-3  # no inverse crime: the coarse model cannot fit
    assert misfit < 0.05  # ... but it is the same experiment


def test_oversampled_probe_registration_is_the_best_fit(oversampled_pair):
    """The file's probe (registered onto the coarse grid) fits better than unregistered ones."""
    _, fine = oversampled_pair
    spectrum = far_field(torch.from_numpy(fine.probe.astype(np.complex128)))
    ramp = registration_ramp(fine.detector_size, 2)
    unregistered = far_field_adjoint(spectrum * ramp.conj()).numpy()
    opposite = far_field_adjoint(spectrum * ramp.conj() ** 2).numpy()
    best = relative_amplitude_misfit(fine)
    assert best < 0.75 * relative_amplitude_misfit(fine, unregistered)
    assert best < 0.75 * relative_amplitude_misfit(fine, opposite)


def _smooth_random_probe(m, rng):
    probe = disc_probe(m, 7.0, soft_edge=2.0).astype(np.complex128)
    return probe * np.exp(1j * 0.5 * rng.normal(size=(m, m)))


@pytest.mark.parametrize("m, s", [(15, 3), (16, 2), (16, 3)])
def test_fine_probe_is_band_limited_interpolation(m, s, rng):
    probe = _smooth_random_probe(m, rng)
    fine = fine_probe(probe, s)
    assert fine.shape == (m * s, m * s)
    np.testing.assert_allclose(fine[::s, ::s], probe, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m, s", [(15, 2), (15, 4)])
def test_fine_probe_odd_detector_even_oversampling(m, s, rng):
    probe = _smooth_random_probe(m, rng)
    np.testing.assert_allclose(fine_probe(probe, s)[::s, ::s], probe, rtol=0, atol=1e-12)


def _probe_file_case(tmp_path, zero_phantom, m, s, rng, tiny_config):
    probe = _smooth_random_probe(m, rng)
    path = tmp_path / "probe.npy"
    np.save(path, probe.astype(np.complex64))
    config = tiny_config(phantom=str(zero_phantom), probe_file=str(path), detector_size=m, oversample=s,
                         n_angles=1, step=4, precision="float64")
    data = simulate(config, progress=False)
    expected = probe_far_field_intensity(scale_probe(probe.astype(np.complex64).astype(np.complex128), 1e6))
    return data, expected


@pytest.mark.parametrize("m, s", [(15, 3), (16, 2)])
def test_oversampled_probe_file_keeps_the_detector_view(tmp_path, zero_phantom, rng, m, s, tiny_config):
    """An empty object shows the given probe's far field; a band-limited probe loses no photons."""
    data, expected = _probe_file_case(tmp_path, zero_phantom, m, s, rng, tiny_config)
    assert np.abs(data.intensities - expected).max() <= 1e-5 * expected.max()
    np.testing.assert_allclose(data.intensities.sum(axis=(2, 3)), 1e6, rtol=1e-5)


def test_oversampled_probe_file_odd_detector(tmp_path, zero_phantom, rng, tiny_config):
    data, expected = _probe_file_case(tmp_path, zero_phantom, 15, 2, rng, tiny_config)
    assert np.abs(data.intensities - expected).max() <= 1e-5 * expected.max()


# ---------------------------------------------------------------------------
# Poisson noise
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poisson_runs(tiny_config):
    config = dict(n_angles=2, size=12, precision="float64")
    clean = simulate(tiny_config(**config), progress=False)
    first = simulate(tiny_config(noise="poisson", seed=7, **config), progress=False)
    again = simulate(tiny_config(noise="poisson", seed=7, **config), progress=False)
    other = simulate(tiny_config(noise="poisson", seed=8, **config), progress=False)
    return clean, first, again, other


def test_poisson_is_deterministic_per_seed(poisson_runs):
    clean, first, again, other = poisson_runs
    np.testing.assert_array_equal(first.intensities, again.intensities)
    assert np.mean(first.intensities != other.intensities) > 0.3
    np.testing.assert_array_equal(first.truth, clean.truth)  # the seed changes the noise, not the woven wire


def test_poisson_counts_are_integers_around_the_expected_counts(poisson_runs):
    clean, noisy, _, _ = poisson_runs
    counts = noisy.intensities.astype(np.float64)
    assert counts.min() >= 0
    np.testing.assert_array_equal(counts, np.round(counts))
    expected = clean.intensities.astype(np.float64)
    total, expected_total = counts.sum(), expected.sum()
    assert abs(total - expected_total) < 5 * math.sqrt(expected_total)
    bright = expected > 20
    z = (counts[bright] - expected[bright]) / np.sqrt(expected[bright])  # ~ N(0, 1)
    assert bright.sum() > 1000
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert 0.9 < z.std() < 1.1


def test_simulation_config_errors(zero_phantom, tiny_config):
    with pytest.raises(PtytomoError, match="--noise"):
        simulate(tiny_config(noise="gaussian"), progress=False)
    with pytest.raises(PtytomoError, match="--phantom"):
        simulate(tiny_config(phantom="no-such-volume.npy"), progress=False)
    with pytest.raises(PtytomoError, match="--oversample"):
        simulate(tiny_config(oversample=0), progress=False)


# ---------------------------------------------------------------------------
# 8. Scan geometry
# ---------------------------------------------------------------------------


def covered(projection_shape, positions, probe) -> np.ndarray:
    """Bool map of the projection pixels inside the probe support of at least one window."""
    n_rows, n_cols = projection_shape
    m = probe.shape[0]
    support = np.abs(probe) > 0
    hit = np.zeros((n_rows + 4 * m, n_cols + 4 * m), dtype=bool)  # room for windows outside
    for r, c in positions.astype(int):
        hit[r + 2 * m : r + 3 * m, c + 2 * m : c + 3 * m] |= support
    return hit[2 * m : 2 * m + n_rows, 2 * m : 2 * m + n_cols]


@pytest.mark.parametrize(
    "shape, m, diameter, step",
    [((32, 32), 15, 15.0, 10), ((32, 32), 15, 15.0, 4), ((20, 27), 21, 15.0, 10), ((24, 17), 16, 11.0, 7), ((9, 30), 15, 5.0, 3)],
)
def test_raster_covers_the_projection(shape, m, diameter, step):
    assert step <= diameter / math.sqrt(2)
    probe = disc_probe(m, diameter)
    positions = raster_positions(step, shape, step, m, shift=1)  # one angle per start offset
    for a in range(step):
        hit = covered(shape, positions[a], probe)
        assert hit.all(), f"angle {a}: {np.count_nonzero(~hit)} pixels not covered"


def test_coverage_check_has_teeth():
    probe = disc_probe(15, 5.0)
    positions = raster_positions(1, (32, 32), 9, 15)
    assert not covered((32, 32), positions[0], probe).all()


@pytest.mark.parametrize("shift, axes", [(1, "both"), (3, "both"), (1, "rows"), (2, "cols"), (1, "none")])
def test_raster_start_moves_by_shift_mod_step(shift, axes):
    step, n_angles = 4, 9
    positions = raster_positions(n_angles, (30, 22), step, 15, shift=shift, shift_axes=axes)
    assert positions.shape[0] == n_angles
    for a in range(n_angles):
        offset = (a * shift) % step
        moved = positions[a] - positions[0]
        assert moved.shape == positions[0].shape  # same count at every angle
        np.testing.assert_array_equal(moved[:, 0], offset if axes in ("both", "rows") else 0)
        np.testing.assert_array_equal(moved[:, 1], offset if axes in ("both", "cols") else 0)
    # the raster step itself
    rows = np.unique(positions[0][:, 0])
    np.testing.assert_array_equal(np.diff(rows), step)
    assert step_estimate(positions[0]) == step


@pytest.mark.parametrize("step, count", [(4, 324), (10, 81)])
def test_paper_raster_sizes(step, count):
    positions = raster_positions(5, (64, 64), step, 63, shift=1)
    assert positions.shape == (5, count, 2)
    # centres run from (-step, 0] to >= 63, corners are centre - 31
    centres = positions[..., 0] + 31
    assert np.all(centres.min(axis=1) > -step) and np.all(centres.min(axis=1) <= 0)
    assert np.all(centres.max(axis=1) >= 63)


@pytest.mark.parametrize("extent, step", [(64, 4), (64, 10), (2, 3), (1, 1), (17, 5)])
def test_raster_centres_bracket_every_pixel(extent, step):
    for offset in range(step):
        centres = raster_centres(extent, step, offset)
        assert len(centres) == len(raster_centres(extent, step, 0))
        distance = np.abs(np.arange(extent)[:, None] - centres[None, :]).min(axis=1)
        assert distance.max() <= step / 2


def test_linear_overlap():
    assert linear_overlap(4, 15) == pytest.approx(0.7333, abs=1e-4)
    assert linear_overlap(10, 15) == pytest.approx(1 / 3)


def test_equally_spaced_angles_exclude_the_endpoint():
    angles = equally_spaced_angles(4)
    np.testing.assert_allclose(angles, [0, np.pi / 2, np.pi, 3 * np.pi / 2], rtol=0, atol=1e-15)
    assert equally_spaced_angles(400)[-1] < 2 * np.pi
    np.testing.assert_allclose(equally_spaced_angles(3, 0.0, np.pi), [0, np.pi / 3, 2 * np.pi / 3])
    assert len(equally_spaced_angles(100)) == 100
    with pytest.raises(PtytomoError):
        equally_spaced_angles(0)
    with pytest.raises(PtytomoError):
        equally_spaced_angles(3, 1.0, 1.0)


def test_disc_probe_and_photon_scaling():
    probe = disc_probe(63, 15.0)
    assert probe.dtype == np.complex64
    assert set(np.unique(probe.real)) == {0.0, 1.0} and np.all(probe.imag == 0)
    coords = np.arange(63) - 31
    inside = np.hypot(coords[:, None], coords[None, :]) <= 7.5
    np.testing.assert_array_equal(probe.real == 1, inside)
    assert np.abs(probe).sum() == pytest.approx(np.pi * 7.5**2, rel=0.03)
    scaled = disc_probe(63, 15.0, photons=1e6)
    assert probe_photons(scaled) == pytest.approx(1e6, rel=1e-6)
    np.testing.assert_allclose(np.abs(scaled), np.abs(probe) * math.sqrt(1e6 / inside.sum()), rtol=1e-6)
    # the far field of the empty object carries the photons (unitary transform)
    assert probe_far_field_intensity(scaled).sum() == pytest.approx(1e6, rel=1e-6)
    soft = disc_probe(63, 15.0, soft_edge=4.0, photons=5e3)
    assert probe_photons(soft) == pytest.approx(5e3, rel=1e-6)
    assert np.abs(soft[31, 31]) > np.abs(soft[31, 31 + 8]) > 0


def test_probe_diameter_estimate():
    # the disc holding 90 % of the power: sqrt(0.9) D for a flat disc of diameter D
    for diameter in (7.0, 15.0, 31.0):
        assert probe_diameter_estimate(disc_probe(63, diameter)) == pytest.approx(math.sqrt(0.9) * diameter, rel=0.025)
    # the scale of the probe does not matter
    assert probe_diameter_estimate(disc_probe(63, 15.0, photons=1e9)) == pytest.approx(
        probe_diameter_estimate(disc_probe(63, 15.0)), rel=1e-6
    )
