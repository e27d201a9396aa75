"""A weak phase object behind a nominal probe at wrong positions: the defaults and single changes (one table).

A file as another simulator makes one, as near as ptytomo's simulator comes: 32^3 SiO2 ellipsoids
(10 nm voxels, 8 keV: at most 0.04 rad of phase a projection), 90 angles over 360 degrees, a 31 px
detector, a focused beam (band-limited pupil with defocus) that the file's /probe gives as a nominal
12 px flat disc, a Fermat spiral of mean step 4 px, 0.5 px rms position errors the file does not hold,
Poisson counts at 1e6 photons a frame, simulated on a 2x finer grid.  Each row is one `reconstruct`:
the defaults, the amplitude cost with the file's probe and no position prior, single changes between
them, and the exact probe and positions as the reference.  Relative RMSE delta / beta,
misfit / noise, window errors (rms per coordinate, each angle's mean removed), the refined probe's
overlap with the true one, and seconds.

    python benchmarks/weak_object.py            # 5 runs, about 30 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct

RUNS = {
    "defaults": {},
    "--loss amplitude --probe-init file --position-prior 0": dict(loss="amplitude", probe_init="file",
                                                                 position_prior=0.0),
    "defaults, --loss amplitude": dict(loss="amplitude"),
    "defaults, --probe-init file": dict(probe_init="file"),
    "exact probe and positions, --refine none": dict(refine="none"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--angles", type=int, default=90)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = SimulationConfig(phantom="ellipsoids", material="SiO2:2.2", size=args.size, voxel_size_m=10e-9,
                              energy_kev=8.0, n_angles=args.angles, detector_size=31, probe_diameter=12, step=4,
                              photons=1e6, noise="poisson", oversample=2, probe="focused", file_probe="nominal",
                              position_errors=0.5, scan="fermat", seed=3, device="cpu")
    data = simulate(config, progress=False)
    exact = replace(data, probe=data.truth_probe, positions=data.truth_positions)
    valid = data.valid_or_all()

    def window_error(positions) -> float:
        error = np.where(valid[..., None], positions - data.truth_positions, 0.0)
        error = error - error.sum(axis=1, keepdims=True) / valid.sum(axis=1)[:, None, None]
        return float(np.sqrt(np.mean(error[valid] ** 2)))

    print(f"{args.size}^3 SiO2 ellipsoids, 10 nm, 8 keV, {args.angles} angles, 31 px detector, focused beam behind a "
          f"nominal 12 px disc, Fermat step 4, positions off {window_error(data.positions):.3f} px rms, Poisson 1e6, "
          "oversample 2; joint method")
    print("| run | delta | beta | misfit / noise | window error (px) | probe overlap | loss | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        started = time.perf_counter()
        source = exact if name.startswith("exact") else data
        recon = reconstruct(source, ReconstructOptions(device="cpu", **RUNS[name]), progress=False)
        p = recon.parameters
        probe = recon.probe[0] if recon.probe is not None else source.probe_modes[0]
        true = data.truth_probe[0]
        overlap = abs(np.vdot(probe, true)) / np.linalg.norm(probe) / np.linalg.norm(true)
        positions = window_error(recon.positions) if recon.positions is not None else float("nan")
        print(f"| {name} | {p['relative_rmse_delta']:.3f} | {p['relative_rmse_beta']:.2f} | {p['misfit_to_noise']:.2f} "
              f"| {positions:.3f} | {overlap:.3f} | {p['loss']} | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
