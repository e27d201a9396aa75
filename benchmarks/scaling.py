"""Weak and strong scaling of the angle-parallel joint solver (torchrun; gloo on CPU, NCCL on GPUs).

    python benchmarks/scaling.py [--ranks 1 2] [--size 32] [--angles 64] [--iterations 6]
                                 [--device cpu|cuda] [--threads 1] [--stream]

strong: the same data set (--angles) on N ranks.  weak: --angles per rank, N
times as many in all.  Each run is ``torchrun --nproc-per-node N -m ptytomo
reconstruct`` with gd (one cost-and-gradient evaluation per iteration) and no
stopping rule; s/it is the fastest iteration after the first (which builds
the operators): the least disturbed by other jobs on a shared machine.
Efficiency: strong t1 / (N tN), weak t1 / tN.  CPU s/it is the CPU time of
all ranks per iteration, from a second run of one iteration subtracted
(rusage of the children): on a machine other jobs share, wall-clock
efficiency measures the sharing, CPU efficiency (the same formulas on CPU
time: 1 = no time spent on anything that one rank would not do) does not.
Bytes: what one rank sends per iteration, 2 (N-1)/N of the complex64
gradient plus the 8-byte cost (distributed.reduce_bytes: the counter each
run stores as sent_bytes_per_rank follows the same formula).  On CPU every
rank gets --threads threads; ranks x threads beyond the cores share them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ptytomo.distributed import reduce_bytes
from ptytomo.io import read_reconstruction, write_data
from ptytomo.simulate import SimulationConfig, simulate


def data_file(folder: Path, size: int, angles: int) -> Path:
    path = folder / f"data_{size}_{angles}.h5"
    if not path.exists():
        config = SimulationConfig(size=size, n_angles=angles, step=4, detector_size=31, probe_diameter=15,
                                  noise="none", device="cpu")
        write_data(path, simulate(config, progress=False))
    return path


def launch(path: Path, ranks: int, iterations: int, args, out: Path) -> float:
    """Run once; return the CPU seconds of all its processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "ptytomo", "reconstruct", str(path), "-o", str(out), "--optimizer", "gd",
               "--iterations", str(iterations), "--tolerance", "0", "--tv", "fixed", "--device", args.device, "--quiet",
               "--stream", "on" if args.stream else "off"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run(path: Path, ranks: int, args, folder: Path) -> tuple[float, float, dict]:
    """(wall s/iteration, CPU s/iteration of all ranks, parameters of the run)."""
    out = folder / f"recon_{ranks}_{path.stem}.h5"
    cpu = launch(path, ranks, args.iterations, args, out) - launch(path, ranks, 1, args, folder / "one.h5")
    recon = read_reconstruction(out)
    return float(np.min(np.diff(recon.history["time_s"]))), cpu / (args.iterations - 1), recon.parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="default: 1, 2, 4, ... up to the cores or GPUs")
    parser.add_argument("--size", type=int, default=32, help="volume edge N")
    parser.add_argument("--angles", type=int, default=64, help="angles (strong) or angles per rank (weak)")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    parser.add_argument("--stream", action="store_true", help="stream the frames from the file")
    args = parser.parse_args()
    units = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count()
    ranks = args.ranks or [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= units]
    volume_reals = 2 * args.size**3  # complex64 gradient as float32 pairs

    print(f"$ python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {args.device}, {units} {'GPUs' if args.device == 'cuda' else 'cores'}, "
          f"{args.size}^3 volume, 31 px detector, step 4, gd, {args.threads} thread(s) per rank, "
          f"stream {'on' if args.stream else 'off'}")
    print("| scaling | ranks | angles | s/iteration | efficiency | CPU s/iteration | CPU efficiency "
          "| bytes sent per rank per iteration | load1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mode in ("strong", "weak"):
            for n in ranks:
                angles = args.angles * (n if mode == "weak" else 1)
                seconds, cpu, parameters = run(data_file(folder, args.size, angles), n, args, folder)
                work = angles / args.angles  # in units of the first row's work per iteration
                if n == ranks[0]:
                    baseline, cpu_baseline = seconds * n / work, cpu / work
                efficiency = baseline * work / (seconds * n)
                cpu_efficiency = cpu_baseline * work / cpu
                sent = reduce_bytes(volume_reals, 4, n) + reduce_bytes(1, 8, n)
                # The run's own counter: 8 power iterations (normalisation) + one cost and gradient per iteration.
                counted = parameters["sent_bytes_per_rank"] - 8 * reduce_bytes(volume_reals, 4, n)
                if counted != sent * args.iterations:
                    print(f"note: the run counted {counted / args.iterations:,.0f} bytes per iteration")
                print(f"| {mode} | {n} | {angles} | {seconds:.3f} | {efficiency:.2f} | {cpu:.3f} | "
                      f"{cpu_efficiency:.2f} | {sent:,} | {os.getloadavg()[0]:.1f} |", flush=True)
    print("efficiency against the first row of each block; load1: 1-min load average after the run")


if __name__ == "__main__":
    main()
