"""Command-line interface: ``ptytomo simulate | info | reconstruct | resolution | report | import | export | demo``.

Each subcommand is a thin layer over the Python API.  A ``PtytomoError`` (bad
input, bad option, missing CUDA) is printed as one line and exits with status
2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import numpy as np

from .errors import PtytomoError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_simulate(sub) -> None:
    from .simulate import NOISE_MODELS, SimulationConfig

    d = SimulationConfig()
    p = sub.add_parser("simulate", help="simulate a ptycho-tomography data set (FORMAT.md layout)")
    p.add_argument("output", help="data file to write (HDF5)")
    p.add_argument("--phantom", default=d.phantom, help="woven-wire, ellipsoids, or a .npy/.h5 volume file")
    p.add_argument("--size", type=_positive_int, default=d.size, help="voxels per edge N (default %(default)s)")
    p.add_argument("--voxel-size", type=float, default=d.voxel_size_m, help="voxel edge in metres (default %(default)s)")
    p.add_argument("--energy", type=float, default=d.energy_kev, help="beam energy in keV (default %(default)s)")
    p.add_argument("--angles", type=_positive_int, default=d.n_angles, help="number of angles (default %(default)s)")
    p.add_argument(
        "--angle-range", type=float, nargs=2, default=(d.angle_start, d.angle_stop), metavar=("START", "STOP"),
        help="angles equally spaced over [START, STOP) radians (default [0, 2 pi))",
    )
    p.add_argument("--detector", type=_positive_int, default=d.detector_size, help="detector size M (default %(default)s)")
    p.add_argument("--probe-diameter", type=float, default=d.probe_diameter, help="disc probe diameter in pixels (default %(default)s)")
    p.add_argument("--probe-soft-edge", type=float, default=d.probe_soft_edge, help="raised-cosine edge width in pixels (default 0: hard disc)")
    p.add_argument("--probe-file", default=None, help="use this probe (.npy, or /probe of an HDF5 file) instead of a disc")
    p.add_argument("--step", type=_positive_int, default=d.step, help="raster step in pixels (default %(default)s)")
    p.add_argument("--shift", type=int, default=d.shift, help="raster start shift per angle in pixels (default %(default)s)")
    p.add_argument("--shift-axes", default=d.shift_axes, choices=("both", "rows", "cols", "none"), help="axes the shift applies to")
    p.add_argument("--photons", type=float, default=d.photons, help="photons per measurement through empty space (default %(default)g)")
    p.add_argument("--noise", default=d.noise, choices=NOISE_MODELS, help="noise model (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (phantom and noise)")
    p.add_argument("--ellipsoids", type=_positive_int, default=d.ellipsoids, help="ellipsoid count for --phantom ellipsoids")
    p.add_argument("--material", default=d.material, metavar="FORMULA:DENSITY",
                   help="the phantom's delta map as density fractions of one compound, e.g. SiO2:2.2 (a weak phase object)")
    p.add_argument("--oversample", type=_positive_int, default=d.oversample, help="simulate on an S-times finer grid (no inverse crime)")
    p.add_argument("--propagation", default=d.propagation,
                   help="projection, multislice, or auto: multislice where the volume is thicker than the depth of "
                        "field (default %(default)s)")
    p.add_argument("--slices", type=int, default=d.slices, metavar="N",
                   help="multislice slabs on the simulation's grid (0: one per fine voxel across the beam)")
    # Imperfect data (docs/simulation.md); values are checked by SimulationConfig.check(), one line each.
    p.add_argument("--probe", default=d.probe, help="disc, or focused: a band-limited pupil with defocus (default %(default)s)")
    p.add_argument("--pupil", type=float, default=d.pupil, help="focused: pupil diameter, fraction of the detector (default %(default)s)")
    p.add_argument("--defocus", type=float, default=d.defocus, help="focused: defocus phase in rad at the pupil edge (default: the beam spans 60%% of the window)")
    p.add_argument("--probe-modes", type=int, default=d.probe_modes, help="K mutually incoherent probe modes (default %(default)s)")
    p.add_argument("--mode-power-ratio", type=float, default=d.mode_power_ratio, help="mode k holds RATIO^k of mode 0's power (default %(default)s)")
    p.add_argument("--file-probe", default=d.file_probe, help="true, or nominal: write a flat disc of --probe-diameter as /probe (default %(default)s)")
    p.add_argument("--position-errors", type=float, default=d.position_errors, metavar="PX", help="rms per coordinate of true minus recorded positions (default 0)")
    p.add_argument("--scan", default=d.scan, help="raster or fermat (spiral with mean spacing --step; default %(default)s)")
    p.add_argument("--runout", type=float, default=d.runout, metavar="PX", help="rms per coordinate of per-angle rigid object shifts (default 0)")
    p.add_argument("--i0-jitter", type=float, default=d.angle_intensity_jitter, metavar="FRACTION", help="rms per-angle incident-flux fluctuation (default 0)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default=d.precision, choices=("float32", "float64"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_simulate)


def run_simulate(args) -> int:
    from .io import write_data
    from .resources import check_disk, require_simulation_fits, simulation_output_bytes
    from .simulate import SimulationConfig, simulate

    config = SimulationConfig(
        phantom=args.phantom, size=args.size, voxel_size_m=args.voxel_size, energy_kev=args.energy,
        n_angles=args.angles, angle_start=args.angle_range[0], angle_stop=args.angle_range[1],
        detector_size=args.detector, probe_diameter=args.probe_diameter, probe_soft_edge=args.probe_soft_edge,
        probe_file=args.probe_file, step=args.step, shift=args.shift, shift_axes=args.shift_axes,
        photons=args.photons, noise=args.noise, seed=args.seed, ellipsoids=args.ellipsoids, material=args.material,
        oversample=args.oversample, device=args.device, precision=args.precision,
        propagation=args.propagation, slices=args.slices,
        probe=args.probe, pupil=args.pupil, defocus=args.defocus, probe_modes=args.probe_modes,
        mode_power_ratio=args.mode_power_ratio, file_probe=args.file_probe, position_errors=args.position_errors,
        scan=args.scan, runout=args.runout, angle_intensity_jitter=args.i0_jitter,
    )
    config.check()
    require_simulation_fits(config)  # refuse in one line what cannot fit, before any work
    check_disk(args.output, simulation_output_bytes(config))
    data = simulate(config, progress=not args.quiet)
    write_data(args.output, data)
    print(f"wrote {args.output}: {data.intensities.shape[0]} angles x {data.intensities.shape[1]} positions "
          f"of {data.intensities.shape[2]}x{data.intensities.shape[3]} px, volume {data.geometry.volume_shape}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="validate a data file and print a summary")
    p.add_argument("file", help="data file (HDF5, FORMAT.md layout)")
    p.set_defaults(run=run_info)


def describe(data) -> str:
    """A human-readable summary of a data set."""
    from .physics import wavelength_m
    from .scan import linear_overlap, probe_diameter_estimate, probe_photons, step_estimate

    a, j, m, _ = data.intensities.shape
    valid = data.valid_or_all()
    g = data.geometry
    diameter = probe_diameter_estimate(data.probe)
    step = step_estimate(data.positions[0][valid[0]])
    sim = data.simulation
    if "step" in sim and "probe_diameter" in sim:
        overlap = f"{linear_overlap(float(sim['step']), float(sim['probe_diameter'])):.0%} (step {sim['step']}, probe {float(sim['probe_diameter']):.3g} px)"
    else:
        overlap = f"~{linear_overlap(step, diameter):.0%} (estimated: step ~{step:.1f} px, probe ~{diameter:.1f} px)"
    per_frame = data.intensities.sum(axis=(2, 3))[valid]
    lines = [
        f"volume        {g.volume_shape} voxels of {g.voxel_size_m * 1e9:.3g} nm",
        f"energy        {g.energy_kev:g} keV (wavelength {wavelength_m(g.energy_kev) * 1e9:.4g} nm)",
        f"angles        {a}, from {math.degrees(data.angles.min()):.2f} to {math.degrees(data.angles.max()):.2f} deg",
        f"positions     {j} per angle, {int(valid.sum())} valid measurements in all",
        f"detector      {m} x {m} px" + ("" if data.mask is None else f", {int((~data.mask).sum())} masked pixels"),
        f"overlap       {overlap}",
        f"photons       {probe_photons(data.probe):.3g} per measurement through empty space; "
        f"measured mean {per_frame.mean():.3g} per frame",
        f"intensities   {data.intensities.nbytes / 2**30:.3g} GiB as float32",
        f"truth         {'present' if data.truth is not None else 'absent'}",
    ]
    if sim:
        lines.append("simulation    " + ", ".join(f"{k}={sim[k]}" for k in ("phantom", "noise", "oversample") if k in sim))
    lines.extend(thickness_lines(g))
    lines.extend(probe_power_note(data.probe_modes, per_frame))
    lines.extend(probe_shape_note(data))
    return "\n".join(lines)


def thickness_lines(geometry) -> list[str]:
    """The volume's thickness in depths of field, and a warning where the projection approximation does not
    hold (``--propagation auto`` then takes the multislice model)."""
    from .diagnostics import choose_propagation

    found = choose_propagation(geometry, "auto", 0, joint=True)
    _, ny, nx = geometry.volume_shape
    lines = [f"thickness     {max(ny, nx)} voxels = {max(ny, nx) * geometry.voxel_size_m * 1e9:.4g} nm = "
             f"{found.depths_of_field:.3g} depths of field (5.2 dx^2/lambda = {found.depth_of_field_m * 1e9:.4g} nm)"
             + ("" if found.model == "multislice" else ": the projection approximation holds")]
    if found.model == "multislice":
        lines.append(f"warning       thicker than the depth of field: the projection approximation does not hold; "
                     f"reconstruct --propagation auto takes the multislice model with {found.slices} slices (the "
                     "joint method; Sequential and ADMM stay projection-based)")
    return lines


def probe_shape_note(data) -> list[str]:
    """A warning line when the file's probe's far field does not look like the mean diffraction pattern (a
    nominal probe): the check of ``--probe-init auto`` (model.probe_search), which then searches."""
    from .model.probe_search import AGREEMENT, far_field_agreement
    from .stream import mean_pattern

    agreement = far_field_agreement(data.probe_modes, mean_pattern(data), data.mask)
    if agreement >= AGREEMENT:
        return []
    return [f"warning       the probe's far field does not look like the mean diffraction pattern (agreement "
            f"{agreement:.2f} < {AGREEMENT}): a nominal probe? reconstruct searches for the beam "
            "(--probe-init auto, when it refines the probe)"]


def probe_power_note(probe_modes, frame_sums) -> list[str]:
    """A warning line when the file's probe and the frames disagree on the counts by more than the
    reconstruction tolerates unrescaled: the same check (model.probe.rescale_to_counts) on the same
    statistic (the 95th percentile of the frame sums) as ``reconstruct``; a probe in other units, or
    of another scan."""
    import numpy as np

    from .model.probe import free_space_counts, rescale_to_counts

    notes: list[str] = []
    rescale_to_counts(np.asarray(probe_modes, dtype=np.complex128), free_space_counts(frame_sums), notes,
                      rescale_always=False)
    return [f"warning       {note} by reconstruct" for note in notes]


def run_info(args) -> int:
    from .io import read_data

    data = read_data(args.file)
    print(f"{args.file}: valid ptytomo data file (format version 1)")
    print(describe(data))
    from .io.series import describe_import

    for line in describe_import(args.file):  # what `ptytomo import` derived, when it made the file
        print(line)
    return 0


def _int_list(count: int):
    """argparse type: ``count`` comma-separated integers (``--volume 64,64,64``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated integers, got {text!r}") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated integers, got {text!r}")
        return values

    return parse


