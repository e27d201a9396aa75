"""Forward-model benchmark: one forward pass and one forward+adjoint (cost gradient) pass
of JointModel for N = 64, on CPU and CUDA.

    python benchmarks/forward_model.py [--device cpu|cuda|all] [--repeats R] [--quick]

Each case runs in its own process.  Times: median of R repetitions after one warm-up
(R from a time budget unless --repeats; CUDA >= 20, synchronised).  Peak memory covers
the timed phase, the amplitudes the objective holds included: CUDA max_memory_allocated,
CPU the process's peak RSS (VmHWM, reset before timing where Linux allows it).
cost@truth = sum((|g(x)| - a)^2) / sum(a^2) via JointObjective, a = |far_field(x)|:
~1e-14 (float32 rounding) when both paths agree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from ptytomo.objective import JointObjective
from ptytomo.operators import JointModel
from ptytomo.scan import disc_probe, equally_spaced_angles, raster_positions

N, M, DIAMETER, VOXEL_M, ENERGY_KEV = 64, 63, 15.0, 1e-8, 5.0
CPU_BUDGET_S, CPU_SINGLE_RUN_S, CUDA_MIN_REPEATS = 15.0, 120.0, 20  # budget per measurement


def proc_field(path: str, key: str, default: str) -> str:
    try:
        with open(path) as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return default


def reset_cpu_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (Linux >= 4.0); otherwise the peak is the process's


def cpu_peak_mib() -> float:
    rusage_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return int(proc_field("/proc/self/status", "VmHWM", f"{rusage_kb} kB").split()[0]) / 1024


def timed(fn, device: str, repeats: int | None) -> tuple[float, int]:
    """(median seconds, repetitions); 0 repetitions = the warm-up alone (a CPU run over 2 min)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once() -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    first = once()
    if repeats is None and device == "cuda":
        repeats = max(CUDA_MIN_REPEATS, min(200, int(CPU_BUDGET_S / first)))
    elif repeats is None:
        if first > CPU_SINGLE_RUN_S:
            return first, 0
        repeats = max(1, min(20, int(CPU_BUDGET_S / first)))
    return statistics.median(once() for _ in range(repeats)), repeats


def random_volume(seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    re, im = torch.rand((N,) * 3, generator=g), torch.rand((N,) * 3, generator=g)
    return (1e-5 * torch.complex(re, 0.1 * im)).to(device)


def run_case(device: str, n_angles: int, step: int, repeats: int | None) -> dict:
    positions = raster_positions(n_angles, (N, N), step, M)
    model = JointModel((N, N, N), VOXEL_M, ENERGY_KEV, equally_spaced_angles(n_angles), positions,
                       disc_probe(M, DIAMETER, photons=1e6), device=device, dtype=torch.float32)
    x_true, x_other = random_volume(1, device), random_volume(2, device)
    objective = JointObjective(model, model.amplitudes(x_other))  # rescales the probe, power iteration
    u = objective.scaling.to_u * x_true

    def forward():
        for b in range(len(model.batches)):
            model.far_field(x_true, b).abs()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_cpu_peak()
    t_fwd, n_fwd = timed(forward, device, repeats)
    t_grad, n_grad = timed(lambda: objective.value_and_grad(u), device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else cpu_peak_mib()
    load = os.getloadavg()[0]  # 1-min average, our own threads included

    # cost@truth: the timed objective path against far_field, both on the (normalised) probe
    truth = model.amplitudes(x_true)
    objective.amplitudes = truth
    cost = objective.value(u) / objective.scaling.cost
    norm = sum(float(truth[batch].double().pow(2).sum()) for batch in model.batches)
    return dict(N=N, angles=n_angles, step=step, frames=len(positions) * positions.shape[1], device=device,
                threads=torch.get_num_threads(), batch=model.angle_batch, reps=f"{n_fwd}/{n_grad}",
                forward=t_fwd, grad=t_grad, peak=peak, cost=cost / norm, load=load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--angles", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--repeats", type=int, help="fixed repetitions after the warm-up")
    parser.add_argument("--quick", action="store_true", help="100 angles, step 10 only (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.angles, args.steps = [100], [10]
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("CUDA requested but torch.cuda.is_available() is False")
    devices = {"all": ["cpu", "cuda"] if cuda else ["cpu"], "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]

    print("$ python " + shlex.join(sys.argv))
    cpu = proc_field("/proc/cpuinfo", "model name", platform.machine())
    gpu = f", cuda: {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    print(f"torch {torch.__version__}, cpu: {cpu}{gpu}")
    columns = [("N", "N", 4, "d"), ("angles", "angles", 6, "d"), ("step", "step", 4, "d"),
               ("frames", "frames", 7, "d"), ("device", "device", 6, "s"), ("threads", "threads", 7, "d"),
               ("batch", "batch", 5, "d"), ("reps", "reps f/g", 8, "s"), ("forward", "forward s", 10, ".3f"),
               ("grad", "fwd+adj s", 10, ".3f"), ("peak", "peak MiB (CPU: max RSS)", 23, ".0f"),
               ("cost", "cost@truth", 10, ".1e"), ("load", "load1", 5, ".1f")]
    print("  ".join(f"{name:>{width}}" for _, name, width, _ in columns), flush=True)
    for device in devices:
        for n_angles in args.angles:
            for step in args.steps:
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    row = pool.submit(run_case, device, n_angles, step, args.repeats).result()
                print("  ".join(f"{row[key]:>{width}{fmt}}" for key, _, width, fmt in columns), flush=True)
    print("batch: default angle batch; reps f/g: timed repetitions (forward / fwd+adj) after one warm-up,"
          " 0 = warm-up alone (> 2 min); load1: 1-min load after timing (> threads: CPU shared)")


if __name__ == "__main__":
    main()
