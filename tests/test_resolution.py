"""``ptytomo resolution``: the Fourier shell correlation and its 1/2-bit threshold, the two splits of the data,
the file's ``/resolution`` group, and the resolution of simulated data whose band limit is known."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch

from ptytomo.cli import main
from ptytomo.errors import PtytomoError
from ptytomo.io import RESOLUTION, Geometry, Reconstruction, read_data, read_reconstruction, write_data, write_reconstruction
from ptytomo.metrics import (fourier_shell_correlation, half_bit_threshold, half_period, resolution_crossing,
                             tomography_mask)
from ptytomo.reconstruct import ReconstructOptions
from ptytomo.resolution import (estimate_resolution, fsc_record, half_options, registration_shift, resolution_line,
                                shifted, split_data)
from ptytomo.simulate import SimulationConfig, simulate

BAND_LIMIT = 0.2  # cycles per voxel: a half-period of 2.5 voxels
N = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the 2 shared cores are oversubscribed otherwise (measured 8.7 s against 64 s for the
    reconstructions of the doses under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def radial_frequency(shape) -> np.ndarray:
    f = [np.fft.fftfreq(n) for n in shape]
    return np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)


def low_passed(volume: np.ndarray, cutoff: float, roll_off: float = 0.0) -> np.ndarray:
    """``volume`` with nothing above ``cutoff``; with ``roll_off`` (a fraction of it) a raised cosine from
    ``(1 - roll_off) cutoff`` to ``cutoff`` instead of a sharp edge (shorter ringing in real space)."""
    r = radial_frequency(volume.shape)
    if roll_off:
        window = 0.5 - 0.5 * np.cos(np.pi * np.clip((cutoff - r) / (roll_off * cutoff), 0, 1))
    else:
        window = (r <= cutoff).astype(float)
    return np.fft.ifftn(np.fft.fftn(volume) * window).real


# --------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------


def test_fsc_of_identical_volumes_is_one_and_shells_span_zero_to_nyquist():
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((32, 32, 32))
    frequency, fsc, voxels = fourier_shell_correlation(volume, volume)
    np.testing.assert_allclose(fsc, 1.0, atol=1e-12)
    np.testing.assert_allclose(frequency, np.arange(17) / 32)  # width 1/N, 0 to 0.5
    assert voxels[0] == 1  # the zero frequency alone
    # every Fourier voxel inside the last shell's outer edge is counted once (the rfft half stands for both)
    assert voxels.sum() == np.count_nonzero(np.rint(radial_frequency((32, 32, 32)) * 32) <= 16)
    # non-cubic: shells of the smallest edge's width, up to Nyquist; float32 input works the same
    frequency, fsc, _ = fourier_shell_correlation(volume[:20, :, :26].astype(np.float32), volume[:20, :, :26])
    np.testing.assert_allclose(frequency, np.arange(11) / 20)
    np.testing.assert_allclose(fsc, 1.0, atol=1e-5)


def test_fsc_of_independent_noise_stays_within_its_spread():
    rng = np.random.default_rng(1)
    z = []  # the FSC in units of its expected spread 1/sqrt(n), over the shells of 8 pairs
    for _ in range(8):
        a, b = rng.standard_normal((2, 32, 32, 32))
        _, fsc, voxels = fourier_shell_correlation(a, b)
        z.append(fsc[1:] * np.sqrt(voxels[1:]))
    z = np.concatenate(z)
    assert np.abs(z).max() < 4.5
    assert 0.85 < np.std(z) < 1.15  # 128 shells: the spread's own error is about 0.06
    assert abs(np.mean(z)) < 0.3


def test_half_bit_threshold_values():
    np.testing.assert_allclose(half_bit_threshold([1, 100, 10_000, 1e12]),
                               [1.0, 0.39812 / 1.29812, 0.226202 / 1.216202, 0.2071 / 1.2071], rtol=1e-4)
    assert half_bit_threshold(0) == pytest.approx(1.0)  # an empty shell cannot pass it


def test_crossing_is_interpolated_and_the_cases_without_one():
    frequency = np.arange(6) / 10
    threshold = np.full(6, 0.2)
    # between 0.2 (FSC 0.6) and 0.3 (FSC 0.1): 0.6 - 0.2 = 0.4 above, 0.1 below: 0.4 / 0.5 of the step
    assert resolution_crossing(frequency, [1, 0.9, 0.6, 0.1, 0.5, 0.0], threshold) == pytest.approx(0.28)
    # the first shells are not searched: a dip at shell 1 does not count
    assert resolution_crossing(frequency, [1, 0.1, 0.6, 0.1, 0.5, 0.0], threshold) == pytest.approx(0.28)
    assert resolution_crossing(frequency, [1, 0.9, 0.8, 0.7, 0.6, 0.5], threshold) == 0.5  # never: Nyquist
    assert np.isnan(resolution_crossing(frequency, [1, 0.1, 0.1, 0.1, 0.1, 0.1], threshold))  # nothing resolved
    assert resolution_crossing(frequency, [1, 0.9, 0.6, np.nan, 0.5, 0.0], threshold) == pytest.approx(0.2)
    assert half_period(0.5) == 1.0 and half_period(0.2) == pytest.approx(2.5) and np.isnan(half_period(np.nan))


def test_band_limited_volume_with_noise_crosses_at_its_band_limit():
    """White noise low-passed at f_c = 0.2 cycles/voxel, and two copies with independent noise: the FSC is
    SNR / (1 + SNR) below f_c and 0 above, so it crosses the threshold within one shell (1/64) of f_c."""
    rng = np.random.default_rng(2)
    signal = low_passed(rng.standard_normal((64, 64, 64)), BAND_LIMIT)
    signal /= signal.std()
    for noise in (0.3, 1.0):  # SNR 11 and 1 below the band limit
        a = signal + noise * rng.standard_normal(signal.shape)
        b = signal + noise * rng.standard_normal(signal.shape)
        frequency, fsc, voxels = fourier_shell_correlation(a, b)
        crossing = resolution_crossing(frequency, fsc, half_bit_threshold(voxels))
        assert crossing == pytest.approx(BAND_LIMIT, rel=0.1), noise


def test_mask_removes_the_correlation_of_mismatched_faces():
    """A sample whose density grows along z meets its periodic image in the FFT with a step that both halves
    share: unmasked, the FSC crosses far beyond the signal's frequencies; the soft cylinder brings it back."""
    rng = np.random.default_rng(3)
    n = 48
    smooth = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n, n, n)))
                          * np.exp(-2 * np.pi**2 * 9 * radial_frequency((n, n, n)) ** 2)).real  # Gaussian, 3 voxels
    smooth /= smooth.std()
    crossings = {}
    for name, signal in (("periodic", smooth), ("faces", smooth + 3 * np.arange(n)[:, None, None] / n)):
        a, b = (signal + 0.5 * rng.standard_normal(signal.shape) for _ in range(2))
        for mask in (None, tomography_mask(signal.shape)):
            frequency, fsc, voxels = fourier_shell_correlation(a, b, mask=mask)
            crossings[name, mask is not None] = resolution_crossing(frequency, fsc, half_bit_threshold(voxels))
    assert crossings["faces", False] > 1.8 * crossings["periodic", False]  # measured 0.369 against 0.165
    assert crossings["faces", True] < 1.5 * crossings["periodic", False]  # measured 0.238
    mask = tomography_mask((10, 12, 12))
    assert mask.max() == pytest.approx(1.0) and mask.min() >= 0 and mask[:, 0, 0].max() == 0  # corners out