def _add_import(sub) -> None:
    from .io.series import CONJUGATE, FORMATS, ImportOptions

    d = ImportOptions()
    p = sub.add_parser("import", help="turn one scan file per angle (CXI, NXcxi_ptycho, ptychodus, mapped HDF5) "
                                      "into one data file")
    p.add_argument("output", help="data file to write (HDF5, FORMAT.md layout)")
    p.add_argument("inputs", nargs="+", help="one file per angle (a directory per angle for ptychodus)")
    p.add_argument("--format", default=d.format, choices=FORMATS, help="input layout (default: detected)")
    p.add_argument("--mapping", default=None, metavar="FILE", help="TOML file naming the paths and units of any other HDF5 layout")
    p.add_argument("--angles", default=None, metavar="FILE", help="text file, one angle a line (where the inputs carry none)")
    p.add_argument("--angles-unit", default=d.angles_unit, choices=("deg", "rad"), help="unit of --angles (default deg)")
    p.add_argument("--volume", type=_int_list(3), default=None, metavar="NZ,NY,NX",
                   help="volume shape (default: from the scanned field, centred on it)")
    p.add_argument("--crop", type=_positive_int, default=None, metavar="M", help="crop frames to M x M around the zero frequency")
    p.add_argument("--bin", type=_positive_int, default=d.bin, metavar="B", help="sum B x B detector pixels (default 1)")
    p.add_argument("--flip", default="", metavar="STEPS", help="comma-separated ud, lr, transpose: applied to the raw frames in order")
    p.add_argument("--dc", type=_int_list(2), default=None, metavar="ROW,COL",
                   help="zero-frequency pixel of the (flipped) raw frames (default: detected from the mean pattern)")
    p.add_argument("--conjugate", default=d.conjugate, choices=CONJUGATE,
                   help="point-reflect the frames to FORMAT.md's sign (auto: decided by a quick 2D reconstruction)")
    p.add_argument("--saturation", type=float, default=None, metavar="COUNTS", help="mask counts at or above this (default: the file's or dtype's maximum)")
    p.add_argument("--device", default=d.device, help="device of the --conjugate auto reconstruction")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_import)


