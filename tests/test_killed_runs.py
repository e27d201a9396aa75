"""Runs killed with SIGKILL (at random moments, and in the middle of a checkpoint write) resume to the
uninterrupted result; foreign, truncated and mismatched checkpoints are refused in one line; Ctrl-C under
torchrun stops every rank at the same iteration.

Each subprocess costs ~3 s of interpreter start-up on a 2-core machine, so one
sequence of runs is killed several times in a row instead of one run per kill.
``PTYTOMO_TEST_CHECKPOINT_PAUSE_S`` makes every checkpoint write pause half-way
through its temporary file, which stretches the loop and gives the kills a
half-written file to hit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ptytomo.cli import main
from ptytomo.io import read_reconstruction, write_data
from ptytomo.simulate import SimulationConfig, simulate
from ptytomo.solvers import load_checkpoint

ITERATIONS = 10
RUN = ["--precision", "float64", "--device", "cpu", "--tolerance", "0", "--quiet", "--checkpoint-every", "1"]
ONCE = RUN[:-2]  # without --checkpoint-every, for runs that write no checkpoint
PAUSE_S = 0.05  # per checkpoint write, in the killed runs only
# the run whose kill must land mid-write pauses longer: on a loaded CI machine a 50 ms window can close
# between seeing the temporary file and the SIGKILL arriving
MID_WRITE_PAUSE_S = 1.0


def tiny_config(**overrides) -> SimulationConfig:
    settings = dict(size=8, n_angles=4, detector_size=15, probe_diameter=7, step=4, device="cpu", precision="float64")
    return SimulationConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("killed") / "tiny.h5"
    write_data(path, simulate(tiny_config(), progress=False))
    return path


@pytest.fixture(scope="module")
def uninterrupted(data_file, tmp_path_factory):
    """(volume of the output file, float64 u of the final checkpoint) of a run nobody stopped."""
    folder = tmp_path_factory.mktemp("whole")
    assert main(["reconstruct", str(data_file), "-o", str(folder / "out.h5"), "--iterations", str(ITERATIONS),
                 "--checkpoint", str(folder / "ck.pt"), *RUN]) == 0
    return read_reconstruction(folder / "out.h5").volume, load_checkpoint(folder / "ck.pt")["u"]


def start_run(data_file, folder: Path, resume: bool, pause: float = PAUSE_S) -> subprocess.Popen:
    command = [sys.executable, "-m", "ptytomo", "reconstruct", str(data_file), "-o", str(folder / "out.h5"),
               "--iterations", str(ITERATIONS), "--checkpoint", str(folder / "ck.pt"), *RUN]
    if resume:
        command += ["--resume", str(folder / "ck.pt")]
    env = {**os.environ, "PTYTOMO_TEST_CHECKPOINT_PAUSE_S": str(pause)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint_write(process: subprocess.Popen, folder: Path, timeout: float = 60.0) -> bool:
    """Wait until ``process`` is writing a checkpoint that replaces one (its temporary file and the
    checkpoint both exist); False if it ended first."""
    temporary = folder / f".ck.pt.tmp{process.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if temporary.exists() and (folder / "ck.pt").exists():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the run wrote no checkpoint in time")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)


def test_sigkill_at_random_moments_and_mid_write_resumes_to_the_uninterrupted_result(data_file, uninterrupted,
                                                                                     tmp_path):
    volume, u = uninterrupted
    rng = random.Random(13)
    killed_mid_write = False
    # The first kill lands inside a checkpoint write (its temporary file half-written, the
    # process paused), the others at random moments of the loop; then the run completes.
    for kill_number in range(3):
        process = start_run(data_file, tmp_path, resume=(tmp_path / "ck.pt").exists(),
                            pause=MID_WRITE_PAUSE_S if kill_number == 0 else PAUSE_S)
        if not wait_for_checkpoint_write(process, tmp_path):
            break  # it finished before the kill: nothing left to interrupt
        if kill_number > 0:
            time.sleep(rng.uniform(0, 4 * PAUSE_S))
        kill(process)
        if kill_number == 0:  # its temporary file outlives it only if the kill landed mid-write
            killed_mid_write = (tmp_path / f".ck.pt.tmp{process.pid}").exists()
        load_checkpoint(tmp_path / "ck.pt")  # the previous or the new one, whole, after every kill
    assert killed_mid_write
    done = start_run(data_file, tmp_path, resume=True)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    np.testing.assert_allclose(load_checkpoint(tmp_path / "ck.pt")["u"].numpy(), u.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(read_reconstruction(tmp_path / "out.h5").volume, volume, rtol=1e-12, atol=0)
    assert not list(tmp_path.glob(".ck.pt.tmp*")), "the killed runs' temporary files were not cleaned up"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_truncated_and_foreign_checkpoints_are_refused_in_one_line(data_file, uninterrupted, tmp_path, capsys):
    whole = tmp_path / "whole.pt"
    torch.save({"u": uninterrupted[1], "iteration": 1, "history": {}, "optimizer": {}}, whole)
    content = whole.read_bytes()
    for name, data in (("truncated.pt", content[: len(content) // 2]), ("empty.pt", b""), ("text.pt", b"hello")):
        (tmp_path / name).write_bytes(data)
        assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "o.h5"), "--resume",
                     str(tmp_path / name), *ONCE]) == 2
        assert "truncated or not a ptytomo checkpoint" in one_line_error(capsys)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "o.h5"), "--resume",
                 str(tmp_path / "foreign.pt"), *ONCE]) == 2
    assert "lacks u, iteration, history, optimizer" in one_line_error(capsys)
    assert not (tmp_path / "o.h5").exists()


def test_a_checkpoint_of_other_data_or_options_is_refused_naming_them(data_file, tmp_path, capsys):
    checkpoint = tmp_path / "ck.pt"
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "a.h5"), "--iterations", "2",
                 "--checkpoint", str(checkpoint), *RUN]) == 0
    capsys.readouterr()
    other = tmp_path / "other.h5"
    write_data(other, simulate(tiny_config(phantom="ellipsoids"), progress=False))  # same shapes, other frames
    assert main(["reconstruct", str(other), "-o", str(tmp_path / "b.h5"), "--iterations", "4",
                 "--resume", str(checkpoint), *ONCE]) == 2
    assert "other data" in one_line_error(capsys)
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "b.h5"), "--iterations", "4",
                 "--resume", str(checkpoint), "--tv-delta", "0.5", *ONCE]) == 2
    assert "--tv-delta 0.1 (now 0.5)" in one_line_error(capsys)
    # What does not change the iterates may change: more iterations, another angle batch.
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "b.h5"), "--iterations", "3",
                 "--angle-batch", "1", "--resume", str(checkpoint), *ONCE]) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_after_the_iteration_and_resumes_to_the_uninterrupted_result(data_file, uninterrupted,
                                                                                   tmp_path, signum):
    """Ctrl-C, or the SIGTERM a batch scheduler sends at the time limit."""
    process = start_run(data_file, tmp_path, resume=False)
    assert wait_for_checkpoint_write(process, tmp_path)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and "stopping after this iteration" in err, err
    recon = read_reconstruction(tmp_path / "out.h5")
    assert recon.parameters["stopped_by"] == "interrupted", err
    assert load_checkpoint(tmp_path / "ck.pt")["iteration"] == len(recon.history["iteration"]) < ITERATIONS
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "out.h5"), "--iterations", str(ITERATIONS),
                 "--resume", str(tmp_path / "ck.pt"), *ONCE]) == 0
    np.testing.assert_allclose(read_reconstruction(tmp_path / "out.h5").volume, uninterrupted[0], rtol=1e-12, atol=0)


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_iteration(data_file, tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does): one consistent result."""
    out, checkpoint = tmp_path / "out.h5", tmp_path / "ck.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ptytomo",
               "reconstruct", str(data_file), "-o", str(out), "--iterations", "200", "--checkpoint", str(checkpoint),
               "--rank-timeout", "60", *RUN]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PTYTOMO_TEST_CHECKPOINT_PAUSE_S": str(PAUSE_S)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not checkpoint.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        time.sleep(0.3)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    recon = read_reconstruction(out)  # rank 0 wrote it after the ranks agreed (check_same passed)
    iterations = len(recon.history["iteration"])
    assert recon.parameters["stopped_by"] == "interrupted" and 1 <= iterations < 200, err
    saved = load_checkpoint(checkpoint)
    assert saved["iteration"] == iterations
    physical = (saved["u"] / recon.parameters["phase_per_unit_x"]).numpy().astype(np.complex64)
    np.testing.assert_array_equal(recon.volume, physical)  # the file and the checkpoint hold the same iterate


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from ptytomo.errors import PtytomoError
    from ptytomo.solvers import run

    path = tmp_path / "ck.pt"
    payload = {"u": torch.zeros(4), "iteration": 1, "history": {}, "optimizer": {}}
    run.save_checkpoint(path, payload)

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(run, "open", lambda name, mode: FullDisk(open(name, mode)), raising=False)
    with pytest.raises(PtytomoError, match=r"--checkpoint .*ck.pt: cannot write it \(No space left on device\); "
                                           r"the previous checkpoint is kept"):
        run.save_checkpoint(path, {**payload, "iteration": 2})
    assert load_checkpoint(path)["iteration"] == 1 and not list(tmp_path.glob(".ck.pt.tmp*"))
