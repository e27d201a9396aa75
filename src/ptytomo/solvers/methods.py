"""The reconstruction methods behind ``--method``, one object each: what differs between them.

A run (:func:`ptytomo.reconstruct.reconstruct`) is the same sequence of stages for every method; a
method decides only

- its iteration limit (``default_iterations``) and what ``iterate`` steps (:meth:`Method.stepper`:
  the joint optimiser, or one of the baselines of :mod:`.baselines`);
- how ``--tv auto`` walks its path of TV weights (:meth:`Method.choose_weights`): before the loop
  (joint, ADMM: the path on the training frames, the loop then finishes from the chosen point), inside
  its first step (Sequential: its own tomography after its ptychography), or not at all (ptycho);
- which misfit judges its result and which fields it adds to the file (``ptycho``: transmissions).

Adding a method: a subclass here and an entry in :data:`METHODS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..distributed import SOLO, Comm
from ..model import RefiningStepper
from ..objective import build_objective
from .baselines import Admm, Ptycho, Sequential
from .heldout import HeldOutChoice, choose_weights, finish_iterations, held_out_frames
from .optimizers import make_optimizer
from .priors import Regularised
from .run import iterate

log = logging.getLogger("ptytomo")


@dataclass
class Weights:
    """The TV weights a run iterates with, and where ``--tv auto``'s path left it."""

    tv_delta: float
    tv_beta: float
    choice: HeldOutChoice | None = None  # the path's record (None: fixed weights, or a resumed choice)
    finish: bool = False  # the loop is the short finish on all frames from the path's chosen point
    chosen: bool = False  # the weights came from a path (now or before a resume)

    def limit(self, iterations: int) -> int:
        """The loop's iteration limit: the method's, or the finish's."""
        return finish_iterations(iterations) if self.finish else iterations

    def start(self, u0: torch.Tensor) -> torch.Tensor:
        """The volume the loop starts from: the path's chosen point when the loop finishes from it."""
        if self.finish and self.choice is not None and self.choice.start is not None:
            return self.choice.start
        return u0