def run_import(args) -> int:
    from .io.series import ImportOptions, describe_import, import_series

    options = ImportOptions(
        format=args.format, mapping=args.mapping, angles_file=args.angles, angles_unit=args.angles_unit,
        volume_shape=args.volume, crop=args.crop, bin=args.bin,
        flip=tuple(name.strip() for name in args.flip.split(",") if name.strip()), dc=args.dc,
        conjugate=args.conjugate, saturation=args.saturation, device=args.device,
    )
    import_series(args.output, args.inputs, options, progress=not args.quiet)
    print(f"wrote {args.output}")
    for line in describe_import(args.output):
        print(line)
    return 0


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct delta + i beta from a data file")
    p.add_argument("data", help="data file (HDF5, FORMAT.md layout)")
    p.add_argument("-o", "--output", required=True, help="reconstruction file to write (HDF5)")
    add_reconstruct_options(p)
    p.set_defaults(run=run_reconstruct)


def add_reconstruct_options(p) -> None:
    """Every option of a reconstruction run (ReconstructOptions' fields, --stream, ..., --quiet): the
    reconstruct and resolution subcommands share them."""
    from .objective import LOSSES
    from .options import POSITION_SCALES, TV_CHOICES, ReconstructOptions
    from .solvers.methods import METHODS
    from .solvers import OPTIMIZERS

    d = ReconstructOptions()
    p.add_argument("--method", default=d.method, choices=METHODS)
    p.add_argument("--optimizer", default=d.optimizer, choices=tuple(OPTIMIZERS), help="default %(default)s")
    p.add_argument("--iterations", type=_positive_int, default=d.iterations,
                   help="iteration limit; default: joint 100, sequential 100 tomography iterations, admm 50 outer")
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="stop when the relative cost change stays below this for 3 iterations (0: never)")
    p.add_argument("--loss", default=d.loss, choices=("auto",) + LOSSES,
                   help="detector-plane cost: auto (poisson where the frames hold photon counts, whole numbers; "
                        "amplitude otherwise), amplitude, intensity or poisson (default %(default)s)")
    p.add_argument("--tv-delta", type=float, default=None,
                   help=f"TV weight on delta; given alone, it implies --tv fixed (default {d.tv_delta:g})")
    p.add_argument("--tv-beta", type=float, default=None,
                   help=f"TV weight on beta; given alone, it implies --tv fixed (default {d.tv_beta:g})")
    p.add_argument("--tv", default=None, choices=TV_CHOICES,
                   help="auto: weights chosen on 5 %% held-out frames along a path scaled from --tv-delta/--tv-beta "
                        "(each method along its own path; 1-4x the time); fixed: "
                        "--tv-delta/--tv-beta as given (default: auto, or fixed when a weight is given)")
    p.add_argument("--no-tv-dose-scaling", action="store_true",
                   help="keep --tv-beta fixed instead of growing it as sqrt(1e6 / photons per frame) at low dose")
    p.add_argument("--allow-negative", action="store_true", help="drop the non-negativity of delta and beta")
    p.add_argument("--alpha0", type=float, default=d.alpha0, help="gd: initial step (default %(default)g)")
    p.add_argument("--eps", type=float, default=d.eps, help="gd: step decay (default %(default)g)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="adam: learning rate")
    p.add_argument("--ptycho-iterations", type=_positive_int, default=d.ptycho_iterations,
                   help="sequential: ptychography sweeps (default 300); admm: sweeps per outer iteration (default 4)")
    p.add_argument("--ptycho-step", type=float, default=d.ptycho_step,
                   help="sequential, admm: fraction of the illumination-preconditioned step (default %(default)g)")
    p.add_argument("--tomography", default=d.tomography,
                   help="sequential: iterative (--optimizer with the priors) or fbp (default %(default)s)")
    p.add_argument("--tomo-iterations", type=_positive_int, default=d.tomo_iterations,
                   help="admm: tomography steps per outer iteration (default %(default)s)")
    p.add_argument("--rho", type=float, default=d.rho, help="admm: penalty (default %(default)g)")
    p.add_argument("--rho-update", default=d.rho_update, help="admm: fixed or balance (residual balancing)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default=d.precision, choices=("float32", "float64"))
    p.add_argument("--angle-batch", type=int, default=d.angle_batch, help="angles per batch (0: from memory)")
    p.add_argument("--checkpoint", default="", help="checkpoint file to write")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="iterations between checkpoints")
    p.add_argument("--resume", default="", help="resume from this checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--stream", default="auto", choices=("auto", "on", "off"),
                   help="read the frames batch by batch from the file during each iteration instead of "
                        "holding them (auto: when they would fill over half the memory)")
    p.add_argument("--rank-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the job fails")
    p.add_argument("--refine", default=d.refine,
                   help="unknowns refined besides the volume: a comma list of probe, positions, shifts, scale, none, "
                        "or auto: probe,positions,shifts (--method ptycho: probe,positions; none with --loss intensity) "
                        "(default %(default)s)")
    p.add_argument("--probe-modes", type=int, default=d.probe_modes,
                   help="K incoherent probe modes (default: as many as the file's probe has)")
    p.add_argument("--probe-init", default=d.probe_init,
                   help="initial probe: auto (the file's, unless its far field contradicts the mean diffraction "
                        "pattern: then the best-fitting of the file's and the pattern's pupil at several defocus "
                        "distances, scored on a few angles), file, mean-pattern, disc:D or gaussian:D (D in pixels; "
                        "default %(default)s)")
    p.add_argument("--probe-defocus", type=float, default=d.probe_defocus, metavar="METRES",
                   help="propagate the initial probe by this distance, > 0 when the sample is downstream of the "
                        "focus (with --probe-init mean-pattern: a zone plate's defocused beam; write a negative distance as "
                        "--probe-defocus=-1.3e-4; default %(default)g)")
    p.add_argument("--probe-start", type=int, default=d.probe_start,
                   help="first iteration (sweep for sequential, admm, ptycho) of probe updates (default %(default)s)")
    p.add_argument("--probe-updates", type=int, default=d.probe_updates,
                   help="joint: probe steps per iteration, against the same volume (default %(default)s)")
    p.add_argument("--positions-start", type=int, default=d.positions_start,
                   help="first iteration (sweep) of position updates (default %(default)s)")
    p.add_argument("--positions-wait", type=int, default=d.positions_wait,
                   help="with the probe refined, positions start once its steps change it by < 0.1 %%, or at most "
                        "this many iterations after --positions-start (default %(default)s; 0: do not wait)")
    p.add_argument("--max-position-correction", type=float, default=d.max_position_correction,
                   help="largest position correction in pixels (default %(default)g)")
    p.add_argument("--position-prior", type=float, default=d.position_prior, metavar="PX",
                   help="rms per coordinate of the expected position errors, pixels: a Gaussian prior on the "
                        "corrections, weighed against the photon counts, that holds windows the data say little "
                        "about near their recorded positions (default %(default)g; 0: none)")
    p.add_argument("--position-affine", action="store_true",
                   help="constrain position corrections to one affine map of the scan (scale, rotation, shear)")
    p.add_argument("--position-scale", default=d.position_scale, choices=POSITION_SCALES,
                   help="the position corrections' scale of the scan (rows, columns): pinned, free, or auto: pinned "
                        "when the probe is refined (its curvature trades with the scale) unless --position-affine "
                        "(default %(default)s)")
    p.add_argument("--shifts-start", type=int, default=d.shifts_start,
                   help="--refine shifts: first joint iteration of per-angle shift updates (default %(default)s)")
    p.add_argument("--max-shift", type=float, default=d.max_shift, metavar="PX",
                   help="--refine shifts: largest per-angle shift per coordinate, pixels; 0: auto, the larger of "
                        "10 px and 10 %% of the volume's height or width (default %(default)g)")
    p.add_argument("--coarse-align", default=d.coarse_align, choices=("on", "off"),
                   help="--refine shifts: projection matching before the loop or the baseline's tomography "
                        "(default %(default)s)")
    p.add_argument("--propagation", default=d.propagation,
                   help="projection (one plane), multislice (the beam crosses the volume slab by slab; joint method "
                        "only), or auto: multislice where the volume is thicker than the depth of field 5.2 dx^2/lambda "
                        "(default %(default)s; ptytomo info says which)")
    p.add_argument("--slices", type=int, default=d.slices, metavar="N",
                   help="multislice slabs along the beam (0: auto, each at most one depth of field thick; N > 0 asks "
                        "for multislice)")
    p.add_argument("--compound", default="", metavar="FORMULA",
                   help="the sample's chemical formula (e.g. SiO2): the file then also records its mass density "
                        "from delta and from beta (docs/export.md); electron density is recorded always")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args):
    from .options import ReconstructOptions

    values = {name: getattr(args, name) for name in ReconstructOptions.names() if hasattr(args, name)}
    weights_given = values.get("tv_delta") is not None or values.get("tv_beta") is not None
    if "tv" in values and values["tv"] is None:  # a weight given by hand is meant to be used as it is
        values["tv"] = "fixed" if weights_given else "auto"
    elif values.get("tv") == "auto":
        refusal = ReconstructOptions(**{k: v for k, v in values.items() if k in ("method", "tomography", "tv")}).no_tv_refusal()
        if refusal:
            raise PtytomoError(refusal)
    for name in ("tv_delta", "tv_beta"):
        if values.get(name) is None:
            values.pop(name, None)  # the option's default
    return ReconstructOptions(**values, nonnegative=not args.allow_negative,
                              tv_dose_scaling=not args.no_tv_dose_scaling)


