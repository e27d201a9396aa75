"""Volume error with and without each refinement, and its cost per iteration (one table).

Oversampled data (no inverse crime) made by ptytomo's simulator with the imperfections the
reconstruction is not told about: a focused probe whose file holds a nominal flat disc, and
scan positions off by 0.5 px rms per coordinate.  Sized for a 2-core CPU by default.

    python benchmarks/refinement.py                 # 16^3, 30 angles, 60 iterations, CPU
    python benchmarks/refinement.py --size 32 --angles 90 --device cuda
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from ptytomo.reconstruct import ReconstructOptions, reconstruct
from ptytomo.simulate import SimulationConfig, simulate

CASES = {
    "exact probe and positions": {},
    "nominal probe (focused beam)": {"probe": "focused", "file_probe": "nominal"},
    "positions off 0.5 px": {"position_errors": 0.5},
    "both": {"probe": "focused", "file_probe": "nominal", "position_errors": 0.5},
}
REFINES = ("none", "probe", "positions", "probe,positions")


def position_error(data, positions) -> float:
    """Median window error in pixels after removing each angle's mean (nan when not refined)."""
    if positions is None:
        return float("nan")
    truth = data.truth_positions if data.truth_positions is not None else data.positions
    error = positions - truth
    error = error - error.mean(axis=1, keepdims=True)
    return float(np.median(np.sqrt((error**2).sum(-1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--angles", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.getLogger("ptytomo").setLevel(logging.ERROR)
    print(f"{args.size}^3 voxels, {args.angles} angles, detector 15 px, 7 px disc / focused probe, step 3, "
          f"oversample 2, noise-free, {args.iterations} joint L-BFGS iterations, device {args.device}")
    print(f"{'case':30s} {'--refine':16s} {'delta':>7s} {'beta':>7s} {'misfit/noise':>13s} "
          f"{'pos. err px':>11s} {'s/iter':>7s}")
    for name, extra in CASES.items():
        config = SimulationConfig(size=args.size, n_angles=args.angles, detector_size=15, probe_diameter=7, step=3,
                                  oversample=2, device=args.device, **extra)
        data = simulate(config, progress=False)
        for refine in REFINES:
            options = ReconstructOptions(refine=refine, iterations=args.iterations, tolerance=0, device=args.device)
            started = time.perf_counter()
            recon = reconstruct(data, options, progress=False)
            seconds = (time.perf_counter() - started) / len(recon.history["iteration"])
            p = recon.parameters
            print(f"{name:30s} {refine:16s} {p['relative_rmse_delta']:7.3f} {p['relative_rmse_beta']:7.3f} "
                  f"{p['misfit_to_noise']:13.3g} {position_error(data, recon.positions):11.3f} {seconds:7.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