class Method:
    """The joint method: one cost over the whole forward model, the volume's optimiser stepping it."""

    name = "joint"
    default_iterations = 100  # optimiser iterations
    # per-angle shifts are invisible to 2D ptychography: only a method with the volume in its model refines
    # them in its loop (the others have them from the coarse alignment)
    refines_volume_groups = True

    def __init__(self, objective, data, options, groups: list, comm: Comm = SOLO):
        self.objective, self.data, self.options, self.groups, self.comm = objective, data, options, groups, comm

    def iterations(self) -> int:
        return self.options.iterations or self.default_iterations

    def description(self) -> str:
        return f"{self.name}/{self.options.optimizer}"

    def optimizer_for(self, tv_delta: float, tv_beta: float):
        """A function making the chosen optimiser of a (data or tomography) objective with the priors."""
        options = self.options

        def make(problem_objective):
            problem = Regularised(problem_objective, tv_delta, tv_beta, options.nonnegative)
            return make_optimizer(options.optimizer, problem, alpha0=options.alpha0, eps=options.eps,
                                  learning_rate=options.learning_rate)

        return make

    def loop_groups(self, groups) -> list:
        return list(groups) if self.refines_volume_groups else [g for g in groups if not g.needs_volume]

    def stepper(self, weights: Weights, groups=(), progress: bool = False):
        """What ``iterate`` steps, refining ``groups`` on the way."""
        optimizer = self.optimizer_for(weights.tv_delta, weights.tv_beta)(self.objective)
        groups = self.loop_groups(groups)
        return RefiningStepper(self.objective, optimizer, groups) if groups else optimizer

    # -- --tv auto ------------------------------------------------------------------------------------
    def choose_weights(self, tv_beta: float, resumed: dict | None) -> Weights:
        """The weights of the loop: the fixed ones (``tv_beta`` dose-scaled), the ones a resumed run chose,
        or those of the held-out path (:meth:`walk_path`)."""
        options = self.options
        if not options.chooses_tv():
            return Weights(options.tv_delta, tv_beta)
        chosen = (resumed or {}).get("extra", {})
        if "tv_delta" in chosen:  # a resumed --tv auto run keeps the weights it chose (and its finish)
            return Weights(chosen["tv_delta"], chosen["tv_beta"], finish=bool(chosen["finish"]), chosen=True)
        return self.walk_path(tv_beta)

    def walk_path(self, tv_beta: float) -> Weights:
        """The joint method's path on the training frames (after a calibration run when groups are
        refined); the loop then finishes on all frames from the chosen point."""
        scored = self.calibrate_for_heldout(tv_beta)
        choice = self.held_out_weights(scored, tv_beta, new_stepper=self.path_stepper(tv_beta))
        return Weights(choice.tv_delta, choice.tv_beta, choice=choice, finish=choice.start is not None, chosen=True)

    def path_stepper(self, tv_beta: float):
        """The stepper the path runs on the training frames (None: the joint optimiser)."""
        return None

    def calibrate_for_heldout(self, tv_beta: float):
        """With probe, positions (...) refined: a joint run with the fixed weights first, so that the path of
        weights is scored against a refined probe and refined windows, not the file's (a path run with a
        wrong probe or wrong positions ranks weights by how well they hide those errors).  Leaves the
        groups refined in the objective's model and returns the data with the refined positions, from
        which the held-out frames' objective is built; the path itself starts again from an empty volume,
        so the held-out frames shaped nothing but their own windows and (as 5 % of the frames) the shared
        probe.  Without groups: the data unchanged, no extra run."""
        objective, data, options, groups, comm = self.objective, self.data, self.options, self.groups, self.comm
        if not groups or held_out_frames(data, options.seed, comm)[1]:  # no groups, or no path (too few frames)
            return data
        joint = Method(objective, data, replace(options, method="joint"), groups, comm)
        stepper = joint.stepper(Weights(options.tv_delta, tv_beta), groups)
        # the joint method's iteration limit: the run's, or the joint default for a method whose
        # --iterations count other steps
        limit = self.iterations() if self.name == Method.name else Method.default_iterations
        model = objective.model
        u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
        if comm.is_main:
            log.info("--tv auto: refining %s with the fixed weights before the path of weights",
                     ",".join(g.name for g in groups))
        result = iterate(stepper, u0, limit, objective.scaling.to_u, tolerance=options.tolerance,
                         progress=False, description="joint (calibration for --tv auto)", main=comm.is_main,
                         comm=comm)
        objective.calibration_iterations = len(result.history)
        return with_model_positions(data, model)

    def held_out_weights(self, data, tv_beta: float, sequential=None, new_stepper=None) -> HeldOutChoice:
        """The weights of the lowest held-out misfit along a path scaled from the fixed ones
        (solvers.heldout.choose_weights): the joint method's path, ``new_stepper``'s or ``sequential``'s."""
        objective, options, comm = self.objective, self.options, self.comm
        probe = (objective.model.probe * objective.probe_max).cpu().numpy()
        choice = choose_weights(
            objective, data, options.tv_delta, tv_beta,
            dict(name=options.optimizer, alpha0=options.alpha0, eps=options.eps, learning_rate=options.learning_rate),
            options.nonnegative, self.iterations(), options.tolerance, seed=options.seed, comm=comm,
            build_objective=lambda subset: held_frames_objective(objective, subset, options, comm, probe),
            sequential=sequential, new_stepper=new_stepper)
        if choice.note and comm.is_main:
            log.warning(choice.note)
        return choice

    def weights_in_use(self, weights: Weights, stepper) -> dict:
        """What a ``--tv auto`` run's checkpoints carry, so that a resumed run does not choose again: the
        weights of the loop (those Sequential chose inside it, once it has)."""
        if not self.options.chooses_tv():
            return {}
        choice = getattr(stepper, "choice", None)
        pair = (choice.tv_delta, choice.tv_beta) if choice is not None else (weights.tv_delta, weights.tv_beta)
        return dict(zip(("tv_delta", "tv_beta"), pair), finish=weights.finish)

    def weights_after_loop(self, weights: Weights, stepper) -> Weights:
        """``weights``, or those a path inside the loop chose (Sequential's)."""
        choice = getattr(stepper, "choice", None)
        if choice is None:
            return weights
        return Weights(choice.tv_delta, choice.tv_beta, choice=choice, finish=weights.finish, chosen=True)

    # -- the result -----------------------------------------------------------------------------------
    def final_misfit(self, stepper, result) -> float:
        """The raw (probe-normalised, unscaled) data misfit of the result: its volume's model's."""
        return self.objective.value(result.u) / self.objective.scaling.cost

    def fields(self, stepper) -> dict:
        """Reconstruction fields the method adds beside the volume and the refined groups."""
        return {}