def summary_line(recon) -> str:
    p = recon.parameters
    text = f"{recon.method}/{p['optimizer']}: {len(recon.history['iteration'])} iterations " \
           f"in {recon.history['time_s'][-1]:.1f} s, stopped by {p['stopped_by']}, final cost {recon.history['cost'][-1]:.4g}"
    if "heldout_best_misfit" in p:  # --tv auto ran its path (the curve: the file, and `ptytomo report`)
        text += (f"; TV delta {p['effective_tv_delta']:.3g}, beta {p['effective_tv_beta']:.3g} chosen on "
                 f"{p['heldout_frames']} held-out frames ({p['heldout_path_iterations']} path iterations)")
    if "relative_rmse_delta" in p:
        text += f"; relative RMSE delta {p['relative_rmse_delta']:.3f}, beta {p['relative_rmse_beta']:.3f}"
    return text


def planned(options, shapes):
    """``options`` with the propagation a reconstruction of data of ``shapes`` will take (the plan counts its
    slabs); as they are when the file's geometry is unknown."""
    from .io import Geometry

    if not (shapes.voxel_size_m and shapes.energy_kev):
        return options
    return options.with_propagation(Geometry(shapes.energy_kev, shapes.voxel_size_m, shapes.volume_shape))


def plan_reconstruction_run(args, options, comm) -> None:
    """Refuse in one line a reconstruction whose memory or disk needs exceed what is here."""
    from .resources import check_disks, reconstruction_disk_needs, reconstruction_shapes, require_reconstruction_fits

    shapes = reconstruction_shapes(args.data)
    if shapes is None:  # unreadable metadata: read_data names the bad field
        return
    options = planned(options, shapes)
    require_reconstruction_fits(shapes, options, comm.size, args.stream, comm.device if comm.size > 1 else None)
    if comm.is_main:  # only rank 0 writes
        check_disks(reconstruction_disk_needs(shapes, options, args.output))


