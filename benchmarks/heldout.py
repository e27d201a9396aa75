"""--tv auto (the default) against the fixed TV weights, for each method (one table).

Small oversampled data sets (``--oversample 2``: no inverse crime): 2 probes (7 px disc, focused
band-limited probe with pupil 0.5) x scan steps x 2 doses.  For each, every method runs with the fixed
weights (delta 0.1, beta 0.01 with the dose scaling; ``--tv fixed``), and with ``--tv auto``, which
sees no truth; with ``--grid`` the joint method also runs the fixed weights scaled by m in GRID (the
best of them per column: what a user tuning by hand against the truth would find).  Relative RMSE
delta / beta, the chosen weights, iterations and seconds.

    python benchmarks/heldout.py                               # 16^3, 24 angles, 3 steps, 3 methods: ~10 min on 1 core
    python benchmarks/heldout.py --methods joint --steps 2 4 --grid   # the joint method beside the best fixed weight
    python benchmarks/heldout.py --methods joint --steps 4 --doses 1e4 1e5 --loss poisson   # the Poisson cost
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct

PROBES = {"disc 7 px": dict(probe="disc", probe_diameter=7.0), "focused": dict(probe="focused")}
DOSES = {"1e2": dict(photons=1e2, noise="poisson"), "1e3": dict(photons=1e3, noise="poisson"),
         "1e4": dict(photons=1e4, noise="poisson"), "1e5": dict(photons=1e5, noise="poisson"),
         "noise-free": dict(noise="none")}
GRID = (3.0, 1.0, 1 / 3, 1 / 9)


def timed(data, **options):
    started = time.perf_counter()
    options = {"refine": "none", "device": "cpu", "tv": "fixed", **options}
    recon = reconstruct(data, ReconstructOptions(**options), progress=False)
    p = recon.parameters
    return dict(delta=p["relative_rmse_delta"], beta=p["relative_rmse_beta"], seconds=time.perf_counter() - started,
                iterations=len(recon.history["cost"]) + int(p.get("heldout_path_iterations", 0)),
                tv=(p["effective_tv_delta"], p["effective_tv_beta"]), overlap=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--angles", type=int, default=24)
    parser.add_argument("--detector", type=int, default=15)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--grid", action="store_true", help="the joint method's best fixed weight too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["joint", "sequential", "admm"],
                        choices=("joint", "sequential", "admm"))
    parser.add_argument("--doses", nargs="+", default=["1e4", "noise-free"], choices=tuple(DOSES))
    parser.add_argument("--loss", default="auto", choices=("auto", "amplitude", "poisson"),
                        help="auto (the default): Poisson on photon counts from 10 a pixel, amplitude otherwise")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.size}^3 woven wires, {args.angles} angles, {args.detector} px detector, oversample 2, lbfgs, "
          f"--refine none, --loss {args.loss}; rel. RMSE delta / beta; 'iterations' of auto = path + run "
          "(sequential: tomography)")
    print("| probe | step (overlap) | dose | method | fixed | best fixed (grid) | auto | auto TV delta / beta "
          "| iterations fixed / auto | seconds fixed / auto |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    doses = {name: DOSES[name] for name in args.doses}
    for (probe, probe_kw), step, (dose, dose_kw) in itertools.product(PROBES.items(), args.steps, doses.items()):
        config = SimulationConfig(size=args.size, n_angles=args.angles, detector_size=args.detector, step=step,
                                  oversample=2, device="cpu", **probe_kw, **dose_kw)
        data = simulate(config, progress=False)
        overlap = data.simulation.get("overlap", float("nan"))
        for method in args.methods:
            fixed = timed(data, method=method, loss=args.loss)
            best = "-"
            if args.grid and method == "joint":
                grid = [timed(data, method=method, loss=args.loss, tv_delta=0.1 * m, tv_beta=0.01 * m) for m in GRID]
                best = f"{min(r['delta'] for r in grid):.3f} / {min(r['beta'] for r in grid):.3f}"
            auto = timed(data, method=method, tv="auto", loss=args.loss)
            print(f"| {probe} | {step} ({overlap:.0%}) | {dose} | {method} | {fixed['delta']:.3f} / {fixed['beta']:.3f} "
                  f"| {best} | {auto['delta']:.3f} / {auto['beta']:.3f} | {auto['tv'][0]:.2g} / {auto['tv'][1]:.2g} "
                  f"| {fixed['iterations']} / {auto['iterations']} | {fixed['seconds']:.1f} / {auto['seconds']:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
