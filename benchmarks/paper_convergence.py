"""The paper's Fig. 3: RMSE of delta and beta versus iteration for the joint method.

Noise-free woven-wire data (the paper's inverse-crime setting: simulated with
the same discrete model), four setups (step 10 / 4 x 100 / 400 angles), the
paper's Algorithm 1 (``gd``, no prior) against faster optimisers (no prior).
Writes ``paper_convergence.png`` and prints a Markdown table.

    python benchmarks/paper_convergence.py                       # the paper's size, 1000 iterations (GPU)
    python benchmarks/paper_convergence.py --size 32 --iterations 100 --angles 50 200   # CPU-sized
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--angles", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 4])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--optimizers", nargs="+", default=["gd", "lbfgs", "fista"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/paper_convergence.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("command: python " + " ".join(sys.argv))
    rows = []
    figure, axes = plt.subplots(2, len(args.steps) * len(args.angles), figsize=(4 * len(args.steps) * len(args.angles), 7),
                                squeeze=False, sharey="row")
    column = 0
    for step in args.steps:
        for n_angles in args.angles:
            data = simulate(SimulationConfig(size=args.size, n_angles=n_angles, step=step, device=args.device),
                            progress=False)
            norm_d = np.sqrt(np.mean(data.truth.real.astype(float) ** 2))
            norm_b = np.sqrt(np.mean(data.truth.imag.astype(float) ** 2))
            for name in args.optimizers:
                options = ReconstructOptions(refine="none", tv="fixed", optimizer=name, iterations=args.iterations, tolerance=0, tv_delta=0,
                                             tv_beta=0, nonnegative=name != "gd", device=args.device)
                started = time.perf_counter()
                recon = reconstruct(data, options, progress=False)
                seconds = time.perf_counter() - started
                h = recon.history
                axes[0, column].semilogy(h["iteration"], h["rmse_delta"] / norm_d, label=name)
                axes[1, column].semilogy(h["iteration"], h["rmse_beta"] / norm_b, label=name)
                rows.append((step, n_angles, name, len(h["iteration"]), h["rmse_delta"][-1], h["rmse_beta"][-1],
                             h["rmse_delta"][-1] / norm_d, h["rmse_beta"][-1] / norm_b, seconds,
                             recon.parameters["device"]))
                print(f"step {step:2d} angles {n_angles:3d} {name:6s} rmse_delta {h['rmse_delta'][-1]:.3e} "
                      f"rmse_beta {h['rmse_beta'][-1]:.3e} ({seconds:.0f} s)", flush=True)
            axes[0, column].set_title(f"step {step} ({1 - step / 15:.0%}), {n_angles} angles")
            column += 1
    axes[0, 0].set_ylabel("relative RMSE delta")
    axes[1, 0].set_ylabel("relative RMSE beta")
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    axes[0, 0].legend()
    figure.suptitle(f"Joint reconstruction, woven wires {args.size}^3, noise-free (inverse crime)")
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"\nwrote {args.out}\n")
    print("| step | angles | optimizer | iterations | RMSE delta | RMSE beta | rel. delta | rel. beta | seconds | device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2e} | {r[5]:.2e} | {r[6]:.3f} | {r[7]:.3f} | {r[8]:.0f} | {r[9]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