def run_reconstruct(args) -> int:
    from .distributed import failures_end_the_job, read_share, setup
    from .io import write_reconstruction
    from .reconstruct import reconstruct

    comm = setup(args.device, args.rank_timeout)  # one rank unless started by torchrun (docs/distributed.md)
    with failures_end_the_job(comm, "reconstruct"):
        with comm.together():  # a bad option or file fails every rank alike: say it once
            options = options_from_args(args)
            options.check()
            if comm.size > 1:
                options.device = str(comm.device)
                logging.getLogger("ptytomo").setLevel(logging.ERROR)  # rank 0 gives the warnings
            plan_reconstruction_run(args, options, comm)  # from the file's metadata, before reading frames
            data = read_share(args.data, comm, args.stream)
        recon = reconstruct(data, options, progress=not args.quiet, comm=comm)
        comm.check_same(recon.volume)
        if comm.is_main:
            write_reconstruction(args.output, recon)
            print(f"wrote {args.output}: {summary_line(recon)}")
            if "angle_shift_summary" in recon.parameters:
                print(recon.parameters["angle_shift_summary"])
        comm.close()
    return 0


def _add_resolution(sub) -> None:
    p = sub.add_parser("resolution", help="estimate the resolution from the data: FSC of two half-data "
                                          "reconstructions against the 1/2-bit threshold (docs/resolution.md)")
    p.add_argument("data", help="data file (HDF5, FORMAT.md layout)")
    p.add_argument("-o", "--output", required=True,
                   help="reconstruction file to write (HDF5): the mean of the halves, with /resolution; "
                        "fsc.png goes to OUTPUT_report/")
    # Checked by resolution.check_split / check_mask, not by argparse choices: a typo gets one line.
    p.add_argument("--split", default="angles", metavar="angles|frames",
                   help="halves of every other angle (also measures angular undersampling) or of every other "
                        "frame of each angle (default %(default)s)")
    p.add_argument("--fsc-mask", default="none", metavar="none|cylinder",
                   help="cylinder: a soft mask of the field of view (and the top and bottom faces) before the "
                        "FSC, for samples that cross the box's faces (default %(default)s)")
    add_reconstruct_options(p)
    p.set_defaults(run=run_resolution)


