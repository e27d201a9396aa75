"""Volume error against per-angle runout, with and without alignment, for joint and Sequential.

    python benchmarks/alignment.py [--size 16] [--object 8] [--angles 24] [--runouts 0,1,3,10]
                                   [--iterations 40] [--sweeps 100]

The data: a woven wire ``--object`` voxels wide (y, x) in the middle of a ``--size``^3 box (free
space around it, so the volume can move), 24 angles over a full turn, detector 15, disc probe of
7 px, step 3, noise-free.  Runout: simulate's (``--runout R``) without its gauge part (a volume
translation, which no data determine), applied by recording the positions minus the shifts; so
the truth volume is the one every method aims at and the errors compare directly (tests/
test_alignment.py measures the raw runout's shifts too).  ``--max-shift`` is max(10, 3 R).

Columns: relative RMSE of delta; the shift error (rms px, against the gauge-free truth) of the
aligned runs and their seconds (coarse alignment included).  Below the table, the cost of
alignment: the coarse step's seconds, and one joint evaluation (cost and gradient) with and
without the shift gradient (median of 5; what a joint iteration's evaluations pay).  On a shared
CPU the seconds vary with the load.  Prints one table.

Note the construction: the true positions are the raster and the recorded ones carry minus the
shifts, so the scan follows the object and never loses it; with a scan fixed in the laboratory
(simulate's raw runout) the object must stay inside the scanned field, which a 16^3 box allows up
to about 10 px (tests/test_alignment.py, runout 4 px rms).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ptytomo.model.shifts import remove_gauge
from ptytomo.phantoms import woven_wire
from ptytomo.reconstruct import ReconstructOptions, reconstruct
from ptytomo.simulate import SimulationConfig, simulate


def small_object_phantom(size: int, width: int, path: str) -> str:
    volume = np.zeros((size, size, size), dtype=np.complex64)
    start = (size - width) // 2
    volume[:, start : start + width, start : start + width] = woven_wire(size)[:, :width, :width]
    np.save(path, volume)
    return path


def data_with_runout(config: SimulationConfig, runout: float):
    """Data whose true positions are the recorded ones plus gauge-free runout, and those shifts."""
    data = simulate(config, progress=False)
    if runout == 0:
        return data, np.zeros((data.n_angles, 2))
    raw = simulate(SimulationConfig(**{**config.__dict__, "runout": runout}), progress=False).truth_angle_shifts
    shifts = remove_gauge(torch.from_numpy(raw), data.angles).numpy()
    data.positions = data.positions - shifts[:, None, :]
    return data, shifts


def run(data, method: str, align: bool, runout: float, args) -> tuple[float, float, float]:
    """(delta error, shift error or nan, seconds)."""
    options = ReconstructOptions(method=method, iterations=args.iterations, tolerance=0, device="cpu", tv="fixed",
                                 refine="shifts" if align else "none", max_shift=max(10.0, 3 * runout),
                                 ptycho_iterations=args.sweeps if method == "sequential" else 0)
    start = time.perf_counter()
    recon = reconstruct(data, options, progress=False)
    seconds = time.perf_counter() - start
    shift_error = np.nan
    if recon.angle_shifts is not None:
        shift_error = float(np.sqrt(np.mean((recon.angle_shifts - data.truth_shifts) ** 2)))
    return recon.parameters["relative_rmse_delta"], shift_error, seconds


def alignment_costs(data, runout: float) -> tuple[float, float, float, float]:
    """Seconds: (coarse alignment, one joint evaluation of the plain model (pruned transforms where
    the probe allows), of the refinable model (whole windows, padding for --max-shift), and of the
    refinable model with the shift gradient)."""
    from ptytomo.reconstruct import build_objective, make_groups
    from ptytomo.solvers.alignment import AlignmentOptions, coarse_align

    options = ReconstructOptions(refine="shifts", device="cpu", tv="fixed", max_shift=max(10.0, 3 * runout))
    objective = build_objective(data, options)
    (shifts,) = make_groups(objective, options)
    start = time.perf_counter()
    shifts.set(coarse_align(objective, AlignmentOptions(max_shift=options.max_shift)))
    coarse = time.perf_counter() - start
    plain_objective = build_objective(data, ReconstructOptions(refine="none", device="cpu"))

    def evaluation(objective, listeners) -> float:
        u = torch.from_numpy(data.truth).to(objective.model.complex_dtype) * objective.scaling.to_u
        times = []
        for _ in range(5):
            objective.listeners = listeners
            start = time.perf_counter()
            objective.value_and_grad(u)
            times.append(time.perf_counter() - start)
            objective.listeners = []
        return float(np.median(times))

    return coarse, evaluation(plain_objective, []), evaluation(objective, []), evaluation(objective, [shifts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--object", type=int, default=8)
    parser.add_argument("--angles", type=int, default=24)
    parser.add_argument("--runouts", default="0,1,3,10")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--sweeps", type=int, default=100, help="Sequential's ptychography sweeps")
    parser.add_argument("--costs-only", action="store_true", help="only the cost of alignment, at the first runout")
    args = parser.parse_args()
    phantom = small_object_phantom(args.size, args.object, f"/tmp/ptytomo_alignment_{args.size}_{args.object}.npy")
    config = SimulationConfig(phantom=phantom, size=args.size, n_angles=args.angles, detector_size=15,
                              probe_diameter=7, step=3, device="cpu")
    print(f"{args.size}^3 box, {args.object}-voxel object, {args.angles} angles, {args.iterations} iterations "
          f"(Sequential: {args.sweeps} sweeps); delta relative RMSE / shift error rms px / seconds")
    print(f"{'runout':>6} | {'joint':>7} {'joint+align':>22} | {'sequential':>10} {'sequential+align':>22}")
    runouts = [float(r) for r in args.runouts.split(",")]
    for runout in [] if args.costs_only else runouts:
        data, shifts = data_with_runout(config, runout)
        data.truth_shifts = shifts
        cells = {}
        for method in ("joint", "sequential"):
            for align in (False, True):
                cells[method, align] = run(data, method, align, runout, args)
        j, ja, s, sa = cells["joint", False], cells["joint", True], cells["sequential", False], cells["sequential", True]
        print(f"{runout:6.1f} | {j[0]:7.3f} {ja[0]:7.3f} / {ja[1]:5.3f} / {ja[2]:5.1f}s | {s[0]:10.3f} "
              f"{sa[0]:7.3f} / {sa[1]:5.3f} / {sa[2]:5.1f}s", flush=True)
    runout = runouts[0]
    coarse, pruned, whole, with_shifts = alignment_costs(data_with_runout(config, runout)[0], runout)
    print(f"cost of alignment (runout {runout:g}, --max-shift {max(10.0, 3 * runout):g}): coarse step {coarse:.1f} s; "
          f"one joint evaluation {pruned * 1e3:.0f} ms plain, {whole * 1e3:.0f} ms with whole windows and the "
          f"padding, {with_shifts * 1e3:.0f} ms with the shift gradient too")


if __name__ == "__main__":
    main()