class SequentialMethod(Method):
    """Ptychography of every angle, then tomography of the projections (:class:`.baselines.Sequential`)."""

    name = "sequential"
    default_iterations = 100  # tomography iterations
    default_ptycho_iterations = 300  # ptychography sweeps before the tomography
    refines_volume_groups = False
    path_in_loop = False  # --tv auto: the path runs inside the first step (walk_path)

    def iterations(self) -> int:
        return self.options.iterations or (1 if self.options.tomography == "fbp" else self.default_iterations)

    def description(self) -> str:
        return self.name

    def stepper(self, weights: Weights, groups=(), progress: bool = False):
        options = self.options
        stepper = Sequential(self.objective, self.optimizer_for(weights.tv_delta, weights.tv_beta),
                             options.ptycho_iterations or self.default_ptycho_iterations, options.tolerance,
                             direct=options.tomography == "fbp", step=options.ptycho_step, progress=progress,
                             comm=self.comm, groups=self.loop_groups(groups))
        if self.path_in_loop and not weights.chosen:
            # Sequential's own path, once its ptychography on all frames has refined the probe and positions
            stepper.choose_weights = lambda sequential: self.held_out_weights(
                with_model_positions(self.data, self.objective.model), weights.tv_beta, sequential=sequential)
        return stepper

    def walk_path(self, tv_beta: float) -> Weights:
        """Sequential walks its path inside its first step (:meth:`stepper`), after its ptychography."""
        self.path_in_loop = True
        return Weights(self.options.tv_delta, tv_beta)


class AdmmMethod(Method):
    """ADMM-GD (:class:`.baselines.Admm`): its path and its loop take its own steps."""

    name = "admm"
    default_iterations = 50  # outer iterations (the paper ran 50)
    default_ptycho_iterations = 4  # sweeps per outer iteration
    refines_volume_groups = False

    def description(self) -> str:
        return self.name

    def stepper(self, weights: Weights, groups=(), progress: bool = False):
        options = self.options
        return Admm(self.objective, self.optimizer_for(weights.tv_delta, weights.tv_beta), options.rho,
                    options.rho_update, options.ptycho_iterations or self.default_ptycho_iterations,
                    options.tomo_iterations, options.ptycho_step, comm=self.comm, groups=self.loop_groups(groups))

    def path_stepper(self, tv_beta: float):
        # ADMM's own path: its steps (groups frozen) on the training frames, warm-started along the weights
        return lambda: self.stepper(Weights(self.options.tv_delta, tv_beta))


class PtychoMethod(Method):
    """2D ptychography of every angle (:class:`.baselines.Ptycho`): transmissions, no volume, no TV."""

    name = "ptycho"
    default_iterations = 300  # sweeps of 2D ptychography per angle
    refines_volume_groups = False

    def description(self) -> str:
        return self.name

    def stepper(self, weights: Weights, groups=(), progress: bool = False):
        return Ptycho(self.objective, self.options.ptycho_step, comm=self.comm, groups=self.loop_groups(groups))

    def final_misfit(self, stepper, result) -> float:
        """Judged by its transmissions: the last sweep's misfit, which its history already holds."""
        return result.history.last("cost") if len(result.history) else float("nan")

    def fields(self, stepper) -> dict:
        return {"transmission": stepper.transmissions().numpy().astype(np.complex64)}


METHODS = {method.name: method for method in (Method, SequentialMethod, AdmmMethod, PtychoMethod)}


def with_model_positions(data, model):
    """``data`` with its valid windows at the model's current (refined) positions."""
    positions = model.unpadded(model.positions).numpy()
    return replace(data, positions=np.where(data.valid_or_all()[..., None], positions, data.positions))


def held_frames_objective(objective, subset, options, comm: Comm, probe: np.ndarray):
    """The objective of the held-out frames alone, with ``objective``'s (possibly refined) probe and
    per-angle incident flux; ``subset`` carries the windows' (possibly refined) positions."""
    held = build_objective(subset, replace(options, refine="none"), comm, probe=probe)
    if objective.model.angle_scale is not None:
        held.model.angle_scale = objective.model.angle_scale.clone()
    return held
