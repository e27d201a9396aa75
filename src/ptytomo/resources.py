"""What a run needs before it starts: memory (host and GPU), disk, and what identifies it.

A run that cannot fit is refused in one line before any work, naming the
sizes and what would make it fit; ``simulate``, ``reconstruct`` and the
importers call :func:`plan_simulation`, :func:`plan_reconstruction` and
:func:`plan_import` first.  The estimates follow docs/running.md's formula for one
evaluation (data + volumes + per-batch work) and count every array a run
keeps; they are upper bounds within a few tens of percent, so a refusal means
the run would certainly not fit, and a run that passes may still fail an
allocation (other jobs take memory too): :func:`out_of_memory_message` turns
that failure into the same kind of line.

:func:`data_fingerprint` identifies a data set cheaply (shapes, a hash of
positions and angles and of the first and last angle's frames) so that a
checkpoint is never resumed on other data.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .errors import PtytomoError

# A plan is refused when it needs more than this fraction of what is free:
# the rest is for the interpreter, torch's caches and the estimates' slack.
FIT_FRACTION = 0.9

# Volumes (of the solver's complex dtype) each optimiser's run holds at its peak,
# measured: peak RSS growth of `reconstruct` on a 96^3 volume with 4 angles (frames
# negligible), over 14 iterations (L-BFGS memory full), divided by one volume's bytes.
# Beside u and the gradient(s) they hold the candidate, the TV prior's autograd
# graph, the ramp filter's padded FFTs and, for L-BFGS, its 10 (s, y) pairs.
VOLUME_COPIES = {"lbfgs": 72, "fista": 26, "gd": 20, "adam": 34}
# ... and what each optimiser's state adds to a checkpoint beside u.
CHECKPOINT_VOLUMES = {"lbfgs": 22, "fista": 3, "gd": 1, "adam": 3}
REDUCTION_VOLUMES = 3  # Comm.sum's padded buffer, pieces and total under torchrun
# Per-angle planes (A, H, W) of the solver's complex dtype kept by the baselines:
# sequential: transmissions, illumination and its preconditioner, the two projection targets;
# admm: psi, h, lambda, illumination, preconditioner and the tomography target;
# ptycho (2D per angle): transmissions, illumination and its preconditioner.
PER_ANGLE_PLANES = {"joint": 0, "sequential": 5, "admm": 6, "ptycho": 3}
# The coarse alignment before the loop (--refine shifts, solvers/alignment.py), freed before the loop
# starts: its ptychography's transmissions, illumination and preconditioner, the projections and their
# lit mask, their moved copies, and the FFTs of a translation or a cross-correlation (counted, not measured)
ALIGNMENT_PLANES = 8
CHECKPOINT_PLANES = {"joint": 0, "sequential": 2, "admm": 3, "ptycho": 1}
# Frame-sized complex arrays of one angle batch during a cost-and-gradient
# evaluation: windows, exit waves, far fields, residual and its adjoint.
FRAME_SETS_PER_BATCH = 5
# Joseph's projector: ~2 entries per voxel row a ray crosses, stored twice (R and
# its transpose) as CSR (int64 column + value); built once per batch and kept.
PROJECTOR_ENTRIES_PER_RAY_STEP = 2
INDEX_BYTES = 8
# Host bytes per frame pixel of frames held in memory, by real itemsize of the solver,
# measured (peak RSS growth of a 200-angle run whose frames dominate): float32 frames,
# reading's validity copy and finiteness mask, amplitudes, and float64's tensor copy.
IN_MEMORY_FRAME_BYTES = {4: 13, 8: 22}
# simulate: float32 frames, the Poisson draws' int64 and float32 copies, writing's checks.
SIMULATED_FRAME_BYTES = {"poisson": 22, "none": 10}


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: sizes in messages, in binary units like the docs."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


# --------------------------------------------------------------------------
# What the machine has
# --------------------------------------------------------------------------


def host_memory_available() -> int:
    """Bytes of host memory a new allocation can take now: MemAvailable, capped by a cgroup limit."""
    try:
        import psutil  # optional: more portable than /proc when it is installed

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = _meminfo_available()
    limit = _cgroup_room()
    return available if limit is None else min(available, limit)


STREAM_MODES = ("auto", "on", "off")
# The in-memory path holds the frames and their amplitudes and makes one more
# copy while converting; stream when that would take over half the memory.
IN_MEMORY_COPIES = 3
MEMORY_FRACTION = 0.5


def should_stream(mode: str, frame_bytes: int, device: torch.device) -> bool:
    """``auto``: stream when this rank's frames would take over half its part of the memory."""
    if mode != "auto":
        return mode == "on"
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if IN_MEMORY_COPIES * frame_bytes > MEMORY_FRACTION * host_memory_available() / ranks_here:
        return True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return frame_bytes > MEMORY_FRACTION * free
    return False


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room() -> int | None:
    """Room left under a container's memory limit (cgroup v2 or v1), None when there is none."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text == "max":
                return None
            limit = int(text)
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # cgroup v1 writes "no limit" as a huge number
            return None
        return max(limit - usage, 0)
    return None


def device_memory_available(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, None for the CPU (whose memory is the host's)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


# --------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------


@dataclass
class MemoryPlan:
    """Estimated peak bytes of a run, part by part, on the host and on the compute device."""

    command: str
    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)  # empty when computing on the CPU
    device_name: str = "cpu"

    @property
    def host_bytes(self) -> int:
        return int(sum(self.host.values()))

    @property
    def device_bytes(self) -> int:
        return int(sum(self.device.values()))

    def shortfall(self, host_free: int, device_free: int | None) -> str | None:
        """'needs ... but ... is free' for the first memory that is too small, or None when it fits."""
        for where, parts, free in (("host memory", self.host, host_free),
                                   (f"{self.device_name} memory", self.device, device_free)):
            need = int(sum(parts.values()))
            if free is not None and need > FIT_FRACTION * free:
                biggest = sorted(((v, k) for k, v in parts.items() if v), reverse=True)[:4]
                detail = ", ".join(f"{k} {format_bytes(v)}" for v, k in biggest)
                return f"needs about {format_bytes(need)} of {where} ({detail}) but {format_bytes(free)} is free"
        return None


@dataclass(frozen=True)
class ReconstructionShapes:
    """What a reconstruction's memory depends on, read from a data file's metadata only."""

    n_angles: int
    n_positions: int
    detector_size: int
    volume_shape: tuple[int, int, int]
    probe_modes: int = 1
    has_truth: bool = False
    voxel_size_m: float = 0.0  # 0: unknown (then --propagation auto is planned as the projection model)
    energy_kev: float = 0.0


def _itemsizes(precision: str) -> tuple[int, int]:
    """(real, complex) bytes per element of a precision."""
    return (8, 16) if precision == "float64" else (4, 8)


def _projector_bytes(n_angles: int, volume_shape, real_bytes: int) -> int:
    nz, ny, nx = volume_shape
    entries = n_angles * nx * PROJECTOR_ENTRIES_PER_RAY_STEP * max(ny, nx)
    return 2 * entries * (INDEX_BYTES + real_bytes)


def _projector_build_bytes(batch: int, volume_shape) -> int:
    """numpy and COO temporaries while one batch's projector is built (int64 indices, float64 weights)."""
    nz, ny, nx = volume_shape
    return 8 * batch * nx * PROJECTOR_ENTRIES_PER_RAY_STEP * max(ny, nx) * 8