def test_fsc_refuses_what_it_cannot_compare():
    with pytest.raises(PtytomoError, match="shapes"):
        fourier_shell_correlation(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(PtytomoError, match="complex"):
        fourier_shell_correlation(np.zeros((4, 4, 4), complex), np.zeros((4, 4, 4), complex))
    _, fsc, _ = fourier_shell_correlation(np.zeros((8, 8, 8)), np.ones((8, 8, 8)))
    assert np.all(fsc == 0)  # no power in a shell: no correlation


def test_registration_recovers_a_known_shift():
    rng = np.random.default_rng(4)
    volume = low_passed(rng.standard_normal((N, N, N)), BAND_LIMIT) + 1j * low_passed(rng.standard_normal((N, N, N)),
                                                                                      BAND_LIMIT)
    moved = shifted(volume, [0.3, -1.6, 2.25])
    found = registration_shift(volume.real, moved.real)
    np.testing.assert_allclose(found, [-0.3, 1.6, -2.25], atol=0.1)
    back = shifted(moved, found)
    assert np.abs(back - volume).max() < 0.1 * np.abs(volume).max()
    np.testing.assert_array_equal(registration_shift(volume.real, np.zeros_like(volume.real)), 0.0)


# --------------------------------------------------------------------------
# The splits
# --------------------------------------------------------------------------


def test_split_by_angles_keeps_each_angles_fields(tiny_config):
    data = simulate(tiny_config(n_angles=5, position_errors=0.5, runout=0.5, angle_intensity_jitter=0.1),
                    progress=False)
    first, second = split_data(data, "angles")
    for half, rows in ((first, [0, 2, 4]), (second, [1, 3])):
        np.testing.assert_array_equal(half.angles, data.angles[rows])
        np.testing.assert_array_equal(half.intensities, data.intensities[rows])
        np.testing.assert_array_equal(half.positions, data.positions[rows])
        np.testing.assert_array_equal(half.truth_positions, data.truth_positions[rows])
        np.testing.assert_array_equal(half.truth_angle_shifts, data.truth_angle_shifts[rows])
        np.testing.assert_array_equal(half.truth_angle_scale, data.truth_angle_scale[rows])
        assert half.probe is data.probe and half.truth is data.truth and half.geometry == data.geometry
    with pytest.raises(PtytomoError, match="at least 4 angles"):
        split_data(data.angle_subset(slice(0, 3)), "angles")
    with pytest.raises(PtytomoError, match="--split 'angle'"):
        split_data(data, "angle")


def test_split_by_frames_takes_every_other_valid_frame_of_every_angle(tiny_config):
    data = simulate(tiny_config(n_angles=3, scan="fermat"), progress=False)  # padded: valid flags differ by angle
    valid = data.valid_or_all()
    assert not valid.all()
    first, second = split_data(data, "frames")
    assert first.n_angles == second.n_angles == data.n_angles
    assert first.intensities is data.intensities  # the frames are shared, not copied
    np.testing.assert_array_equal(first.valid | second.valid, valid)
    assert not np.any(first.valid & second.valid)
    np.testing.assert_array_equal(first.valid.sum(axis=1) - second.valid.sum(axis=1), valid.sum(axis=1) % 2)
    for a in range(data.n_angles):  # alternate along the scan order
        np.testing.assert_array_equal(np.flatnonzero(first.valid[a]), np.flatnonzero(valid[a])[0::2])


def test_split_of_streamed_data_reads_the_same_frames(tiny_config, tmp_path):
    data = simulate(tiny_config(n_angles=7, scan="fermat"), progress=False)
    path = tmp_path / "seven.h5"
    write_data(path, data)
    streamed = read_data(path, stream=True)
    for split in ("angles", "frames"):
        for held, left in zip(split_data(read_data(path), split), split_data(streamed, split)):
            assert left.intensities.shape == held.intensities.shape
            np.testing.assert_array_equal(left.intensities[0:len(left.intensities)],
                                          np.where(held.valid[..., None, None], held.intensities, 0))
            np.testing.assert_array_equal(left.intensities[1:3],
                                          np.where(held.valid[1:3, :, None, None], held.intensities[1:3], 0))


# --------------------------------------------------------------------------
# End to end: a phantom band-limited at 0.2 cycles per voxel
# --------------------------------------------------------------------------

PHOTONS = (1e6, 3e2)
# Small and quick: a known probe at known positions, a light TV prior and no positivity (which would add
# structure of its own beyond the band limit), float64; 36 angles over 360 degrees, 18 a half.
OPTIONS = dict(iterations=30, refine="none", tv="fixed", tv_delta=1e-4, tv_beta=1e-4, nonnegative=False,
               precision="float64", device="cpu", tolerance=0)


FINER_BAND_LIMIT = 0.3  # cycles per voxel: a half-period of 1.67 voxels


def band_limited_phantom(path, band_limit: float):
    """delta and beta: independent white noise band-limited at ``band_limit`` (a raised cosine from 0.8 of it),
    inside a soft ball of a fifth of the box (and band-limited again), in a 24^3 box: a .npy file."""
    rng = np.random.default_rng(5)
    centred = np.arange(N) - (N - 1) / 2
    radius = np.sqrt(centred[:, None, None] ** 2 + centred[None, :, None] ** 2 + centred[None, None, :] ** 2)
    support = np.exp(-0.5 * (np.maximum(radius - 0.2 * N, 0) / (0.06 * N)) ** 2)
    parts = []
    for _ in range(2):
        part = low_passed(low_passed(rng.standard_normal((N, N, N)), band_limit, 0.2) * support, band_limit, 0.2)
        parts.append(part / part.std())
    np.save(path, (1e-5 * parts[0] + 1e-6j * parts[1]).astype(np.complex128))
    return path


@pytest.fixture(scope="module")
def estimates(tmp_path_factory):
    """estimate_resolution (split by angles) of the phantom band-limited at BAND_LIMIT at each dose of
    PHOTONS (Poisson noise), keyed by the dose, and of one band-limited at FINER_BAND_LIMIT at the higher
    dose, keyed by that band limit."""
    folder = tmp_path_factory.mktemp("phantom")
    found = {}
    runs = [(BAND_LIMIT, photons, photons) for photons in PHOTONS] + [(FINER_BAND_LIMIT, PHOTONS[0], FINER_BAND_LIMIT)]
    for band_limit, photons, key in runs:
        phantom = band_limited_phantom(folder / f"band_limited_{band_limit}.npy", band_limit)
        config = SimulationConfig(phantom=str(phantom), size=N, n_angles=36, detector_size=15,
                                  probe_diameter=7.0, step=3, photons=photons, noise="poisson", device="cpu",
                                  precision="float64")
        data = simulate(config, progress=False)
        logging.disable(logging.WARNING)  # the low dose's misfit and beta warnings, once per half
        try:
            found[key] = estimate_resolution(data, ReconstructOptions(**OPTIONS), "angles", progress=False)
        finally:
            logging.disable(logging.NOTSET)
    return found


def test_resolution_of_a_band_limited_phantom(estimates):
    """Above the band limit the halves share nothing, below it they agree (high dose): the estimate is the band
    limit's half-period, 2.5 voxels (25 nm), within 15 % (the shells are 1/24 wide, 21 % of f_c; measured
    2.51 and 2.55 voxels for delta and beta)."""
    recon = estimates[PHOTONS[0]]
    p = recon.parameters
    expected = half_period(BAND_LIMIT)
    for name in ("delta", "beta"):
        assert p[f"resolution_{name}_voxels"] == pytest.approx(expected, rel=0.15), name
        assert p[f"resolution_{name}_nm"] == pytest.approx(p[f"resolution_{name}_voxels"] * 10.0)  # 10 nm voxels
        assert recon.resolution[f"crossing_{name}_found"] == "threshold"
    assert p["resolution_split"] == "angles" and p["resolution_half_angles"] == [18, 18]
    assert p["resolution_registration_voxels"] == [0.0, 0.0, 0.0]  # nothing refined: nothing to register
    assert p["refine"] == "none" and p["iterations"] == 30  # the options travel with the result
    assert recon.resolution["frequency"].shape == (N // 2 + 1,)
    history = recon.history
    assert np.all(np.diff(history["iteration"]) > 0) and set(history["half"]) == {0.0, 1.0}
    assert len(history["iteration"]) == 60  # 30 iterations a half, one after the other


def test_more_photons_give_a_finer_resolution(estimates):
    """300 photons a frame against 1e6: the noise reaches above the threshold below the band limit (measured
    2.51 -> 3.89 voxels for delta, 2.55 -> 4.71 for the 10x weaker beta)."""
    high, low = (estimates[photons].parameters for photons in PHOTONS)
    for name in ("delta", "beta"):
        assert low[f"resolution_{name}_voxels"] > 1.3 * high[f"resolution_{name}_voxels"], name


def test_a_finer_band_limit_gives_a_finer_resolution(estimates):
    """The same phantom band-limited at 0.3 cycles per voxel instead of 0.2: the estimate follows the band
    limit down, to its half-period of 1.67 voxels within 20 %."""
    coarse, fine = estimates[PHOTONS[0]].parameters, estimates[FINER_BAND_LIMIT].parameters
    for name in ("delta", "beta"):
        assert fine[f"resolution_{name}_voxels"] < 0.8 * coarse[f"resolution_{name}_voxels"], name
        assert fine[f"resolution_{name}_voxels"] == pytest.approx(half_period(FINER_BAND_LIMIT), rel=0.2), name


def test_each_half_has_its_own_checkpoint_and_resumes_from_it_where_it_exists(tmp_path):
    options = ReconstructOptions(checkpoint=str(tmp_path / "run.pt"), resume=str(tmp_path / "run.pt"))
    (tmp_path / "run.half_a.pt").write_bytes(b"")  # the first half was checkpointed, the second not yet
    first, second = half_options(options, "a"), half_options(options, "b")
    assert first.checkpoint == first.resume == str(tmp_path / "run.half_a.pt")
    assert second.checkpoint == str(tmp_path / "run.half_b.pt") and second.resume == ""
    assert half_options(ReconstructOptions(), "b").checkpoint == ""


def test_resolution_lines_say_when_there_is_no_crossing():
    record = {"resolution_delta_nm": 24.8, "resolution_delta_voxels": 2.48, "crossing_delta_found": "threshold"}
    assert resolution_line(record, "delta") == "delta 24.8 nm (2.48 voxels)"
    record.update(resolution_delta_nm=10.0, resolution_delta_voxels=1.0, crossing_delta_found="nyquist")
    assert resolution_line(record, "delta").startswith("delta <= 10 nm (1 voxel: above the threshold up to Nyquist")
    record.update(resolution_delta_nm=np.nan, resolution_delta_voxels=np.nan, crossing_delta_found="unresolved")
    assert resolution_line(record, "delta").startswith("delta not resolved")


# --------------------------------------------------------------------------
# The file and the command line
# --------------------------------------------------------------------------


def small_reconstruction(rng) -> Reconstruction:
    first, second = (rng.standard_normal((8, 8, 8)) + 1j * rng.standard_normal((8, 8, 8)) for _ in range(2))
    return Reconstruction(volume=(first + second) / 2, method="joint", parameters={"iterations": 3},
                          history={"iteration": np.arange(3.0), "cost": np.ones(3), "time_s": np.ones(3)},
                          geometry=Geometry(5.0, 1e-8, (8, 8, 8)),
                          resolution=fsc_record(first, second, 1e-8))


def test_resolution_group_round_trips_and_bad_curves_name_the_field(tmp_path):
    recon = small_reconstruction(np.random.default_rng(6))
    path = tmp_path / "r.h5"
    write_reconstruction(path, recon)
    back = read_reconstruction(path).resolution
    for name in ("frequency", "fsc_delta", "fsc_beta", "threshold", "voxels_per_shell"):
        np.testing.assert_array_equal(back[name], recon.resolution[name])
    for name in ("crossing_delta", "resolution_beta_nm", "crossing_beta_found", "threshold_kind"):
        assert back[name] == recon.resolution[name] or (np.isnan(back[name]) and np.isnan(recon.resolution[name]))
    with h5py.File(path, "r") as f:
        assert f[RESOLUTION].attrs["convention"] == "half-period"
    recon.resolution.pop("fsc_beta")
    with pytest.raises(PtytomoError, match="missing dataset /resolution/fsc_beta"):
        write_reconstruction(tmp_path / "bad.h5", recon)
    recon.resolution["fsc_beta"] = np.zeros(3)
    with pytest.raises(PtytomoError, match="/resolution/fsc_beta has length 3, expected S = 5"):
        write_reconstruction(tmp_path / "bad.h5", recon)
    recon.resolution["fsc_beta"] = recon.resolution["fsc_delta"]
    recon.resolution["frequency"] = recon.resolution["frequency"][::-1].copy()
    with pytest.raises(PtytomoError, match="/resolution/frequency must rise"):
        write_reconstruction(tmp_path / "bad.h5", recon)
    assert not (tmp_path / "bad.h5").exists()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_resolution_writes_the_file_and_draws_fsc_png(tmp_path, capsys):
    data = tmp_path / "d.h5"
    code, _, err = run(capsys, "simulate", data, "--size", "16", "--angles", "8", "--detector", "15",
                       "--probe-diameter", "7", "--step", "3", "--precision", "float64", "--device", "cpu", "--quiet")
    assert code == 0, err
    out_path = tmp_path / "r.h5"
    code, out, err = run(capsys, "resolution", data, "-o", out_path, "--iterations", "8", "--refine", "none",
                         "--tv", "fixed", "--tv-delta", "1e-3", "--tv-beta", "1e-3", "--precision", "float64",
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    recon = read_reconstruction(out_path)
    p = recon.parameters
    assert p["resolution_split"] == "angles" and p["iterations"] == 8 and p["refine"] is None  # "none" reads as None
    assert recon.resolution["fsc_delta"].shape == recon.resolution["frequency"].shape == (9,)
    for name in ("delta", "beta"):
        nm, voxels = p[f"resolution_{name}_nm"], p[f"resolution_{name}_voxels"]
        assert 1.0 <= voxels < 8 and nm == pytest.approx(voxels * 10.0)
        assert f"{name} {nm:.3g} nm ({voxels:.3g} voxels)" in out
    assert "half-period" in out and "4 + 4 angles" in out
    figure = tmp_path / "r_report" / "fsc.png"
    assert f"wrote {figure}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure.unlink()
    code, out, err = run(capsys, "report", out_path)  # the report draws it too, from the file's curves
    assert code == 0, err
    assert figure.is_file() and "fsc.png" in out


@pytest.mark.parametrize("argv, words", [
    (["--split", "angle"], ["--split 'angle'", "angles, frames"]),
    (["--fsc-mask", "sphere"], ["--fsc-mask 'sphere'", "none, cylinder"]),
    (["--method", "ptycho"], ["--method ptycho reconstructs none"]),
    (["--resume", "missing.pt"], ["--resume missing.pt", "missing.half_a.pt"]),
])
def test_cli_bad_options_are_one_line(tiny_data_file, tmp_path, capsys, argv, words):
    code, out, err = run(capsys, "resolution", tiny_data_file, "-o", tmp_path / "r.h5", *argv, "--quiet")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptytomo resolution: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "r.h5").exists()
