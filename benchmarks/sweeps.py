"""Beyond the paper, answering its outlook: overlap, angular sampling and dose, for all three methods.

Each sweep varies one parameter around a base setup (woven wires, step 4 of
a 15 px probe, 100 angles, 1e6 photons per measurement with Poisson noise,
simulated on a 2x finer grid so no method fits the data exactly) and runs
every method with its defaults (but ``--refine none``: the file holds the true probe and
positions; ``--tv fixed`` runs the fixed TV weights instead of the held-out choice).  Writes one
figure with a column per sweep (relative RMSE of delta and beta) and prints a Markdown table.

    python benchmarks/sweeps.py                      # 64^3, paper geometry (GPU: minutes)
    python benchmarks/sweeps.py --cpu-reduced        # 16^3, 7 px probe, fewer points (1 CPU core: ~5 min)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct

METHODS = ["joint", "sequential", "admm"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--detector", type=int, default=63)
    parser.add_argument("--probe-diameter", type=float, default=15)
    parser.add_argument("--base", type=float, nargs=3, default=[4, 100, 1e6], metavar=("STEP", "ANGLES", "PHOTONS"))
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12, 14])
    parser.add_argument("--angles", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--photons", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--oversample", type=int, default=2)
    parser.add_argument("--cpu-reduced", action="store_true",
                        help="16^3, 15 px detector, 7 px probe, steps 1-6, 8-64 angles, 3 doses")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tv", default="auto", choices=("auto", "fixed"), help="TV weights: held-out choice or fixed")
    parser.add_argument("--out", default="benchmarks/results/sweeps.png")
    args = parser.parse_args(argv)
    if args.cpu_reduced:
        args.size, args.detector, args.probe_diameter = 16, 15, 7
        args.base = [2, 32, 1e6]
        args.steps, args.angles, args.photons = [1, 2, 4, 6], [8, 16, 32, 64], [1e4, 1e6, 1e8]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("command: python " + " ".join(sys.argv), flush=True)
    base_step, base_angles, base_photons = int(args.base[0]), int(args.base[1]), args.base[2]
    sweeps = {
        "overlap": [dict(step=s, n_angles=base_angles, photons=base_photons) for s in args.steps],
        "angles": [dict(step=base_step, n_angles=a, photons=base_photons) for a in args.angles],
        "photons": [dict(step=base_step, n_angles=base_angles, photons=p) for p in args.photons],
    }
    results = {}  # (sweep, method) -> list of (x, rel delta, rel beta)
    rows = []
    for sweep, points in sweeps.items():
        for point in points:
            config = SimulationConfig(size=args.size, detector_size=args.detector, probe_diameter=args.probe_diameter,
                                      noise="poisson", oversample=args.oversample, device=args.device, **point)
            data = simulate(config, progress=False)
            x = {"overlap": 1 - point["step"] / args.probe_diameter, "angles": point["n_angles"],
                 "photons": point["photons"]}[sweep]
            for method in args.methods:
                started = time.perf_counter()
                options = ReconstructOptions(refine="none", tv=args.tv, method=method, device=args.device)
                recon = reconstruct(data, options, progress=False)
                p = recon.parameters
                seconds = time.perf_counter() - started
                results.setdefault((sweep, method), []).append((x, p["relative_rmse_delta"], p["relative_rmse_beta"]))
                rows.append((sweep, point["step"], point["n_angles"], point["photons"], method,
                             p["relative_rmse_delta"], p["relative_rmse_beta"], seconds))
                print(f"{sweep:8s} step {point['step']:2d} angles {point['n_angles']:3d} photons {point['photons']:.0e} "
                      f"{method:10s} rel delta {p['relative_rmse_delta']:.3f} beta {p['relative_rmse_beta']:.3f} "
                      f"({seconds:.0f} s)", flush=True)

    figure, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    labels = {"overlap": "linear probe overlap", "angles": "number of angles", "photons": "photons per measurement"}
    for column, sweep in enumerate(sweeps):
        for method in args.methods:
            xs, deltas, betas = zip(*results[(sweep, method)])
            axes[0, column].plot(xs, deltas, "o-", label=method)
            axes[1, column].plot(xs, betas, "o-", label=method)
        for row in range(2):
            axes[row, column].set_yscale("log")
            if sweep != "overlap":
                axes[row, column].set_xscale("log")
        axes[1, column].set_xlabel(labels[sweep])
    axes[0, 0].set_ylabel("relative RMSE delta")
    axes[1, 0].set_ylabel("relative RMSE beta")
    axes[0, 0].legend()
    figure.suptitle(f"Woven wires {args.size}^3, base: step {base_step} of a {args.probe_diameter:g} px probe, "
                    f"{base_angles} angles, {base_photons:.0e} photons, oversample {args.oversample}")
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"\nwrote {args.out}\n")
    print("| sweep | step | angles | photons | method | rel. RMSE delta | rel. RMSE beta | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.0e} | {r[4]} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