def run_resolution(args) -> int:
    from pathlib import Path

    from .distributed import Comm, read_share
    from .device import resolve_device
    from .io import write_reconstruction
    from .report import write_fsc_figure
    from .resolution import check_mask, check_options, check_split, estimate_resolution, resolution_line
    from .resources import check_disks, reconstruction_disk_needs, reconstruction_shapes, require_reconstruction_fits

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PtytomoError("resolution runs in one process (its two halves one after the other); start it "
                           "without torchrun")
    check_split(args.split)
    check_mask(args.fsc_mask)
    options = options_from_args(args)
    check_options(options)
    shapes = reconstruction_shapes(args.data)
    if shapes is not None:
        # Both halves share the data's frames and run one after the other: the peak is (at most) one
        # reconstruction of all the data, and each half keeps its own checkpoint.
        require_reconstruction_fits(shapes, planned(options, shapes), 1, args.stream)
        needs = reconstruction_disk_needs(shapes, options, args.output)
        if "--checkpoint" in needs:
            path, size = needs["--checkpoint"]
            needs["--checkpoint"] = (path, 2 * size)
        check_disks(needs)
    data = read_share(args.data, Comm(device=resolve_device(options.device)), args.stream)
    recon = estimate_resolution(data, options, args.split, progress=not args.quiet, mask=args.fsc_mask)
    write_reconstruction(args.output, recon)
    output = Path(args.output)
    figure = write_fsc_figure(recon, output.with_name(output.stem + "_report"), f"{output.name} ({recon.method})")
    p = recon.parameters
    print(f"wrote {args.output}: mean of two half-data reconstructions ({args.split} split: "
          f"{' + '.join(map(str, p['resolution_half_angles']))} angles, "
          f"{' + '.join(map(str, p['resolution_half_frames']))} frames), {recon.method}/{options.optimizer}")
    print("resolution (FSC of the halves at the 1/2-bit threshold, half-period): "
          + "; ".join(resolution_line(recon.resolution, name) for name in ("delta", "beta")))
    print(f"wrote {figure}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write PNG figures of a reconstruction")
    p.add_argument("recon", help="reconstruction file")
    p.add_argument("--data", default=None, help="data file, for the truth when it has one")
    p.add_argument("--out", default=None, help="output folder (default: RECON_report next to the file)")
    p.add_argument("--compound", default=None, metavar="FORMULA",
                   help="the sample's chemical formula (e.g. SiO2): units.png adds its mass density from delta and "
                        "from beta (default: the file's compound attribute, if any)")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from .physics import check_compound
    from .report import report_from_files

    if args.compound is not None:
        check_compound(args.compound)
    for path in report_from_files(args.recon, args.data, args.out, compound=args.compound):
        print(f"wrote {path}")
    return 0


