"""Volume error with and without each refinement, and its cost per iteration (one table).

Oversampled data (no inverse crime) made by ptytomo's simulator with the imperfections the
reconstruction is not told about: a focused probe whose file holds a nominal flat disc, and
scan positions off by 0.5 px rms per coordinate.  Sized for a 2-core CPU by default.

    python benchmarks/refinement.py                 # 16^3 of 50 nm, 30 angles, 100 iterations, CPU
    python benchmarks/refinement.py --size 32 --angles 90 --device cuda
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from ptytomo.operators.tomo import ParallelProjector
from ptytomo.reconstruct import ReconstructOptions, reconstruct
from ptytomo.simulate import SimulationConfig, simulate

CASES = {
    "exact probe and positions": {},
    "nominal probe (focused beam)": {"probe": "focused", "file_probe": "nominal"},
    "positions off 0.5 px": {"position_errors": 0.5},
    "both": {"probe": "focused", "file_probe": "nominal", "position_errors": 0.5},
}
REFINES = ("none", "probe", "positions", "probe,positions", "auto")  # auto (the default): probe,positions,shifts


def on_sample(data, fraction: float = 0.9) -> np.ndarray:
    """(A, J) windows whose true probe puts ``fraction`` of its power on the sample's projected support
    (the truth's non-zero voxels, 0.5 voxel of path or more): the windows whose position the data
    measure against the whole probe, not through its tails at the sample's edge."""
    support = (np.abs(data.truth) > 0).astype(np.float64)
    projector = ParallelProjector(data.truth.shape, data.angles, 1.0, "cpu", torch.float64)
    inside = projector.forward(torch.from_numpy(support)).numpy() > 0.5
    probe = data.truth_probe if data.truth_probe is not None else data.probe_modes
    power = (np.abs(probe) ** 2).sum(0)
    power /= power.sum()
    m = power.shape[0]
    pad = 3 * m
    inside = np.pad(inside, ((0, 0), (pad, pad), (pad, pad)))
    truth = data.truth_positions if data.truth_positions is not None else data.positions
    corners = np.round(truth).astype(int) + pad
    return np.array([[(inside[a, r:r + m, c:c + m] * power).sum() >= fraction for r, c in corners[a]]
                     for a in range(len(corners))])


def position_error(data, positions, sample) -> tuple[float, float, float]:
    """Window errors in pixels after removing each angle's mean: (median length, rms per coordinate, rms per
    coordinate on ``sample``); rms per coordinate as simulate's --position-errors (nan when not refined)."""
    if positions is None:
        return float("nan"), float("nan"), float("nan")
    truth = data.truth_positions if data.truth_positions is not None else data.positions
    error = positions - truth
    error = error - error.mean(axis=1, keepdims=True)
    length = np.sqrt((error**2).sum(-1))
    return (float(np.median(length)), float(np.sqrt(np.mean(error**2))),
            float(np.sqrt(np.mean(error[sample] ** 2))) if sample.any() else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--angles", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--voxel-size", type=float, default=50e-9,
                        help="metres; 50 nm gives the 16^3 phantom a realistic phase contrast (about 1 rad)")
    args = parser.parse_args()
    logging.getLogger("ptytomo").setLevel(logging.ERROR)
    print("window errors after removing each angle's mean: median length, rms per coordinate (as --position-errors), "
          "and that rms over the windows whose true probe puts 90 % of its power on the sample's projection")
    print(f"{args.size}^3 voxels of {args.voxel_size * 1e9:g} nm, {args.angles} angles, detector 15 px, 7 px disc / "
          f"focused probe, step 3, oversample 2, noise-free, {args.iterations} joint L-BFGS iterations, "
          f"device {args.device}")
    print(f"{'case':30s} {'--refine':10s} {'delta':>7s} {'beta':>7s} {'misfit/noise':>13s} "
          f"{'pos. median':>11s} {'pos. rms':>8s} {'on sample':>9s} {'s/iter':>7s}")
    for name, extra in CASES.items():
        config = SimulationConfig(size=args.size, n_angles=args.angles, detector_size=15, probe_diameter=7, step=3,
                                  oversample=2, device=args.device, voxel_size_m=args.voxel_size, **extra)
        data = simulate(config, progress=False)
        sample = on_sample(data)
        for refine in REFINES:
            options = ReconstructOptions(refine=refine, iterations=args.iterations, tolerance=0, device=args.device, tv="fixed")
            started = time.perf_counter()
            recon = reconstruct(data, options, progress=False)
            seconds = (time.perf_counter() - started) / len(recon.history["iteration"])
            p = recon.parameters
            median, rms, rms_on_sample = position_error(data, recon.positions, sample)
            print(f"{name:30s} {refine:10s} {p['relative_rmse_delta']:7.3f} {p['relative_rmse_beta']:7.3f} "
                  f"{p['misfit_to_noise']:13.3g} {median:11.3f} {rms:8.3f} {rms_on_sample:9.3f} {seconds:7.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
