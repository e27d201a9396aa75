"""The amplitude cost against the Poisson likelihood on photon counts, weak and strong objects (one table).

Small oversampled data sets (``--oversample 2``: no inverse crime), Poisson counts at several doses:
a weak phase object (SiO2-like ellipsoids at 8 keV, 10 nm voxels: a few hundredths of a radian, where
most scattered photons land one or two to a detector pixel) and the strong woven wires of the other
tables (5 keV, 10 nm voxels, tenths of a radian), a focused beam or a 7 px disc.  Each case runs the
joint method with every other option at its default (``--tv auto``; ``--refine none``: the file holds the
true probe and positions, so the table shows the costs alone) with ``--loss amplitude`` and ``--loss
poisson``.  Relative RMSE delta / beta, the best fit of a scale to delta (``scale``: > 1 means the
reconstruction's contrast is too low) and seconds.

    python benchmarks/loss.py                          # 2 objects x 2 probes x 3 doses: ~3 min on 1 core
    python benchmarks/loss.py --doses 1e5 --objects weak
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np
import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.phantoms import one_compound, random_ellipsoids
from ptytomo.physics import delta_beta
from ptytomo.reconstruct import ReconstructOptions, reconstruct

PROBES = {"focused": dict(probe="focused"), "disc 7 px": dict(probe="disc", probe_diameter=7.0)}


def weak_phantom(path: str, size: int) -> str:
    """SiO2 ellipsoids at 8 keV on the reconstruction grid, as a .npy volume file: the simulator repeats a
    volume file onto its 2x finer grid, so this object has no sub-voxel detail (the woven wires have);
    only the detector-plane sampling is the fine one."""
    volume = random_ellipsoids(size, count=10, seed=1, energy_kev=8.0)
    np.save(path, one_compound(volume, *delta_beta("SiO2", 2.2, 8.0)))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--angles", type=int, default=24)
    parser.add_argument("--doses", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--objects", nargs="+", default=["weak", "strong"], choices=("weak", "strong"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = tempfile.mkdtemp(prefix="ptytomo_loss_")
    objects = {"weak": dict(phantom=weak_phantom(os.path.join(workdir, "weak.npy"), args.size), energy_kev=8.0),
               "strong": dict(phantom="woven-wire", energy_kev=5.0)}
    print(f"{args.size}^3, 10 nm voxels, {args.angles} angles, 15 px detector, step 3, oversample 2, Poisson counts; "
          "joint, --refine none, --tv auto; rel. RMSE delta / beta, delta's best-fit scale, seconds")
    print("| object | probe | photons / frame | amplitude | poisson | scale amplitude / poisson | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, (probe, probe_kw), dose in itertools.product(args.objects, PROBES.items(), args.doses):
        config = SimulationConfig(size=args.size, n_angles=args.angles, detector_size=15, step=3, oversample=2,
                                  photons=dose, noise="poisson", voxel_size_m=1e-8, device="cpu",
                                  **objects[name], **probe_kw)
        data = simulate(config, progress=False)
        results = {}
        for loss in ("amplitude", "poisson"):
            started = time.perf_counter()
            recon = reconstruct(data, ReconstructOptions(loss=loss, refine="none", device="cpu"), progress=False)
            truth, found = data.truth.real, recon.volume.real
            scale = float((found * truth).sum() / max((found * found).sum(), 1e-300))
            results[loss] = (recon.parameters["relative_rmse_delta"], recon.parameters["relative_rmse_beta"], scale,
                             time.perf_counter() - started)
        a, p = results["amplitude"], results["poisson"]
        print(f"| {name} | {probe} | {dose:.0e} | {a[0]:.3f} / {a[1]:.3f} | {p[0]:.3f} / {p[1]:.3f} "
              f"| {a[2]:.2f} / {p[2]:.2f} | {a[3]:.1f} / {p[3]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
