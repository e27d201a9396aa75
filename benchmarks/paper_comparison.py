"""The paper's Fig. 4: joint, Sequential and ADMM-GD on the same data, three setups.

Woven wires, the paper's geometry (63 px detector, 15 px probe), noise-free
amplitudes simulated with the same discrete model (the paper's setting) or,
with ``--oversample 2 --photons 1e6``, on a finer grid with Poisson noise.
Every method runs with its defaults and the same light TV prior.  Writes a
montage of one axial slice of delta and beta per method and setup, and prints
a Markdown table of relative RMSE, SSIM and wall time.

    python benchmarks/paper_comparison.py                  # the paper's size, 64^3 (GPU: minutes; 2 CPU cores: ~1 h)
    python benchmarks/paper_comparison.py --size 32 --angles-scale 0.5   # CPU-sized
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ptytomo import SimulationConfig, simulate
from ptytomo.metrics import relative_rmse, ssim
from ptytomo.reconstruct import ReconstructOptions, reconstruct

SETUPS = [(10, 100), (10, 400), (4, 100)]  # (step, angles): 33 % / 33 % / 73 % overlap
METHODS = ["joint", "sequential", "admm"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--angles-scale", type=float, default=1.0, help="multiply the setups' angle counts")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--tv", type=float, default=1e-3, help="TV weight on delta and beta for every method")
    parser.add_argument("--oversample", type=int, default=1)
    parser.add_argument("--photons", type=float, default=0, help="Poisson noise at this many photons (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/paper_comparison.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("command: python " + " ".join(sys.argv), flush=True)
    setups = [(step, max(2, round(angles * args.angles_scale))) for step, angles in SETUPS]
    slices: dict = {}
    rows = []
    for step, n_angles in setups:
        config = SimulationConfig(size=args.size, n_angles=n_angles, step=step, oversample=args.oversample,
                                  noise="poisson" if args.photons else "none", photons=args.photons or 1e6,
                                  device=args.device)
        data = simulate(config, progress=False)
        z = args.size // 2
        slices[("truth", step, n_angles)] = data.truth[z]
        for method in args.methods:
            options = ReconstructOptions(refine="none", tv="fixed", method=method, tv_delta=args.tv, tv_beta=args.tv, device=args.device)
            started = time.perf_counter()
            recon = reconstruct(data, options, progress=False)
            seconds = time.perf_counter() - started
            v, t = recon.volume, data.truth
            row = (step, n_angles, method, relative_rmse(v.real, t.real), relative_rmse(v.imag, t.imag),
                   ssim(v.real, t.real), ssim(v.imag, t.imag), seconds, len(recon.history["iteration"]),
                   recon.parameters["device"])
            rows.append(row)
            slices[(method, step, n_angles)] = v[z]
            print(f"step {step:2d} angles {n_angles:3d} {method:10s} rel delta {row[3]:.3f} beta {row[4]:.3f} "
                  f"SSIM delta {row[5]:.3f} beta {row[6]:.3f} ({seconds:.0f} s)", flush=True)

    names = ["truth", *args.methods]
    figure, axes = plt.subplots(len(names), 2 * len(setups), figsize=(2.2 * 2 * len(setups), 2.3 * len(names)),
                                squeeze=False)
    for column, (step, n_angles) in enumerate(setups):
        truth = slices[("truth", step, n_angles)]
        for part, (label, take) in enumerate((("delta", np.real), ("beta", np.imag))):
            limits = dict(vmin=0, vmax=float(take(truth).max()), cmap="gray")
            for row_index, name in enumerate(names):
                ax = axes[row_index, 2 * column + part]
                ax.imshow(take(slices[(name, step, n_angles)]), **limits)
                ax.set_xticks([])
                ax.set_yticks([])
                if row_index == 0:
                    ax.set_title(f"{label}: step {step} ({1 - step / 15:.0%}), {n_angles} angles", fontsize=8)
                if column == 0 and part == 0:
                    ax.set_ylabel(name)
    noise = f", {args.photons:.0e} photons" if args.photons else ", noise-free"
    figure.suptitle(f"Woven wires {args.size}^3, slice z = {args.size // 2}{noise}, oversample {args.oversample}, "
                    f"TV {args.tv:g}")
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"\nwrote {args.out}\n")
    print("| step (overlap) | angles | method | rel. RMSE delta | rel. RMSE beta | SSIM delta | SSIM beta "
          "| seconds | iterations | device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} ({1 - r[0] / 15:.0%}) | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} "
              f"| {r[7]:.0f} | {r[8]} | {r[9]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
