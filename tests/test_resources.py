"""The memory and disk plan: oversize runs are refused within a second in one line naming what would fit,
and allocation failures that get past it end in the same kind of line, leaving the output as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from ptytomo import resources
from ptytomo.cli import main
from ptytomo.errors import PtytomoError
from ptytomo.io import write_data
from ptytomo.reconstruct import ReconstructOptions
from ptytomo.resources import (
    ALIGNMENT_PLANES, ReconstructionShapes, check_disk, check_disks, format_bytes, is_out_of_memory, plan_import, plan_reconstruction,
    plan_simulation, reconstruction_shapes, require_reconstruction_fits, require_simulation_fits,
)
from ptytomo.simulate import SimulationConfig, simulate

GiB = 2**30
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    config = SimulationConfig(size=8, n_angles=4, detector_size=15, probe_diameter=7, step=4, device="cpu")
    path = tmp_path_factory.mktemp("plan") / "tiny.h5"
    write_data(path, simulate(config, progress=False))
    return path


@pytest.fixture(scope="module")
def huge_volume_file(data_file):
    """A valid small file whose /geometry declares a 4096^3 volume."""
    path = data_file.with_name("huge.h5")
    shutil.copy(data_file, path)
    with h5py.File(path, "r+") as f:
        f["/geometry"].attrs["volume_shape"] = np.array([4096, 4096, 4096])
        del f["/truth/volume"]
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_oversize_simulate_is_refused_within_a_second_in_one_line(tmp_path, capsys):
    started = time.perf_counter()
    code = main(["simulate", str(tmp_path / "big.h5"), "--size", "2048", "--angles", "4000", "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert code == 2 and seconds < 1.0, seconds
    err = one_line(capsys)
    assert "simulate (2048^3 voxels" in err and "TiB of host memory" in err and "it would fit with --size" in err
    assert not (tmp_path / "big.h5").exists()


def test_a_small_file_declaring_a_huge_volume_is_refused_within_a_second(huge_volume_file, tmp_path, capsys):
    started = time.perf_counter()
    code = main(["reconstruct", str(huge_volume_file), "-o", str(tmp_path / "r.h5"), "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert code == 2 and seconds < 1.0, seconds
    err = one_line(capsys)
    assert "volume 4096x4096x4096" in err and "volume state" in err and "nothing fits here" in err


def test_the_refusal_is_one_line_and_exit_2_from_the_shell(huge_volume_file, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ptytomo", "reconstruct", str(huge_volume_file), "-o",
                           str(tmp_path / "r.h5"), "--method", "admm", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("ptytomo reconstruct: error: reconstruct (4 angles")


def test_info_on_a_file_declaring_huge_frames_ends_in_one_line(data_file, tmp_path, capsys):
    """10^8 angles of frames declared in a 90 kB file (chunks never written): reading them cannot fit."""
    path = tmp_path / "declared.h5"
    shutil.copy(data_file, path)
    with h5py.File(path, "r+") as f:
        del f["/measurement/intensities"]
        f.create_dataset("/measurement/intensities", shape=(10**8, 16, 15, 15), dtype="f4", chunks=(1, 16, 15, 15))
    assert main(["info", str(path)]) == 2
    assert "out of memory (1.31 TiB asked for): the file's arrays are larger" in one_line(capsys)
    assert main(["reconstruct", str(path), "-o", str(tmp_path / "r.h5"), "--device", "cpu"]) == 2
    assert "100000000 angles" in one_line(capsys)


def test_metadata_shapes_read_without_frames(huge_volume_file, data_file):
    shapes = reconstruction_shapes(huge_volume_file)
    with h5py.File(huge_volume_file, "r") as f:  # the geometry travels too: the plan resolves --propagation auto
        voxel, energy = float(f["/geometry"].attrs["voxel_size_m"]), float(f["/geometry"].attrs["energy_kev"])
    assert shapes == ReconstructionShapes(4, 16, 15, (4096, 4096, 4096), 1, False, voxel, energy)
    assert reconstruction_shapes(data_file).has_truth
    floats = huge_volume_file.with_name("floats.h5")
    shutil.copy(huge_volume_file, floats)
    with h5py.File(floats, "r+") as f:  # integral floats are a valid volume_shape too
        f["/geometry"].attrs["volume_shape"] = np.array([4096.0, 4096.0, 4096.0])
    assert reconstruction_shapes(floats) == shapes


BEAMLINE = ReconstructionShapes(n_angles=1000, n_positions=2000, detector_size=128, volume_shape=(1000, 1000, 1000))


def test_plan_grows_and_shrinks_as_it_should():
    options = ReconstructOptions(refine="none", device="cpu")
    base = plan_reconstruction(BEAMLINE, options, stream="off", device=CPU)
    assert base.host["frames"] > 100 * GiB  # 1000 x 2000 frames of 128^2 float32: 122 GiB as read
    streamed = plan_reconstruction(BEAMLINE, options, stream="on", device=CPU)
    assert streamed.host["frames"] < base.host["frames"] / 100
    double = plan_reconstruction(BEAMLINE, replace(options, precision="float64"), stream="off", device=CPU)
    assert double.host_bytes > base.host_bytes
    eight = plan_reconstruction(BEAMLINE, options, ranks=8, stream="off", device=CPU)
    assert eight.host["frames"] == base.host["frames"] // 8 and eight.host["volume state"] >= base.host["volume state"]
    modes = plan_reconstruction(replace(BEAMLINE, probe_modes=3), replace(options, angle_batch=4), stream="on",
                                device=CPU)
    assert modes.host["batch work"] > 2.5 * plan_reconstruction(BEAMLINE, replace(options, angle_batch=4),
                                                                stream="on", device=CPU).host["batch work"]
    admm = plan_reconstruction(BEAMLINE, replace(options, method="admm"), stream="on", device=CPU)
    assert admm.host["per-angle state"] > 0 and admm.host_bytes > streamed.host_bytes
    # the coarse alignment of --refine shifts (on by default) holds planes of every angle, on the plane
    # padded by the probe and the shifts' margin, before the joint loop: --max-shift 10 gives 11 px a side,
    # the default (auto) 10 % of the 1000 px volume, 101 px a side
    shifted = plan_reconstruction(BEAMLINE, replace(options, refine="shifts", max_shift=10), stream="on", device=CPU)
    assert shifted.host["per-angle state"] == 1000 * (1000 + 2 * 128 + 2 * 11) ** 2 * 8 * ALIGNMENT_PLANES
    assert plan_reconstruction(BEAMLINE, replace(options, refine="shifts", coarse_align="off"), stream="on",
                               device=CPU).host["per-angle state"] == 0
    defaults = plan_reconstruction(BEAMLINE, ReconstructOptions(device="cpu"), stream="on", device=CPU)
    side = 1000 + 2 * 128 + 2 * (101 + 6)  # the positions' margin too: --max-position-correction 4, + 2
    assert defaults.host["per-angle state"] == 1000 * side**2 * 8 * ALIGNMENT_PLANES


def test_refusals_name_what_would_fit():
    options = ReconstructOptions(refine="none", device="cpu")
    plan = plan_reconstruction(BEAMLINE, options, stream="off", device=CPU)
    # Room for everything but the frames held in memory: streaming fits.
    room = int((plan.host_bytes - plan.host["frames"] + 10 * GiB) / resources.FIT_FRACTION)
    with pytest.raises(PtytomoError, match=r"needs about .* GiB of host memory \(.*frames 397 GiB.*it would fit with --stream on"):
        require_reconstruction_fits(BEAMLINE, options, stream="off", device=CPU, host_free=room)
    big_batches = replace(options, angle_batch=500)
    need = plan_reconstruction(BEAMLINE, replace(options, angle_batch=64), stream="on", device=CPU).host_bytes
    with pytest.raises(PtytomoError, match=r"\(batch work .*it would fit with --angle-batch 64"):
        require_reconstruction_fits(BEAMLINE, big_batches, stream="on", device=CPU, host_free=int(need / 0.85))
    small = ReconstructionShapes(100, 400, 64, (256, 256, 256))
    double = replace(options, precision="float64")
    need64 = plan_reconstruction(small, double, stream="on", device=CPU).host_bytes
    with pytest.raises(PtytomoError, match="it would fit with --precision float32"):
        require_reconstruction_fits(small, double, stream="on", device=CPU, host_free=int(0.8 * need64))
    with pytest.raises(PtytomoError, match="nothing fits here"):
        require_reconstruction_fits(BEAMLINE, options, device=CPU, host_free=GiB)
    # The frames and projector of 1000 angles split over ranks; the volume state stays.
    sequential = replace(options, method="sequential", angle_batch=1)
    plan = plan_reconstruction(BEAMLINE, sequential, stream="on", device=CPU)
    split = plan.host_bytes - plan.host["volume state"]
    reduction = plan.host["volume state"] * resources.REDUCTION_VOLUMES / resources.VOLUME_COPIES["lbfgs"]
    room = int((plan.host["volume state"] + reduction + split / 4) / resources.FIT_FRACTION)
    with pytest.raises(PtytomoError, match=r"it would fit on (4|8) ranks under torchrun"):
        require_reconstruction_fits(BEAMLINE, sequential, stream="on", device=CPU, host_free=room)
    assert require_reconstruction_fits(small, options, device=CPU, host_free=2**50).host_bytes > 0


def test_gpu_runs_check_the_device_memory_too():
    cuda = torch.device("cuda")  # no GPU needed: the free bytes are given
    shapes = ReconstructionShapes(1000, 400, 64, (256, 256, 256))  # 6.1 GiB of float32 frames
    options = ReconstructOptions(refine="none")
    plan = plan_reconstruction(shapes, options, stream="off", device=cuda)
    assert plan.device["volume state"] > 0 and plan.device["frames"] > 0 and "volume state" not in plan.host
    with pytest.raises(PtytomoError, match=r"of cuda memory \(volume state .* but 1 GiB is free; nothing fits"):
        require_reconstruction_fits(shapes, options, stream="off", device=cuda, host_free=2**50, device_free=GiB)
    need = plan.device_bytes - plan.device["frames"] + plan_reconstruction(shapes, options, stream="on",
                                                                         device=cuda).device["frames"]
    with pytest.raises(PtytomoError, match="it would fit with --stream on"):
        require_reconstruction_fits(shapes, options, stream="off", device=cuda, host_free=2**50,
                                    device_free=int(need / resources.FIT_FRACTION) + 2**20)


def test_simulation_plan_and_its_remedies():
    config = SimulationConfig(size=64, n_angles=400, detector_size=63, step=4, device="cpu")
    plan = plan_simulation(config)
    assert GiB < plan.host["frames"] < 20 * GiB  # 400 x 256 frames of 63^2 float32 = 1.5 GiB, and copies
    with pytest.raises(PtytomoError, match=r"it would fit with --angles \d+"):
        require_simulation_fits(config, host_free=int(0.5 * plan.host_bytes))
    assert require_simulation_fits(config, host_free=2**50) is not None


def test_import_plan_and_disk_checks(tmp_path):
    assert plan_import((256, 256), 1000, tmp_path / "out.h5", host_free=2**40).host_bytes == 1000 * 256**2 * 4 * 2
    with pytest.raises(PtytomoError, match=r"import \(10000000 frames of 512x512 px\) needs about 19.1 TiB.*chunks"):
        plan_import((512, 512), 10_000_000, host_free=64 * GiB)
    with pytest.raises(PtytomoError, match=r"output .*out.h5: needs about 4 EiB|needs about 4.1e\+03 PiB"):
        check_disk(tmp_path / "sub" / "out.h5", 2**62)
    check_disk(tmp_path / "out.h5", 1)
    with pytest.raises(PtytomoError, match="--checkpoint"):
        check_disks({"--output": (tmp_path / "a.h5", 1), "--checkpoint": (tmp_path / "c.pt", 2**62)})
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * GiB) == "3 GiB"


def test_disk_shortage_refuses_reconstruct(data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "checkpoint_bytes", lambda shapes, options: 2**61)
    assert main(["reconstruct", str(data_file), "-o", str(tmp_path / "r.h5"), "--checkpoint",
                 str(tmp_path / "c.pt"), "--device", "cpu"]) == 2
    assert "--checkpoint" in one_line(capsys) and not (tmp_path / "r.h5").exists()


ALLOCATION_FAILURES = [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: "
                 "you tried to allocate 549755813888 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"),
    MemoryError("Unable to allocate 512. GiB for an array with shape (4096, 4096, 4096) and data type complex64"),
]


@pytest.mark.parametrize("failure", ALLOCATION_FAILURES, ids=["cpu-allocator", "cuda", "numpy"])
def test_allocation_failures_past_the_plan_end_in_one_line_and_keep_the_output(data_file, tmp_path, capsys,
                                                                               monkeypatch, failure):
    output, checkpoint = tmp_path / "r.h5", tmp_path / "c.pt"
    output.write_bytes(b"previous result")
    checkpoint.write_bytes(b"previous checkpoint")

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr("ptytomo.reconstruct.reconstruct", fail)
    assert main(["reconstruct", str(data_file), "-o", str(output), "--checkpoint", str(checkpoint),
                 "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert err.startswith("ptytomo reconstruct: error: out of memory") and "--stream on" in err
    assert output.read_bytes() == b"previous result" and checkpoint.read_bytes() == b"previous checkpoint"


def test_other_runtime_errors_keep_their_traceback(data_file, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch in a matrix product")

    monkeypatch.setattr("ptytomo.reconstruct.reconstruct", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["reconstruct", str(data_file), "-o", str(tmp_path / "r.h5"), "--device", "cpu"])
    assert all(is_out_of_memory(failure) for failure in ALLOCATION_FAILURES)


def test_host_memory_is_read(monkeypatch):
    free = resources.host_memory_available()
    assert 0 < free < 2**50
    monkeypatch.setitem(sys.modules, "psutil", None)  # the /proc/meminfo path
    assert 0 < resources.host_memory_available() < 2**50
