"""Angle-parallel runs (torchrun, gloo on CPU) against one process, and streamed frames against memory.

Every multi-rank test starts ``python -m torch.distributed.run --standalone``
(a free port) on a 8^3 problem with 5 angles, so 2 and 3 ranks get uneven
shares; each launch costs a few seconds of interpreter start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.cli import main
from ptytomo.distributed import Comm, partition, reduce_bytes
from ptytomo.resources import host_memory_available, should_stream
from ptytomo.errors import PtytomoError
from ptytomo.io import LazyIntensities, read_data, read_reconstruction, write_data
from ptytomo.reconstruct import ReconstructOptions, build_objective, reconstruct
from ptytomo.stream import measured_amplitudes
from ptytomo.stream import AmplitudeStream

RUN = ["--device", "cpu", "--precision", "float64", "--quiet", "--rank-timeout", "60"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """8^3 ellipsoids, 5 angles, Poisson noise, NaN padding entries and a dead pixel."""
    config = SimulationConfig(size=8, n_angles=5, step=3, detector_size=9, probe_diameter=5, noise="poisson",
                              photons=1e4, phantom="ellipsoids", ellipsoids=3, device="cpu")
    data = simulate(config, progress=False)
    data.valid = np.ones(data.positions.shape[:2], dtype=bool)
    data.valid[1, ::4] = False
    data.intensities[1, ::4] = np.nan
    data.mask = np.ones((9, 9), dtype=bool)
    data.mask[0, 3] = False
    path = tmp_path_factory.mktemp("dist") / "data.h5"
    write_data(path, data)
    return path


def torchrun(ranks: int, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "ptytomo", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_partition_is_contiguous_balanced_and_complete():
    for n in range(1, 12):
        for size in range(1, n + 1):
            shares = [partition(n, size, rank) for rank in range(size)]
            assert shares[0].start == 0 and shares[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def test_one_rank_comm_is_the_identity_and_traffic_is_a_ring_all_reduce():
    t = torch.randn(3, 4, dtype=torch.complex64)
    comm = Comm()
    assert comm.sum(t) is t and comm.total(5) == 5 and comm.gather(np.arange(3)).tolist() == [0, 1, 2]
    # 2 (N-1)/N of the bytes, rounded up to whole segments
    assert reduce_bytes(8 * 2**20, 4, 8) == 2 * 7 / 8 * 8 * 2**20 * 4
    assert reduce_bytes(10, 8, 3) == 2 * 2 * 4 * 8


def test_stream_auto_streams_what_would_fill_the_memory():
    cpu = torch.device("cpu")
    assert should_stream("auto", host_memory_available(), cpu) and not should_stream("auto", 2**20, cpu)
    assert should_stream("on", 1, cpu) and not should_stream("off", 2**60, cpu)


def test_read_data_reads_only_the_share(data_file, tmp_path):
    whole = read_data(data_file)
    part = read_data(data_file, angles=slice(1, 3))
    for name in ("intensities", "positions", "angles", "valid"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[1:3])
    np.testing.assert_array_equal(part.truth, whole.truth)
    lazy = read_data(data_file, angles=slice(2, 5), stream=True)
    assert isinstance(lazy.intensities, LazyIntensities) and lazy.n_angles == 3
    np.testing.assert_array_equal(lazy.intensities[1:3], whole.intensities[3:5])

    bad = tmp_path / "bad.h5"
    write_data(bad, whole)
    with h5py.File(bad, "r+") as f:
        f["/measurement/intensities"][4, 2, 3, 3] = np.nan
    read_data(bad, angles=slice(0, 4))  # the bad frame is not in this share
    with pytest.raises(PtytomoError, match=r"angles 3\.\.4, indices counted from 3.*first at index \(1, 2, 3, 3\)"):
        read_data(bad, angles=slice(3, 5))
    with pytest.raises(PtytomoError, match="contiguous"):
        read_data(data_file, angles=slice(0, 5, 2))


def test_streamed_reconstruction_equals_in_memory(data_file):
    options = ReconstructOptions(refine="none", iterations=3, device="cpu", angle_batch=2)  # 3 batches: reads wrap around
    in_memory = reconstruct(read_data(data_file), options, progress=False)
    streamed = reconstruct(read_data(data_file, stream=True), options, progress=False)
    assert streamed.parameters["streamed"] and not in_memory.parameters["streamed"]
    np.testing.assert_array_equal(streamed.history["cost"], in_memory.history["cost"])
    np.testing.assert_array_equal(streamed.volume, in_memory.volume)


def test_stream_reads_ahead_in_any_order(data_file):
    options = ReconstructOptions(refine="none", device="cpu", angle_batch=2)
    reference = build_objective(read_data(data_file), options).amplitudes
    objective = build_objective(read_data(data_file, stream=True), options)
    stream = objective.amplitudes
    assert isinstance(stream, AmplitudeStream)
    for batch in objective.model.batches + objective.model.batches[::-1] + [slice(1, 4)]:
        assert torch.equal(stream[batch], reference[batch])
    stream.close()
    raw = measured_amplitudes(read_data(data_file))
    assert torch.equal(reference, torch.from_numpy(raw) / objective.probe_max)


@pytest.fixture(scope="module")
def one_rank(data_file, tmp_path_factory):
    """The ordinary one-process runs: 4 iterations, and 8 for the resumed comparison."""
    folder = tmp_path_factory.mktemp("one")
    for iterations in (4, 8):
        assert main(["reconstruct", str(data_file), "-o", str(folder / f"{iterations}.h5"),
                     "--iterations", str(iterations), *RUN]) == 0
    return {n: read_reconstruction(folder / f"{n}.h5") for n in (4, 8)}


def assert_same_run(recon, reference):
    np.testing.assert_allclose(recon.history["cost"], reference.history["cost"], rtol=1e-12)
    scale = np.abs(reference.volume).max()
    np.testing.assert_allclose(recon.volume, reference.volume, rtol=0, atol=1e-6 * scale)  # complex64 file


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_the_one_rank_result_and_checkpoints_resume_on_one(ranks, data_file, one_rank, tmp_path):
    out, checkpoint = tmp_path / "recon.h5", tmp_path / "run.ckpt"
    done = torchrun(ranks, "reconstruct", data_file, "-o", out, "--iterations", 4, "--checkpoint", checkpoint, *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone writes and reports
    recon = read_reconstruction(out)
    assert recon.parameters["ranks"] == ranks and recon.parameters["sent_bytes_per_rank"] > 0
    assert_same_run(recon, one_rank[4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon.h5", "run.ckpt"]  # no temporary files left

    resumed = tmp_path / "resumed.h5"
    assert main(["reconstruct", str(data_file), "-o", str(resumed), "--iterations", "8",
                 "--resume", str(checkpoint), *RUN]) == 0
    assert_same_run(read_reconstruction(resumed), one_rank[8])


@pytest.mark.parametrize("method", ["sequential", "admm"])
def test_baselines_split_over_ranks_give_the_one_rank_result(method, data_file, tmp_path):
    """Per-angle ptychography is split like the joint gradient; the tomography sums over ranks."""
    options = ["--method", method, "--ptycho-iterations", "5", "--tomo-iterations", "2", *RUN]
    for iterations in (3, 5):
        assert main(["reconstruct", str(data_file), "-o", str(tmp_path / f"one{iterations}.h5"),
                     "--iterations", str(iterations), *options]) == 0
    checkpoint = tmp_path / "two.ckpt"
    done = torchrun(2, "reconstruct", data_file, "-o", tmp_path / "two.h5", "--iterations", 3,
                    "--checkpoint", checkpoint, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    recon = read_reconstruction(tmp_path / "two.h5")
    assert recon.method == method and recon.parameters["ranks"] == 2
    assert_same_run(recon, read_reconstruction(tmp_path / "one3.h5"))
    # The per-angle state (projections; psi, h, lambda) of both ranks is in the checkpoint.
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "resumed.h5"), "--iterations", "5",
                 "--resume", str(checkpoint), *options]) == 0
    assert_same_run(read_reconstruction(tmp_path / "resumed.h5"), read_reconstruction(tmp_path / "one5.h5"))


def test_a_rank_failing_mid_run_ends_the_job_with_its_message(data_file, tmp_path):
    bad = tmp_path / "bad.h5"
    write_data(bad, read_data(data_file))
    with h5py.File(bad, "r+") as f:
        f["/measurement/intensities"][4, 2, 3, 3] = np.nan  # in rank 1's share only
    started = time.perf_counter()
    # Streamed, rank 1 meets the bad frame in its own time while rank 0 waits in a collective.
    done = torchrun(2, "reconstruct", bad, "-o", tmp_path / "out.h5", "--stream", "on", *RUN)
    assert time.perf_counter() - started < 60
    assert done.returncode != 0 and not (tmp_path / "out.h5").exists()
    lines = [line for line in done.stderr.splitlines() if line.startswith("ptytomo reconstruct: rank 1")]
    assert len(lines) == 1 and "/measurement/intensities" in lines[0] and "non-finite" in lines[0]
    assert "Traceback" not in done.stderr.split("ptytomo reconstruct: rank 1")[0]  # no worker traceback before it


def test_an_error_of_every_rank_is_reported_once(tmp_path):
    done = torchrun(2, "reconstruct", tmp_path / "missing.h5", "-o", tmp_path / "out.h5", *RUN)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("ptytomo reconstruct:")]
    assert lines == [f"ptytomo reconstruct: rank 0: error: {tmp_path / 'missing.h5'}: file not found "
                     "(and on 1 more rank(s))"]


def test_the_probe_search_starts_every_number_of_ranks_alike(data_file, tmp_path):
    """--probe-init auto's search (a file probe whose far field contradicts the frames: a flat disc twice the
    beam's size) runs on the same angles, gathered to every rank, so 2 ranks start from the one-rank probe
    and a checkpoint resumes on another number of ranks with the same normalisation."""
    from ptytomo.scan import disc_probe

    data = read_data(data_file)
    data.probe = disc_probe(9, 9.0).astype(np.complex64) * np.sqrt(np.abs(data.probe) ** 2).sum() / np.sqrt(49)
    nominal = tmp_path / "nominal.h5"
    write_data(nominal, data)
    options = ["--method", "ptycho", "--iterations", "4", *RUN]
    assert main(["reconstruct", str(nominal), "-o", str(tmp_path / "one.h5"), *options]) == 0
    done = torchrun(2, "reconstruct", nominal, "-o", tmp_path / "two.h5", *options)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_reconstruction(tmp_path / "one.h5"), read_reconstruction(tmp_path / "two.h5")
    assert any("fits best" in note for note in one.parameters["probe_notes"])
    assert one.parameters["probe_notes"] == two.parameters["probe_notes"]
    np.testing.assert_allclose(two.probe, one.probe, rtol=1e-9, atol=1e-9 * np.abs(one.probe).max())