def _add_export(sub) -> None:
    from .io.export import DEFAULT_MAX_BYTES, FORMATS, QUANTITIES

    p = sub.add_parser("export", help="write a reconstruction's delta, beta or electron density as a TIFF stack "
                                      "(Fiji), OME-Zarr (napari, neuroglancer, ParaView) or .npy")
    p.add_argument("recon", help="reconstruction file")
    p.add_argument("output", help="file (.tif, .npy) or folder (.zarr) to write")
    # Checked by export_volume, not by argparse choices, so a typo gets the one-line error of every other input.
    p.add_argument("--format", default=None, metavar="|".join(FORMATS),
                   help="output layout (default: from OUTPUT's suffix: .tif/.tiff, .zarr, .npy)")
    p.add_argument("--quantity", default="delta", metavar="|".join(QUANTITIES),
                   help="delta (real part), beta (imaginary part) or electron-density (electrons/nm^3, from delta "
                        "away from absorption edges); default %(default)s")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (only once the export is whole)")
    p.add_argument("--max-memory-mb", type=_positive_int, default=DEFAULT_MAX_BYTES // 2**20, metavar="MB",
                   help="memory one slab of the volume may hold (default %(default)s)")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from .io.export import export_volume

    summary = export_volume(args.recon, args.output, args.format, args.quantity, force=args.force,
                            max_bytes=args.max_memory_mb * 2**20)
    print(f"wrote {summary.path}: {summary.line()}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="simulate the paper's experiment, reconstruct it jointly, write figures")
    p.add_argument("--out", default="demo_out", help="output folder (default %(default)s)")
    p.add_argument("--full", action="store_true", help="the paper's size: 64^3, 400 angles, step 4 (GPU advised)")
    p.add_argument("--iterations", type=_positive_int, default=None, help="override the iteration count")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from pathlib import Path

    from .io import write_data, write_reconstruction
    from .reconstruct import ReconstructOptions, reconstruct
    from .report import write_report
    from .simulate import SimulationConfig, simulate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.full:
        config = SimulationConfig(size=64, n_angles=400, step=4, device=args.device)
        iterations = 300
    else:
        # Sized for a few minutes on 2 CPU cores: half the paper's voxels per edge
        # with the paper's probe, detector, 73 % overlap and 100 angles.
        config = SimulationConfig(size=32, n_angles=100, step=4, device=args.device)
        iterations = 100
    print(f"simulating the woven-wire phantom: {config.size}^3 voxels, {config.n_angles} angles, "
          f"step {config.step} px, noise-free (the paper's setting)")
    data = simulate(config, progress=not args.quiet)
    write_data(out / "data.h5", data)
    # The paper's data are noise-free and made with the reconstruction's own model, so they
    # are fitted exactly: a light prior (the defaults' TV is for measured data) serves best.
    # The paper's setting, too, is a known probe at known positions: nothing to refine (--refine none).
    options = ReconstructOptions(iterations=args.iterations or iterations, tv="fixed", tv_delta=1e-3, tv_beta=1e-3,
                                 refine="none", device=args.device)
    print(f"reconstructing jointly: {options.optimizer}, TV {options.tv_delta:g}/{options.tv_beta:g}, "
          f"up to {options.iterations} iterations")
    recon = reconstruct(data, options, progress=not args.quiet)
    write_reconstruction(out / "recon.h5", recon)
    for path in write_report(recon, out, truth=data.truth, title="ptytomo demo: joint reconstruction"):
        print(f"wrote {path}")
    print(summary_line(recon))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptytomo", description="Joint ptycho-tomographic reconstruction.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_simulate(sub)
    _add_info(sub)
    _add_reconstruct(sub)
    _add_resolution(sub)
    _add_report(sub)
    _add_import(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="ptytomo: warning: %(message)s", level=logging.WARNING)
    try:
        return args.run(args)
    except PtytomoError as exc:
        print(f"ptytomo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptytomo {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        from .resources import is_out_of_memory, out_of_memory_message

        if not is_out_of_memory(exc):
            raise  # a bug: keep its traceback
        print(f"ptytomo {args.command}: error: {out_of_memory_message(exc, args.command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
