"""Reconstruction API: a data set and options in, a :class:`Reconstruction` out.

A run is the same short sequence of named stages for every method and forward model, each a
function in the module its subject lives in:

1. survey the data and choose the cost            diagnostics.survey
2. the initial probe                              model.probe_init.initial_probe
3. the objective and the parameter groups         objective.build_objective, model.make_groups
4. coarse alignment of the angles                 solvers.alignment.align_before_loop
5. the TV weights (--tv auto's held-out path)     solvers.methods: Method.choose_weights
6. iterate                                        solvers.run.iterate over Method.stepper
7. summarise                                      summarise (below): the Reconstruction record

What differs between methods sits behind the method's object (:mod:`ptytomo.solvers.methods`);
nothing below this module imports from it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace

import numpy as np
import torch

from .device import resolve_device, resolve_precision
from .diagnostics import beta_dose_factor, fit_quality, survey
from .distributed import SOLO, Comm
from .io import LazyIntensities, PtychoTomoData, Reconstruction
from .metrics import volume_errors
from .model import initial_probe, make_groups, refined_fields
from .model.shifts import bound_reached, shift_summary
from .objective import build_objective
from .physics import physical_units
from .options import ReconstructOptions
from .resources import data_fingerprint, run_identity
from .solvers import iterate, load_checkpoint
from .solvers.alignment import align_before_loop
from .solvers.methods import METHODS

__all__ = ["ReconstructOptions", "reconstruct", "build_objective", "make_groups"]

log = logging.getLogger("ptytomo")


def reconstruct(data: PtychoTomoData, options: ReconstructOptions | None = None, progress: bool = True,
                comm: Comm = SOLO) -> Reconstruction:
    """Reconstruct delta + i beta from ``data`` with ``options`` (defaults: the general-purpose choice).

    Under torchrun ``data`` is this rank's share of the angles (distributed.read_share) and ``comm``
    joins the ranks; every rank returns the same result.
    """
    options = options or ReconstructOptions()
    options.check()
    found = survey(data, options, comm)
    requested = dict(loss_requested=options.loss, propagation_requested=options.propagation,
                     slices_requested=options.slices)
    # the rest of the run (groups, path, checkpoints) sees the chosen cost and forward model
    options = replace(options, loss=found.loss, **found.propagation.options())
    if comm.is_main:
        if requested["loss_requested"] == "auto":
            log.info("--loss auto: %s", options.loss)
        log.info("propagation: %s (%d slices; the volume is %.3g depths of field thick)", options.propagation,
                 found.propagation.slices, found.propagation.depths_of_field)
    for line in found.warnings if comm.is_main else []:
        log.warning(line)

    torch.manual_seed(options.seed)
    probe, probe_notes = start_probe(data, options, comm)
    objective = build_objective(data, options, comm, probe=probe)
    groups = make_groups(objective, options, comm)
    align_before_loop(objective, groups, options, comm, log=log)

    method = METHODS[options.method](objective, data, options, groups, comm)
    tv_beta = options.tv_beta * (beta_dose_factor(found.counts) if options.tv_dose_scaling else 1.0)
    resumed = load_checkpoint(options.resume) if options.resume else None
    weights = method.choose_weights(tv_beta, resumed)
    stepper = method.stepper(weights, groups, progress=progress and comm.is_main)
    iterations = weights.limit(method.iterations())

    model = objective.model
    truth = None
    if data.truth is not None:
        truth = torch.from_numpy(np.asarray(data.truth)).to(device=model.device, dtype=model.complex_dtype)
    u0 = weights.start(torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device))
    result = iterate(
        stepper, u0, iterations, objective.scaling.to_u, truth=truth, tolerance=options.tolerance,
        checkpoint_path=options.checkpoint or None, checkpoint_every=options.checkpoint_every,
        resume=resumed, progress=progress,
        identity=run_identity(options, data_fingerprint(data, comm)),  # the data and every option of the result
        description=method.description(), main=comm.is_main, comm=comm,
        extra=lambda: method.weights_in_use(weights, stepper),
    )
    weights = method.weights_after_loop(weights, stepper)
    misfit = method.final_misfit(stepper, result)
    if hasattr(objective.amplitudes, "close"):  # a streamed data set: stop its read-ahead thread
        objective.amplitudes.close()
    return summarise(method, stepper, result, misfit, weights, iterations, found, probe_notes, requested)


def start_probe(data: PtychoTomoData, options: ReconstructOptions, comm: Comm = SOLO):
    """The initial-probe stage: ``--probe-init``'s modes (searched for when the probe is refined) and the
    notes to report."""
    search = None
    if "probe" in options.refined():
        search = dict(loss=options.loss, device=resolve_device(options.device),
                      dtype=resolve_precision(options.precision)[0])
    probe, notes = initial_probe(data, options.probe_init, options.probe_modes, options.seed, comm,
                                 defocus_m=options.probe_defocus, search=search)
    for line in notes if comm.is_main else []:
        log.warning(line)
    return probe, notes


def summarise(method, stepper, result, misfit: float, weights, iterations: int, found, probe_notes: list[str],
              requested: dict) -> Reconstruction:
    """The last stage: the volume, every option and every choice the run made (``found``: the survey's;
    ``requested``: the options the choices replaced), its fit (``misfit``: the raw data misfit of the result)
    against photon noise, its history and the refined unknowns, as one :class:`Reconstruction`."""
    warnings = found.warnings
    objective, data, options, groups, comm = method.objective, method.data, method.options, method.groups, method.comm
    model = objective.model
    fit, fit_warning = fit_quality(misfit * objective.probe_max**2, data, options.loss, comm)
    if fit_warning and comm.is_main:
        log.warning(fit_warning)
    heldout = weights.choice
    warnings = warnings + ([fit_warning] if fit_warning else []) + ([heldout.note] if heldout and heldout.note else [])
    to_u = objective.scaling.to_u
    volume = (result.u / to_u).cpu().numpy().astype(np.complex64)
    parameters = {k: v for k, v in asdict(options).items() if k != "method"}
    parameters.update(
        iterations_limit=iterations, stopped_by=result.stopped_by, cost_scale=objective.scaling.cost, phase_per_unit_x=to_u,
        angle_batch=model.angle_batch, device=str(model.device), warnings=warnings or ["none"],
        effective_tv_beta=weights.tv_beta, effective_tv_delta=weights.tv_delta,
        effective_max_shift=options.shift_bound(data.geometry.volume_shape) if "shifts" in options.refined() else 0.0,
    )
    if heldout is not None:
        parameters.update(heldout.record, heldout_calibration_iterations=getattr(objective, "calibration_iterations", 0))
    parameters.update(ranks=comm.size, streamed=isinstance(data.intensities, LazyIntensities),
                      sent_bytes_per_rank=comm.sent_bytes)
    parameters.update(fit)
    if data.truth is not None:
        parameters.update(volume_errors(volume, data.truth))
    parameters.update(physical_units(volume, data.geometry.energy_kev, options.compound))
    history = {k: np.asarray(v, dtype=np.float64) for k, v in result.history.columns.items()}
    refined = refined_fields(objective, groups, comm)
    refined.update(method.fields(stepper))
    parameters.update(refined.pop("parameters", {}))
    if "angle_shifts" in refined:
        summary, line = shift_summary(refined["angle_shifts"], comm.gather(data.angles))
        parameters.update(summary, angle_shift_summary=line)
        bound = bound_reached(refined["angle_shifts"], options.shift_bound(data.geometry.volume_shape))
        if comm.is_main:
            log.info(line)
            if bound:
                log.warning(bound)
        if bound:
            parameters["warnings"] = [w for w in parameters["warnings"] if w != "none"] + [bound]
    parameters.update(requested, depths_of_field=found.propagation.depths_of_field,
                      depth_of_field_m=found.propagation.depth_of_field_m)
    parameters.update(probe_notes=probe_notes or ["none"], probe_modes_used=int(model.probe.shape[0]),
                      refined=",".join(g.name for g in groups) or "none")
    return Reconstruction(volume=volume, method=options.method, parameters=parameters, history=history,
                          geometry=data.geometry, **refined)
