"""Tests of the command line: ``simulate`` and ``info`` in-process, bad inputs, and one real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from ptytomo.cli import main
from ptytomo.io import read_data, write_data

TINY = ["--size", "8", "--angles", "2", "--angle-range", "0", "3.141592653589793", "--detector", "7",
        "--probe-diameter", "5", "--step", "3", "--quiet"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_simulate_then_info(tmp_path, capsys):
    path = tmp_path / "tiny.h5"
    code, out, err = run(capsys, "simulate", path, *TINY)
    assert code == 0, err
    assert path.is_file()
    assert "2 angles" in out and "7x7 px" in out and "(8, 8, 8)" in out
    data = read_data(path)
    assert data.intensities.shape[:1] == (2,) and data.intensities.shape[2:] == (7, 7)
    np.testing.assert_allclose(data.angles, [0, np.pi / 2])
    assert data.geometry.volume_shape == (8, 8, 8)
    assert data.truth is not None and np.abs(data.truth).max() > 0
    # noise-free by default: the empty-space photon count is the default 1e6
    assert np.sum(np.abs(data.probe) ** 2) == pytest.approx(1e6, rel=1e-5)

    code, out, err = run(capsys, "info", path)
    assert code == 0, err
    assert err == ""
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "valid ptytomo data file" in out
    assert "angles" in lines and lines["angles"].split()[1] == "2," and "180.00" not in lines["angles"]
    assert "90.00 deg" in lines["angles"]
    assert "overlap" in lines and "40%" in lines["overlap"]  # 1 - 3/5
    assert "truth" in lines and "present" in lines["truth"]
    assert "positions" in lines and f"{data.intensities.shape[1]} per angle" in lines["positions"]


def test_simulate_noise_and_precision_options(tmp_path, capsys):
    path = tmp_path / "noisy.h5"
    code, _, err = run(capsys, "simulate", path, *TINY, "--noise", "poisson", "--photons", "1e4", "--seed", "3",
                       "--precision", "float64")
    assert code == 0, err
    counts = read_data(path).intensities
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.sum(axis=(2, 3)).mean() == pytest.approx(1e4, rel=0.2)


def test_info_overlap_with_a_probe_file(tmp_path, capsys):
    from ptytomo.scan import disc_probe

    probe_path = tmp_path / "probe7.npy"
    np.save(probe_path, disc_probe(15, 7.0))
    path = tmp_path / "with_probe.h5"
    code, _, err = run(capsys, "simulate", path, "--size", "12", "--angles", "2", "--detector", "15",
                       "--probe-file", probe_path, "--step", "3", "--quiet")
    assert code == 0, err
    code, out, _ = run(capsys, "info", path)
    overlap = next(line for line in out.splitlines() if line.startswith("overlap"))
    # 1 - 3/D with D the 90 %-power width of the 7 px disc actually used (6.5 px = sqrt(0.9) x 6.9 px of a
    # pixelated disc), not the unused default 15
    assert "54%" in overlap


# ---------------------------------------------------------------------------
# Bad inputs: status 2, one line naming the problem, no traceback
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["simulate", "out.h5", "--bogus-option"], ["--bogus-option"]),
        (["simulate", "out.h5", "--noise", "bogus"], ["--noise", "bogus"]),
        (["info"], ["file"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_argparse_errors(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu(tmp_path, capsys):
    code, _, err = run(capsys, "simulate", tmp_path / "x.h5", *TINY, "--device", "cuda")
    assert_one_line_error(code, err, "cuda", "not available")
    assert not (tmp_path / "x.h5").exists()


def test_phantom_file_missing(tmp_path, capsys):
    code, _, err = run(capsys, "simulate", tmp_path / "x.h5", *TINY, "--phantom", tmp_path / "nonexistent.npy")
    assert_one_line_error(code, err, "--phantom", "nonexistent.npy")
    assert not (tmp_path / "x.h5").exists()


def test_info_nonexistent(tmp_path, capsys):
    code, _, err = run(capsys, "info", tmp_path / "missing.h5")
    assert_one_line_error(code, err, "missing.h5", "not found")


def test_info_text_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("these are not diffraction patterns\n")
    code, _, err = run(capsys, "info", path)
    assert_one_line_error(code, err, "notes.txt", "not an HDF5 file")


@pytest.fixture
def good_file(tmp_path, tiny_data):
    path = tmp_path / "good.h5"
    write_data(path, tiny_data)
    return path


def _edit(path, name, value=None):
    with h5py.File(path, "r+") as f:
        del f[name]
        if value is not None:
            f.create_dataset(name, data=value)


def test_info_accepts_the_good_file(good_file, capsys):
    code, out, err = run(capsys, "info", good_file)
    assert code == 0 and err == ""
    assert "3, from 0.00 to 240.00 deg" in out


def test_info_warns_of_a_probe_in_other_units(good_file, capsys, tiny_data):
    """A measured file can carry a probe 9,000x weaker than its frames: info must say so."""
    code, out, _ = run(capsys, "info", good_file)
    assert code == 0 and "warning" not in out  # the simulator's probe and frames agree
    _edit(good_file, "probe", tiny_data.probe / 100.0)  # 1e4x less power
    code, out, _ = run(capsys, "info", good_file)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("warning")]
    assert code == 0 and "rescaled to them by reconstruct" in line and "x)" in line
    ratio = float(line.split("(")[1].split("x)")[0])
    assert 5e3 < ratio < 2e4  # brightest frames against the probe: about 1e4


def test_info_warns_of_a_probe_whose_far_field_contradicts_the_frames(good_file, capsys, tiny_data):
    """A nominal probe (here a disc twice the beam's size, at the right power) is what --probe-init auto
    searches around; info says so before a run."""
    from ptytomo.scan import disc_probe

    m = tiny_data.intensities.shape[-1]
    wide = disc_probe(m, 0.95 * m).astype(np.complex64)
    wide *= np.sqrt((np.abs(tiny_data.probe) ** 2).sum() / (np.abs(wide) ** 2).sum())
    _edit(good_file, "probe", wide)
    code, out, _ = run(capsys, "info", good_file)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("warning")]
    assert code == 0 and "does not look like the mean diffraction pattern" in line and "--probe-init auto" in line


def test_info_nan_intensities(good_file, capsys, tiny_data):
    bad = tiny_data.intensities.copy()
    bad[1, 2, 3, 4] = np.nan
    _edit(good_file, "/measurement/intensities", bad)
    code, _, err = run(capsys, "info", good_file)
    assert_one_line_error(code, err, "/measurement/intensities", "NaN", "(1, 2, 3, 4)")


def test_info_negative_intensities(good_file, capsys, tiny_data):
    bad = tiny_data.intensities.copy()
    bad[0, 1, 2, 3] = -5.0
    _edit(good_file, "/measurement/intensities", bad)
    code, _, err = run(capsys, "info", good_file)
    assert_one_line_error(code, err, "/measurement/intensities", "negative", "(0, 1, 2, 3)")


def test_info_missing_probe(good_file, capsys):
    _edit(good_file, "/probe")
    code, _, err = run(capsys, "info", good_file)
    assert_one_line_error(code, err, "/probe", "missing")


def test_info_wrong_positions_shape(good_file, capsys, tiny_data):
    _edit(good_file, "/measurement/positions", tiny_data.positions[:, :, :1])
    code, _, err = run(capsys, "info", good_file)
    assert_one_line_error(code, err, "/measurement/positions", "shape", "(A, J, 2)")


def test_info_windows_outside_the_volume(good_file, capsys, tiny_data):
    positions = tiny_data.positions.copy()
    positions[2, 4] = (1000.0, 5.0)  # a window far below the 16-row projection
    _edit(good_file, "/measurement/positions", positions)
    code, _, err = run(capsys, "info", good_file)
    assert_one_line_error(code, err, "/measurement/positions", "outside the projection", "angle index 2",
                          "position index 4")


def test_python_dash_m_exit_status(tmp_path):
    """One real process: ``python -m ptytomo`` exits 2 with one stderr line on a user error."""
    missing = tmp_path / "missing.h5"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "ptytomo", "info", str(missing)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ptytomo info: error:")
    assert str(missing) in lines[0] and "not found" in lines[0]