def default_angle_batch(n_angles: int, n_positions: int, m: int, complex_bytes: int, device: torch.device,
                        modes: int = 1, slices: int = 0) -> int:
    """The angle batch :class:`~ptytomo.operators.JointModel` chooses when ``--angle-batch`` is 0 (``slices``:
    the multislice model's slabs, 0 for the projection model)."""
    per_angle = 3 * modes * n_positions * m * m * complex_bytes
    if slices:  # the incident wave of every slab and the slabs' windows
        per_angle += 2 * slices * modes * n_positions * m * m * complex_bytes
    return max(1, min(n_angles, default_batch_budget(device) // max(per_angle, 1)))


def _modes(shapes: ReconstructionShapes, options) -> int:
    """Probe modes K: the option's (0 or absent: the file's)."""
    return max(int(getattr(options, "probe_modes", 1) or 1), int(shapes.probe_modes), 1)


def effective_angle_batch(shapes: ReconstructionShapes, options, n_angles: int, device: torch.device) -> int:
    """``--angle-batch``, or the one the model chooses from its memory budget when it is 0."""
    _, cplx = _itemsizes(options.precision)
    chosen = options.angle_batch or default_angle_batch(n_angles, shapes.n_positions, shapes.detector_size, cplx,
                                                       device, _modes(shapes, options), multislice_slabs(options))
    return min(n_angles, chosen)


def multislice_slabs(options) -> int:
    """The slabs of a multislice run, 0 for the projection model (``options`` resolved: an unresolved
    ``--propagation auto`` with no ``--slices`` is planned as the projection model)."""
    if options.propagation == "multislice" or (options.propagation == "auto" and options.slices > 0):
        return max(options.slices, 1)
    return 0


def _refines_frames(options) -> bool:
    """Probe, position or shift refinement keeps about one more set of frames (their gradients) per batch."""
    return any(name in ("probe", "positions", "shifts") for name in options.refined())


def plan_reconstruction(shapes: ReconstructionShapes, options, ranks: int = 1, stream: str = "auto",
                        device: torch.device | None = None) -> MemoryPlan:
    """Peak memory of one rank of ``reconstruct`` (every method), from shapes and options only."""
    from .device import resolve_device

    device = device or resolve_device(options.device)
    real, cplx = _itemsizes(options.precision)
    a_total, j, m = shapes.n_angles, shapes.n_positions, shapes.detector_size
    a = -(-a_total // max(ranks, 1))  # rank 0's share, the largest (distributed.partition)
    nz, ny, nx = shapes.volume_shape
    voxels = nz * ny * nx
    modes = _modes(shapes, options)
    batch = effective_angle_batch(shapes, options, a, device)
    frame = j * m * m  # elements of one angle's frames
    refined = options.refined()
    margin = options.window_margin(shapes.volume_shape)
    # padded projection H x W (windows may stick out by M on each side, and by the refinement's margin)
    plane = (nz + 2 * m + 2 * margin) * (nx + 2 * m + 2 * margin)
    planes = PER_ANGLE_PLANES.get(options.method, 0)
    if "shifts" in refined and options.coarse_align == "on":  # the alignment's planes go before the loop's
        planes = max(planes, ALIGNMENT_PLANES)

    streamed = should_stream(stream, a * frame * 4, device)
    if streamed:  # two batches in flight: read as float32, converted, copied to the device
        frames_host = 2 * batch * frame * (4 + 4 + real)
        frames_device = 2 * batch * frame * real if device.type == "cuda" else 0
    else:  # float32 frames, reading's validity copy and mask, the amplitudes, their tensor
        frames_host = a * frame * (IN_MEMORY_FRAME_BYTES[8] if device.type == "cpu" and real == 8
                                   else IN_MEMORY_FRAME_BYTES[4])
        frames_device = a * frame * real if device.type == "cuda" else 0

    frame_sets = FRAME_SETS_PER_BATCH + (1 if _refines_frames(options) else 0)
    slabs = multislice_slabs(options)
    compute = {
        "volume state": voxels * cplx * (VOLUME_COPIES.get(options.optimizer, max(VOLUME_COPIES.values()))
                                         + (REDUCTION_VOLUMES if ranks > 1 else 0)),
        "per-angle state": a * plane * cplx * planes,
        # multislice: the slabs' projector has the entries of one projector; the whole projection's
        # (baselines' tomography, coarse alignment) is a second one
        "projector": _projector_bytes(a, shapes.volume_shape, real) * (2 if slabs else 1),
        "batch work": batch * (frame * cplx * frame_sets * modes + 3 * plane * cplx),
        # every slab's transmission, windows and incident wave (kept for the gradient)
        "slabs": batch * slabs * (2 * frame * cplx * modes + plane * cplx),
        "frames": frames_device,
    }
    host = {
        "frames": frames_host,
        "scan": 64 * a * j,  # positions (float64, twice) and their torch copies
        "projector build": _projector_build_bytes(batch, shapes.volume_shape),
        "truth": 8 * voxels if shapes.has_truth else 0,
    }
    if device.type == "cuda":
        if getattr(options, "checkpoint", ""):  # u and the optimiser's state copied to the host to be saved
            host["checkpoint copy"] = checkpoint_bytes(shapes, options)
        return MemoryPlan("reconstruct", host=host, device=compute, device_name=str(device))
    compute.pop("frames")
    host.update(compute)
    return MemoryPlan("reconstruct", host=host)


def require_reconstruction_fits(shapes: ReconstructionShapes, options, ranks: int = 1, stream: str = "auto",
                                device: torch.device | None = None,
                                host_free: int | None = None, device_free: int | None = None) -> MemoryPlan:
    """Raise one line naming the sizes and what would fit when ``reconstruct`` cannot fit."""
    from .device import resolve_device

    device = device or resolve_device(options.device)
    host_free = host_memory_available() if host_free is None else host_free
    if device_free is None:
        device_free = device_memory_available(device)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # ranks on this node share its memory

    def problem(opts, n_ranks, mode):
        plan = plan_reconstruction(shapes, opts, n_ranks, mode, device)
        return plan.shortfall(host_free // ranks_here, device_free)

    reason = problem(options, ranks, stream)
    if reason is None:
        return plan_reconstruction(shapes, options, ranks, stream, device)
    batch = effective_angle_batch(shapes, options, shapes.n_angles, device)
    remedy = _reconstruction_remedy(problem, shapes, options, ranks, stream, batch)
    volume = "x".join(map(str, shapes.volume_shape))
    size = (f"{shapes.n_angles} angles x {shapes.n_positions} positions of {shapes.detector_size}^2 px, "
            f"volume {volume}, {options.precision}")
    raise PtytomoError(f"reconstruct ({size}) {reason}; {remedy}")


def _reconstruction_remedy(problem: Callable, shapes, options, ranks: int, stream: str, batch_now: int) -> str:
    """The least change that makes it fit, tried in order: stream, smaller batch, float32, ranks."""
    changes = []
    if stream != "on":
        changes.append(("--stream on", options, ranks, "on"))
    for batch in (64, 16, 4, 1):
        if batch < batch_now:
            changes.append((f"--angle-batch {batch}", replace(options, angle_batch=batch), ranks, stream))
    if options.precision == "float64":
        changes.append(("--precision float32", replace(options, precision="float32"), ranks, stream))
    for label, opts, n, mode in changes:
        if problem(opts, n, mode) is None:
            return f"it would fit with {label}"
    # Several ranks split the angles (frames, projector, per-angle state), never the volume state.
    n = max(ranks, 1)
    while n < shapes.n_angles:
        n = min(2 * n, shapes.n_angles)
        if problem(options, n, stream) is None:
            return f"it would fit on {n} ranks under torchrun (one per node of this memory; docs/distributed.md)"
    return ("nothing fits here: the volume state does not split over ranks; use a machine with more memory, "
            "--optimizer gd or fista (fewer volumes than lbfgs), or reconstruct a coarser (binned) volume")


def reconstruction_shapes(path) -> ReconstructionShapes | None:
    """Shapes of a data file from its metadata (no frames read), None when they cannot be read.

    None leaves the complaint to :func:`~ptytomo.io.read_data`, whose one-line
    messages name the bad field; the plan only needs numbers it can trust.
    """
    import h5py

    from .io import GEOMETRY, PROBE, TRUTH, intensities_shape

    n_angles, n_positions, m, _ = intensities_shape(path)  # raises the reader's one-line errors
    try:
        with h5py.File(os.fspath(path), "r") as f:
            shape = np.asarray(f[GEOMETRY].attrs["volume_shape"])
            voxel, energy = (float(np.asarray(f[GEOMETRY].attrs.get(k, 0.0)).reshape(-1)[0])
                             for k in ("voxel_size_m", "energy_kev"))
            probe = f.get(PROBE)
            modes = int(probe.shape[0]) if isinstance(probe, h5py.Dataset) and probe.ndim == 3 else 1
            has_truth = f.get(TRUTH) is not None
    except Exception:  # noqa: BLE001 - any unreadable metadata: read_data will say what is wrong
        return None
    # FORMAT.md readers take integral floats too: a float-declared huge volume must not slip past.
    if shape.shape != (3,) or shape.dtype.kind not in "fiu" or not np.all(np.isfinite(shape)) \
            or not np.all(shape > 0) or not np.all(np.mod(shape, 1) == 0):
        return None
    known = all(np.isfinite(v) and v > 0 for v in (voxel, energy))
    return ReconstructionShapes(n_angles, n_positions, m, tuple(int(n) for n in shape), max(modes, 1), has_truth,
                                voxel if known else 0.0, energy if known else 0.0)


def plan_simulation(config) -> MemoryPlan:
    """Peak memory of ``simulate(config)``: phantom, projector and the frames it holds in memory."""
    from .device import resolve_device
    from .scan import raster_centres

    device = resolve_device(config.device)
    real, cplx = _itemsizes(config.precision)
    s, m, a = config.oversample, config.detector_size, config.n_angles
    n = config.size
    fine = (n * s,) * 3
    modes = max(int(getattr(config, "probe_modes", 1) or 1), 1)
    j = len(raster_centres(n, config.step, 0)) ** 2  # a Fermat spiral of the same step has about as many
    frames = a * j * m * m
    frame_bytes = frames * SIMULATED_FRAME_BYTES.get(config.noise, max(SIMULATED_FRAME_BYTES.values()))
    propagation, slices = config.resolved_propagation((n, n, n))
    slabs = slices if propagation == "multislice" else 0
    batch = default_angle_batch(a, j, m * s, cplx, device, modes, slabs)
    plane = ((n + 2 * m) * s) ** 2
    compute = {
        "phantom": (n * s) ** 3 * cplx,
        "projector": _projector_bytes(a, fine, real),
        "batch work": batch * (4 * modes * j * (m * s) ** 2 * cplx + 3 * plane * cplx),
        "slabs": batch * slabs * (plane + j * (m * s) ** 2) * cplx,  # the slabs' transmissions and windows
    }
    host = {
        "frames": frame_bytes,
        "phantom and truth": (n * s) ** 3 * (8 * 4) + n**3 * 8,  # float64 construction grids, complex64 truth
        "scan": 16 * a * j,
        "projector build": _projector_build_bytes(batch, fine),
    }
    if device.type == "cuda":
        return MemoryPlan("simulate", host=host, device=compute, device_name=str(device))
    host.update(compute)
    return MemoryPlan("simulate", host=host)


def default_batch_budget(device: torch.device) -> int:
    from .operators.joint import DEFAULT_BATCH_BYTES

    return DEFAULT_BATCH_BYTES.get(device.type, DEFAULT_BATCH_BYTES["cpu"])


def simulation_output_bytes(config) -> int:
    """Bytes of the data file ``simulate`` writes: float32 frames, positions, truth (upper bound)."""
    from .scan import raster_centres

    j = len(raster_centres(config.size, config.step, 0)) ** 2
    return config.n_angles * j * (4 * config.detector_size**2 + 16) + 8 * config.size**3


def require_simulation_fits(config, host_free: int | None = None, device_free: int | None = None) -> MemoryPlan:
    """Raise one line when ``simulate(config)`` cannot fit, naming what would."""
    from .device import resolve_device

    device = resolve_device(config.device)
    host_free = host_memory_available() if host_free is None else host_free
    device_free = device_memory_available(device) if device_free is None else device_free

    def problem(cfg):
        return plan_simulation(cfg).shortfall(host_free, device_free)

    plan = plan_simulation(config)
    reason = plan.shortfall(host_free, device_free)
    if reason is None:
        return plan
    size = f"{config.size}^3 voxels x{config.oversample} oversampling, {config.n_angles} angles, {config.detector_size}^2 px"
    remedy = _simulation_remedy(problem, config)
    raise PtytomoError(f"simulate ({size}) {reason}; {remedy}")


def _simulation_remedy(problem: Callable, config) -> str:
    if config.precision == "float64" and problem(replace(config, precision="float32")) is None:
        return "it would fit with --precision float32"
    angles = _largest_that_fits(lambda n: problem(replace(config, n_angles=n)) is None, config.n_angles)
    if angles:
        return f"it would fit with --angles {angles} (the frames are held in memory until written)"
    size = _largest_that_fits(lambda n: problem(replace(config, size=n)) is None, config.size)
    if size and size >= 2:
        return f"it would fit with --size {size}"
    return "reduce --size and --angles"


def _largest_that_fits(fits: Callable[[int], bool], upper: int) -> int:
    """Largest n in [1, upper) with fits(n), by bisection (fits is monotone in n); 0 when none."""
    low, high = 0, upper  # fits(low) or low == 0; not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low if low >= 1 and fits(low) else 0


def plan_import(frame_shape: tuple[int, int], n_frames: int, output=None, *, frames_in_memory: int | None = None,
                copies: int = 2, itemsize: int = 4, what: str = "import", remedy: str = "convert in chunks",
                host_free: int | None = None) -> MemoryPlan:
    """Check an importer's memory and the output's disk space before it converts ``n_frames`` frames.

    ``frames_in_memory`` is how many frames the importer holds at once (all by
    default), ``copies`` how many arrays of them exist at the peak (source and
    float32 result: 2), ``itemsize`` the bytes per pixel of the largest copy.
    Raises one line naming the sizes and ``remedy`` when it cannot fit; with
    ``output``, also checks that its folder has room for the float32 frames.
    """
    rows, cols = (int(n) for n in frame_shape)
    held = n_frames if frames_in_memory is None else min(frames_in_memory, n_frames)
    plan = MemoryPlan(what, host={"frames": held * rows * cols * itemsize * copies})
    free = host_memory_available() if host_free is None else host_free
    reason = plan.shortfall(free, None)
    if reason is not None:
        raise PtytomoError(f"{what} ({n_frames} frames of {rows}x{cols} px) {reason}; {remedy}")
    if output is not None:
        check_disk(output, n_frames * rows * cols * 4, what=f"{what} output")
    return plan


# --------------------------------------------------------------------------
# Disk
# --------------------------------------------------------------------------


def check_disk(path, needed_bytes: int, what: str = "output") -> None:
    """Raise one line when the file system of ``path`` has less than ``needed_bytes`` free."""
    folder = _existing_folder(path)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise PtytomoError(f"{what} {os.fspath(path)}: needs about {format_bytes(needed_bytes)} of disk, "
                           f"{format_bytes(free)} free in {folder}")


def check_disks(needs: dict[str, tuple[str, int]]) -> None:
    """Several files at once: their needs add up on a shared file system.  ``{what: (path, bytes)}``."""
    by_device: dict[int, int] = {}
    for what, (path, needed) in needs.items():
        folder = _existing_folder(path)
        device = os.stat(folder).st_dev
        by_device[device] = by_device.get(device, 0) + needed
        check_disk(path, by_device[device], what)


def _existing_folder(path) -> str:
    """The folder ``path`` goes in, or its nearest existing parent when it is still to be made."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path))) or "."
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder


def checkpoint_bytes(shapes: ReconstructionShapes, options) -> int:
    """Bytes of one checkpoint: u, the optimiser's state and the baselines' per-angle state."""
    _, cplx = _itemsizes(options.precision)
    nz, ny, nx = shapes.volume_shape
    volumes = 1 + CHECKPOINT_VOLUMES.get(options.optimizer, 22)
    planes = CHECKPOINT_PLANES.get(options.method, 0) * shapes.n_angles * (nz + 2 * shapes.detector_size) \
        * (nx + 2 * shapes.detector_size)
    return (volumes * nz * ny * nx + planes) * cplx


def reconstruction_disk_needs(shapes: ReconstructionShapes, options, output) -> dict[str, tuple[str, int]]:
    """What ``reconstruct`` writes: the complex64 volume and, while a checkpoint replaces the last, two of them."""
    needs = {"--output": (output, 8 * math.prod(shapes.volume_shape))}
    if options.checkpoint:
        needs["--checkpoint"] = (options.checkpoint, 2 * checkpoint_bytes(shapes, options))
    return needs


# --------------------------------------------------------------------------
# Allocation failures that get past the plan
# --------------------------------------------------------------------------

_ALLOCATOR_PHRASES = ("DefaultCPUAllocator", "out of memory", "can't allocate memory", "CUDA error: out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or a RuntimeError from an allocator."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and any(p.lower() in str(exc).lower() for p in _ALLOCATOR_PHRASES)


# What to try when an allocation fails although the plan said the run fits.
_AFTER_THE_PLAN = "the memory plan said it fits, so other programs may have taken memory since"
OUT_OF_MEMORY_ADVICE = {
    "reconstruct": f"{_AFTER_THE_PLAN}; the output and the last checkpoint are as they were; try --stream on, "
                   "a smaller --angle-batch, --precision float32 or more ranks under torchrun",
    "simulate": f"{_AFTER_THE_PLAN}; the output is as it was; try --precision float32, fewer --angles "
                "or a smaller --size",
}


def out_of_memory_message(exc: BaseException, command: str = "reconstruct") -> str:
    """One line for an allocation that failed, with what to try for ``command``."""
    asked = re.search(r"(?:allocate|alloc)\D*?(\d[\d.]*\s*(?:[KMGTPE]i?B|bytes))", str(exc))
    amount = asked.group(1) if asked else ""
    if amount.endswith("bytes"):
        amount = format_bytes(float(amount.split()[0]))
    size = f" ({amount} asked for)" if amount else ""
    advice = OUT_OF_MEMORY_ADVICE.get(command, "the file's arrays are larger than the free memory; "
                                               "nothing was written")
    return f"out of memory{size}: {advice}"


# --------------------------------------------------------------------------
# Identity of a data set, for checkpoints
# --------------------------------------------------------------------------


def data_fingerprint(data, comm=None) -> str:
    """A short hash of a data set that does not depend on how its angles are split over ranks.

    Covers the shapes, every angle's angle, positions and valid flags, the
    probe and mask, and the frames of the first and the last angle (reading
    two angles is cheap even when the frames stay in the file).
    """
    per_angle = [_angle_digest(data, a) for a in range(data.n_angles)]
    edges = (_frames_digest(data, 0), _frames_digest(data, data.n_angles - 1))
    gathered = comm.gather_objects((per_angle, edges)) if comm is not None else [(per_angle, edges)]
    n_angles = comm.total(data.n_angles) if comm is not None else data.n_angles
    digest = hashlib.sha256()
    digest.update(repr((tuple(data.intensities.shape[1:]), n_angles)).encode())
    for angles, _ in gathered:  # rank order is angle order
        for item in angles:
            digest.update(item)
    digest.update(gathered[0][1][0])  # rank 0 holds the first angle, the last rank the last
    digest.update(gathered[-1][1][1])
    for array in (data.probe, data.mask):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _angle_digest(data, a: int) -> bytes:
    parts = [np.float64(data.angles[a]).tobytes(), np.ascontiguousarray(data.positions[a], dtype=np.float64).tobytes()]
    if data.valid is not None:
        parts.append(np.ascontiguousarray(data.valid[a], dtype=bool).tobytes())
    return hashlib.sha256(b"".join(parts)).digest()


def _frames_digest(data, a: int) -> bytes:
    frames = np.asarray(data.intensities[a : a + 1], dtype=np.float32)
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).digest()


# Options that do not change the iterates, so a run may resume with other values:
# how long to run, where to write, the device and the angle batch (memory, not maths), and the compound
# whose densities the file reports.
NOT_IDENTITY = ("iterations", "tolerance", "device", "angle_batch", "checkpoint", "checkpoint_every", "resume",
                "compound")


def run_identity(options, fingerprint: str) -> dict:
    """Every option that changes the result (new fields are included by default), plus the data."""
    from dataclasses import asdict

    identity = {k: v for k, v in asdict(options).items() if k not in NOT_IDENTITY}
    identity["data"] = fingerprint
    return identity
