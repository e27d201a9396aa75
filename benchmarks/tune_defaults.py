"""Choose the default TV weights on data that are free of the inverse crime.

Every data set is simulated on a 2x finer grid (``--oversample 2``), so the
coarse model cannot fit it exactly, with several phantoms, overlaps and doses.
For each TV weight the joint reconstruction runs with the default optimiser
and stopping rule; the table gives the relative RMSE of delta and beta.  The
TV weights of delta and beta act on separate parts of the volume, so one run
per weight reads both columns.

    python benchmarks/tune_defaults.py            # ~15 min on 2 CPU cores
    python benchmarks/tune_defaults.py --quick    # 2 data sets, 3 weights
    python benchmarks/tune_defaults.py --method sequential --weights 0 1e-2 1e-1   # the baselines' priors
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct

DATA_SETS = [
    # name, phantom, step, photons, noise
    ("wires 73% noise-free", "woven-wire", 4, 1e6, "none"),
    ("ellipsoids 60% 1e6", "ellipsoids", 6, 1e6, "poisson"),
    ("wires 73% 1e4", "woven-wire", 4, 1e4, "poisson"),
    ("ellipsoids 47% 1e8", "ellipsoids", 8, 1e8, "poisson"),
]
WEIGHTS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--angles", type=int, default=60)
    parser.add_argument("--detector", type=int, default=31)
    parser.add_argument("--iterations", type=int, default=0, help="0: the method's default")
    parser.add_argument("--method", default="joint", help="joint, sequential or admm")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="TV weights to try")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    data_sets = DATA_SETS[:2] if args.quick else DATA_SETS
    weights = args.weights or ([0.0, 1e-3, 1e-2] if args.quick else WEIGHTS)

    print("command: python " + " ".join(sys.argv))
    print(f"size {args.size}^3, {args.angles} angles, detector {args.detector}, probe 15 px, oversample 2, "
          f"method {args.method}, optimizer {ReconstructOptions().optimizer}, iterations {args.iterations or 'default'}")
    print(f"{'data set':24s} {'tv':>8s} {'rel delta':>10s} {'rel beta':>10s} {'iters':>6s} {'seconds':>8s}")
    for name, phantom, step, photons, noise in data_sets:
        config = SimulationConfig(phantom=phantom, size=args.size, n_angles=args.angles, step=step,
                                  detector_size=args.detector, photons=photons, noise=noise, oversample=2,
                                  seed=1, device=args.device)
        data = simulate(config, progress=False)
        for weight in weights:
            options = ReconstructOptions(refine="none", tv="fixed", method=args.method, iterations=args.iterations, tv_delta=weight,
                                         tv_beta=weight, device=args.device)
            started = time.perf_counter()
            recon = reconstruct(data, options, progress=False)
            p = recon.parameters
            print(f"{name:24s} {weight:8.0e} {p['relative_rmse_delta']:10.4f} {p['relative_rmse_beta']:10.4f} "
                  f"{len(recon.history['iteration']):6d} {time.perf_counter() - started:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
