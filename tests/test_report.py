"""PNG report of a reconstruction: files exist, are real images, and nothing is left behind."""

from __future__ import annotations

import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from ptytomo.errors import PtytomoError
from ptytomo.io import Geometry, PtychoTomoData, Reconstruction, write_data, write_reconstruction
from ptytomo.report import report_from_files, write_report

SHAPE = (8, 10, 12)  # (Nz, Ny, Nx)


def _truth(rng) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    ball = (x**2 + y**2 + z**2 < 0.6).astype(np.float32)
    return (1e-6 * ball + 1j * 1e-8 * ball).astype(np.complex64)


def _recon(truth, rng, **history_overrides) -> Reconstruction:
    volume = truth + (1e-7 * rng.standard_normal(SHAPE) + 1j * 1e-9 * rng.standard_normal(SHAPE))
    k = 6
    history = {
        "iteration": np.arange(1, k + 1, dtype=float),
        "cost": 100.0 * 0.5 ** np.arange(k),
        "time_s": 0.1 * np.arange(1, k + 1),
        "rmse_delta": 1e-6 * 0.7 ** np.arange(k),
        "rmse_beta": 1e-8 * 0.8 ** np.arange(k),
    }
    history.update(history_overrides)
    return Reconstruction(
        volume=volume.astype(np.complex64),
        method="joint",
        parameters={"iterations": k, "step": 0.5},
        history=history,
        geometry=Geometry(energy_kev=8.0, voxel_size_m=1e-8, volume_shape=SHAPE),
    )


def _assert_png(path) -> None:
    assert path.is_file()
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0  # not blank


def _assert_only(out_dir, names) -> None:
    """Exactly these files, no temporary leftovers."""
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)


@pytest.fixture
def truth(rng):
    return _truth(rng)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One report with truth (into a folder that does not exist yet) and one without."""
    rng = np.random.default_rng(7)
    truth = _truth(rng)
    recon = _recon(truth, rng)
    base = tmp_path_factory.mktemp("reports")
    return {
        "truth": (base / "nested" / "with", write_report(recon, base / "nested" / "with", truth=truth, title="ball")),
        "plain": (base / "plain", write_report(recon, base / "plain")),
    }


@pytest.mark.parametrize("kind", ["truth", "plain"])
def test_write_report_writes_two_pngs(reports, kind):
    out, paths = reports[kind]
    assert [p.name for p in paths] == ["slices.png", "convergence.png"]
    for path in paths:
        assert path.parent == out
        _assert_png(path)
    _assert_only(out, ["slices.png", "convergence.png"])


def test_slices_figure_has_truth_rows(reports):
    """With truth, the slice figure holds twice the rows (recon and truth of delta and beta)."""
    with_truth = mpimg.imread(reports["truth"][1][0])
    without = mpimg.imread(reports["plain"][1][0])
    assert with_truth.shape[0] > 1.6 * without.shape[0]


def test_no_pyplot_figures_left_open(reports):
    """The report draws on Figure objects only: no pyplot figure stays open."""
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_degenerate_inputs_still_draw(tmp_path, rng, truth):
    """A diverged run (NaN/inf, non-positive cost), a pure-phase truth, a one-row history."""
    recon = _recon(
        truth,
        rng,
        cost=np.array([1.0, np.nan, np.inf, 0.0, -1.0, 2.0]),
        rmse_delta=np.full(6, np.nan),
    )
    recon.volume[0, 0, 0] = np.nan
    phase_only = truth.real.astype(np.complex64)  # beta truth all zero: absolute beta rmse
    for path in write_report(recon, tmp_path / "diverged", truth=phase_only):
        _assert_png(path)

    flat = Reconstruction(
        volume=np.zeros(SHAPE, np.complex64),
        method="joint",
        parameters={},
        history={"iteration": np.array([0.0]), "cost": np.array([0.0]), "time_s": np.array([0.0])},
        geometry=Geometry(8.0, 1e-8, SHAPE),
    )
    for path in write_report(flat, tmp_path / "flat"):
        assert path.is_file() and mpimg.imread(path).shape[0] > 100


def test_truth_shape_mismatch_is_an_error(tmp_path, rng, truth):
    with pytest.raises(PtytomoError, match="shape"):
        write_report(_recon(truth, rng), tmp_path / "bad", truth=truth[:-1])
    assert not (tmp_path / "bad").exists()


def test_report_from_files_round_trip(tmp_path, rng, truth):
    recon_path = tmp_path / "run1.h5"
    write_reconstruction(recon_path, _recon(truth, rng))
    m = 5
    data = PtychoTomoData(
        intensities=np.zeros((2, 3, m, m), np.float32),
        positions=np.array([[[0, 0], [2, 4], [3, 8]]] * 2, dtype=np.float64),  # inside (Nz, Nx) = (8, 12)
        angles=np.array([0.0, np.pi / 2]),
        probe=np.ones((m, m), np.complex64),
        geometry=Geometry(8.0, 1e-8, SHAPE),
        truth=truth,
    )
    data_path = tmp_path / "data.h5"
    write_data(data_path, data)

    paths = report_from_files(recon_path, data_path)
    out = tmp_path / "run1_report"
    assert [p.parent for p in paths] == [out, out]
    for path in paths:
        _assert_png(path)
    _assert_only(out, ["slices.png", "convergence.png"])

    # Data without truth, explicit out_dir holding a stale file: replaced by a
    # report with absolute RMSE, and still no temporary files.
    data.truth = None
    write_data(data_path, data)
    (out / "slices.png").write_bytes(b"stale")
    assert report_from_files(recon_path, data_path, out_dir=out) == paths
    for path in paths:
        _assert_png(path)
    _assert_only(out, ["slices.png", "convergence.png"])

    # Truth of another shape: a one-line PtytomoError naming the file.
    data.truth = np.zeros((4, 4, 4), np.complex64)
    data.geometry = Geometry(8.0, 1e-8, (4, 4, 4))
    data.positions = np.zeros((2, 3, 2))
    write_data(data_path, data)
    with pytest.raises(PtytomoError, match="data.h5"):
        report_from_files(recon_path, data_path, out_dir=tmp_path / "mismatch")


def test_relative_rmse_matches_metrics(rng, truth):
    """The numbers in the slice titles are FORMAT.md's relative RMSE (ptytomo.metrics)."""
    from ptytomo.metrics import volume_errors
    from ptytomo.report import _error_labels, _truth_norms

    volume = _recon(truth, rng).volume
    labels = _error_labels(volume, truth, _truth_norms(truth))
    expected = volume_errors(volume, truth)
    for name in ("delta", "beta"):
        assert labels[name] == f"relative RMSE {expected['relative_rmse_' + name]:.3g}"
    zero_beta = truth.real.astype(np.complex64)
    assert _error_labels(volume, zero_beta, _truth_norms(zero_beta))["beta"].endswith("(truth is zero)")
