"""--tv auto against the fixed default TV weights (and the best of a small grid of fixed weights).

Small oversampled data sets (``--oversample 2``: no inverse crime): 2 probes (7 px disc, focused
band-limited probe with pupil 0.5) x 2 scan steps x 2 doses.  For each, the joint method runs with
the fixed defaults (delta 0.1, beta 0.01 with the dose scaling), with the fixed defaults scaled by
m in GRID (the best of them per column: what a user tuning by hand against the truth would find),
and with ``--tv auto``, which sees no truth.  One table: relative RMSE delta / beta, the chosen
weights, iterations and seconds.

    python benchmarks/heldout.py                 # 16^3, 24 angles, 15 px detector: ~3 min on 1 core
    python benchmarks/heldout.py --no-grid       # defaults and auto only
    python benchmarks/heldout.py --method sequential --steps 4 --no-grid   # a baseline with the joint path's weights
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
DOSES = {"1e4": dict(photons=1e4, noise="poisson"), "noise-free": dict(noise="none")}
GRID = (3.0, 1.0, 1 / 3, 1 / 9)


def timed(data, **options):
    started = time.perf_counter()
    recon = reconstruct(data, ReconstructOptions(**{"refine": "none", "device": "cpu", **options}), progress=False)
    p = recon.parameters
    return dict(delta=p["relative_rmse_delta"], beta=p["relative_rmse_beta"], seconds=time.perf_counter() - started,
                iterations=len(recon.history["cost"]) + int(p.get("heldout_path_iterations", 0)),
                tv=(p["effective_tv_delta"], p["effective_tv_beta"]), overlap=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--angles", type=int, default=24)
    parser.add_argument("--detector", type=int, default=15)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", default="joint", choices=("joint", "sequential", "admm"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.size}^3 woven wires, {args.angles} angles, {args.detector} px detector, oversample 2, {args.method} (lbfgs);"
          " rel. RMSE delta / beta; 'iterations' of auto = path + finish")
    print("| probe | step (overlap) | dose | fixed defaults | best fixed (grid) | auto | auto TV delta / beta "
          "| iterations fixed / auto | seconds fixed / auto |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (probe, probe_kw), step, (dose, dose_kw) in itertools.product(PROBES.items(), args.steps, DOSES.items()):
        config = SimulationConfig(size=args.size, n_angles=args.angles, detector_size=args.detector, step=step,
                                  oversample=2, device="cpu", **probe_kw, **dose_kw)
        data = simulate(config, progress=False)
        fixed = timed(data, method=args.method)
        best = "-"
        if not args.no_grid:
            grid = [timed(data, method=args.method, tv_delta=0.1 * m, tv_beta=0.01 * m) for m in GRID]
            best = f"{min(r['delta'] for r in grid):.3f} / {min(r['beta'] for r in grid):.3f}"
        auto = timed(data, method=args.method, tv="auto")
        overlap = data.simulation.get("overlap", float("nan"))
        print(f"| {probe} | {step} ({overlap:.0%}) | {dose} | {fixed['delta']:.3f} / {fixed['beta']:.3f} | {best} "
              f"| {auto['delta']:.3f} / {auto['beta']:.3f} | {auto['tv'][0]:.2g} / {auto['tv'][1]:.2g} "
              f"| {fixed['iterations']} / {auto['iterations']} | {fixed['seconds']:.1f} / {auto['seconds']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
