"""A weak phase object in seven scans: the joint method and Sequential with their defaults (one table).

32^3 SiO2 ellipsoids (10 nm voxels, 8 keV: a weak phase object), 360 degrees, far field computed on a 4x
finer grid and cropped to a 31 px detector, a 12 px probe (a flat disc, or the focused band-limited
probe that fills the window), noise-free or Poisson 1e5 photons a frame, from ptytomo's simulator (``--phantom ellipsoids
--material SiO2:2.2 --oversample 4``): overlaps from 8 % to 80 %, 60 or 90 angles.
For each: the joint method with ``--tv auto`` (the default) and with ``--tv fixed``, and Sequential with
``--tv auto``; ``--refine none`` (the probe and positions are exact).  Relative RMSE delta / beta, the
delta TV weight used, seconds.

    python benchmarks/sio2_cases.py               # 7 cases, about 25 min on 2 cores
    python benchmarks/sio2_cases.py --cases 0 3   # the disc case at 67 % and the focused case at 61 % overlap
"""

from __future__ import annotations

import argparse
import time

import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.reconstruct import ReconstructOptions, reconstruct

# (probe, step, angles, photons per frame; None: noise-free), in the order of the table in docs/benchmarks/methods.md
CASES = [("disc", 4, 90, None), ("focused", 4, 90, None), ("disc", 8, 60, None), ("focused", 8, 60, None),
         ("disc", 11, 90, None), ("disc", 4, 90, 1e5), ("focused", 8, 60, 1e5)]
RUNS = [("joint, auto", dict(method="joint", tv="auto")), ("joint, fixed", dict(method="joint", tv="fixed")),
        ("sequential, auto", dict(method="sequential", tv="auto"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))),
                        choices=range(len(CASES)), metavar="I", help="rows of the table (0-6; default all)")
    parser.add_argument("--oversample", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"32^3 SiO2 ellipsoids, 10 nm, 8 keV, 31 px detector, 12 px probe, oversample {args.oversample}, "
          "--refine none; rel. RMSE delta / beta (delta TV weight used), seconds")
    print("| probe | step (overlap) | angles | photons | " + " | ".join(name for name, _ in RUNS) + " |")
    print("|---|---|---|---|" + "---|" * len(RUNS))
    for index in args.cases:
        probe, step, angles, photons = CASES[index]
        noise = dict(noise="none") if photons is None else dict(noise="poisson", photons=photons)
        config = SimulationConfig(phantom="ellipsoids", material="SiO2:2.2", size=32, voxel_size_m=10e-9,
                                  energy_kev=8.0, n_angles=angles, detector_size=31, probe_diameter=12, probe=probe,
                                  step=step, oversample=args.oversample, device="cpu", **noise)
        data = simulate(config, progress=False)
        cells = []
        for _, options in RUNS:
            started = time.perf_counter()
            p = reconstruct(data, ReconstructOptions(refine="none", device="cpu", **options), progress=False).parameters
            cells.append(f"{p['relative_rmse_delta']:.3f} / {p['relative_rmse_beta']:.3f} "
                         f"({p['effective_tv_delta']:.2g}), {time.perf_counter() - started:.0f} s")
        overlap = data.simulation.get("overlap", float("nan"))
        dose = "noise-free" if photons is None else f"{photons:g}"
        print(f"| {probe} | {step} ({overlap:.0%}) | {angles} | {dose} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
