"""TV weights chosen by the data: held-out frames and a warm-started path of weights (``--tv auto``).

A few percent of the frames of every angle (seeded) are held out: they get a
weight of zero in the training cost, and their misfit under the current
volume, which they did not shape, measures how well the volume predicts data
it has not seen.  Too much TV blurs the object (the held-out frames' far
fields are missed); too little lets noise and model error into the volume,
which predicts the next frame worse.  So the weights, and the iteration at
which to stop, are chosen by the held-out misfit along a path:

1. delta and beta weights scaled together, from 3x the fixed weights
   (``--tv-delta``, ``--tv-beta`` with the dose scaling; a zero weight stays
   zero) down by a factor 3 per step, each step warm-started from the
   previous one's end (large TV first: a smooth start the smaller weights
   refine; L-BFGS keeps its memory too).  Of the weights whose best misfit is
   within one standard error of the lowest (the held-out frames cannot tell
   them apart), the one closest to the fixed weights is kept: without noise
   the misfit keeps falling, by less and less, as TV weakens, since model
   error that fits the training frames fits the held-out ones too;
2. from that point, the beta weight alone, down and up by 3 and 9 (beta is
   the weak signal whose best weight differs most between data sets): the
   lowest misfit.

The path stops early once the held-out misfit has been worse than the best
for two weights in a row, and each weight stops at the tolerance or when
its held-out misfit has stopped improving (``STALE_PATIENCE``).  A second
objective made of the held-out frames alone scores each iterate (a forward
pass over 5 % of the frames).  The reconstruction then finishes on all the
frames from the chosen point.  No truth is used.

``--tv auto`` is the default of every method with a TV prior, and each walks
the path with its own steps: the joint optimiser, ADMM's steps
(``new_stepper``), or Sequential's tomography after a ptychography of the
training frames (``sequential``).  With the probe or positions refined,
``Method.calibrate_for_heldout`` (solvers/methods.py) refines them first.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .optimizers import make_optimizer
from .priors import Regularised
from .run import Plateau

HELDOUT_FRACTION = 0.05  # of each angle's frames
# Below this many held-out frames the misfit depends more on which frames were drawn than on the
# weights: neighbouring weights of the path differ by 0.05-1 % in held-out misfit (measured on the
# 16^3 cases of benchmarks/heldout.py, ~50 held-out frames), and fewer frames sample fewer features
# of the object.  The run then keeps the fixed weights and says so in one warning line (not an
# error: a default-like option should not fail on small data).
MIN_HELDOUT_FRAMES = 20
PATH_FACTOR = 3.0
JOINT_MULTIPLIERS = tuple(PATH_FACTOR**k for k in (1, 0, -1, -2, -3))  # x the fixed weights
BETA_MULTIPLIERS = (1 / 3, 1 / 9, 3.0, 9.0)  # x the beta weight chosen in stage 1
WORSE_WEIGHTS_PATIENCE = 2  # weights in a row worse than the best before a stage stops
# A weight stops when its held-out misfit has not improved by 1 % of its decrease so far for
# STALE_PATIENCE iterations (or at the tolerance on the training cost): the next weight then
# tells more than further iterations at this one.
HELDOUT_TOLERANCE = 1e-2
STALE_PATIENCE = 3
WARMUP = 2  # iterations at a new weight before its held-out misfit counts
PATH_BUDGET = 2.0  # path iterations in all, as a multiple of the iteration limit (the finish adds 10 %)


@dataclass
class Candidate:
    """One weight pair's best point on the path: what the one-standard-error rule compares."""

    weights: tuple[float, float]
    misfit: float  # mean raw cost per held-out frame
    spread: float  # the standard error of that mean over the held-out frames
    u: torch.Tensor  # the volume there (CPU copy)
    iteration: int  # path iterations done when it was reached


def closest_within_one_standard_error(candidates: list, reference: tuple[float, float]) -> "Candidate":
    """Of the weights whose held-out misfit is within one standard error of the lowest, those closest to
    ``reference`` (the fixed weights; distance in log weight): the held-out frames cannot tell those
    weights apart, so the documented default breaks the tie.  The standard error is that of the lowest
    mean misfit over the held-out frames (how much it would move had other frames been drawn; the
    one-standard-error rule of Hastie, Tibshirani & Friedman, Elements of Statistical Learning, 7.10)."""
    best = min(candidates, key=lambda c: c.misfit)
    tied = [c for c in candidates if c.misfit <= best.misfit + best.spread]

    def distance(c):
        return sum(abs(math.log(w / r)) for w, r in zip(c.weights, reference) if w > 0 and r > 0)

    return min(tied, key=lambda c: (distance(c), c.misfit))


@dataclass
class HeldOutChoice:
    """What the path chose: weights, the point to finish from, and the curve, for the output file."""

    tv_delta: float
    tv_beta: float
    start: torch.Tensor | None  # the volume (solver's u) at the chosen point; None: start from zero
    note: str | None = None  # why the fixed weights were kept (too few frames)
    record: dict = field(default_factory=dict)  # lists: the held-out curve along the path


def holdout_frames(valid: np.ndarray, fraction: float = HELDOUT_FRACTION, seed: int = 0,
                   first_angle: int = 0) -> np.ndarray:
    """Bool (A, J): round(fraction * valid frames) random frames of each angle, drawn from the
    angle's own seeded stream, keyed by its index in the whole file (``first_angle``: this rank's
    first), so that any number of ranks holds out the same frames."""
    held = np.zeros_like(valid, dtype=bool)
    for a in range(valid.shape[0]):
        candidates = np.flatnonzero(valid[a])
        count = int(round(fraction * len(candidates)))
        if count:
            rng = np.random.default_rng([seed, first_angle + a])
            held[a, rng.choice(candidates, size=count, replace=False)] = True
    return held


def too_few_frames_note(held_count: int, frame_count: int) -> str | None:
    if held_count >= MIN_HELDOUT_FRAMES:
        return None
    return (f"--tv auto: only {held_count} of {frame_count} frames held out ({HELDOUT_FRACTION:.0%} per angle; "
            f"at least {MIN_HELDOUT_FRAMES} are needed to compare weights): keeping the fixed TV weights")


def held_frames_only(data, held: np.ndarray):
    """``data`` restricted to the held-out frames (padded per angle with invalid entries): scoring an
    iterate then costs a forward pass over 5 % of the frames, not over all of them.  None when the
    frames stay in the file (streamed): the caller then scores by masking the full objective."""
    if not isinstance(data.intensities, np.ndarray):
        return None
    width = max(int(held.sum(axis=1).max()), 1)
    index = np.zeros((data.n_angles, width), dtype=int)
    valid = np.zeros((data.n_angles, width), dtype=bool)
    for a in range(data.n_angles):
        chosen = np.flatnonzero(held[a])
        index[a, : len(chosen)], valid[a, : len(chosen)] = chosen, True
    rows = np.arange(data.n_angles)[:, None]
    return replace(data, intensities=data.intensities[rows, index], positions=data.positions[rows, index],
                   valid=valid, truth_positions=None if data.truth_positions is None else data.truth_positions[rows, index])


@contextmanager
def frame_weights(objective, weight: torch.Tensor):
    """Evaluate ``objective`` on the frames ``weight`` (A, J, 1, 1) selects, restoring its own after."""
    kept = objective.valid_weight
    objective.valid_weight = weight
    try:
        yield objective
    finally:
        objective.valid_weight = kept


class HeldOutPath:
    """Runs the two stages of the path on the training frames, scoring every iterate on the held-out ones."""

    def __init__(self, objective, held: np.ndarray, optimizer_options: dict, nonnegative: bool,
                 iterations_per_weight: int, budget: int, tolerance: float, comm=None, held_objective=None,
                 new_optimizer=None, training=None):
        """``new_optimizer()`` makes a stage's optimiser of the regularised problem whose weights the path
        sets, and ``training()`` is the context its steps run in; by default the joint method's (its own
        objective with the held-out frames weighted zero).  Sequential passes its tomography's instead."""
        self.objective = objective
        self.held_objective = held_objective  # the held-out frames alone; None: mask the full objective
        model = objective.model
        all_frames = torch.ones(held.shape, dtype=torch.bool) if model.valid is None else model.valid.cpu()
        held_t = torch.as_tensor(held)
        as_weight = lambda flags: flags.to(device=model.device, dtype=model.real_dtype)[..., None, None]
        self.train_weight = as_weight(all_frames & ~held_t)
        self.held_weight = as_weight(held_t)
        self.held_count = comm.total(int(held.sum())) if comm is not None else int(held.sum())
        self.new_optimizer = new_optimizer or (lambda: make_optimizer(
            problem=Regularised(objective, 0.0, 0.0, nonnegative), **optimizer_options))
        self.training = training or (lambda: frame_weights(objective, self.train_weight))
        self.iterations_per_weight = iterations_per_weight
        self.budget = budget
        self.tolerance = tolerance
        self.curve = {"step": [], "iteration": [], "tv_delta": [], "tv_beta": [], "misfit": [],
                      "train_cost": [], "scored": []}
        self.comm = comm
        if held_objective is None:  # which entries of the scoring objective's (A, J) are held-out frames
            self.scored_frames = torch.as_tensor(held)
        else:
            scored = held_objective.model.valid
            self.scored_frames = (torch.ones(held_objective.model.positions.shape[:2], dtype=torch.bool)
                                  if scored is None else scored.cpu())
        self.lowest = math.inf  # the lowest held-out misfit of the path so far
        self.candidates: list[Candidate] = []  # every weight's best point, this stage
        self.iterations_done = 0
        self.spread = math.nan  # the standard error of the latest held-out misfit

    def heldout_misfit(self, u: torch.Tensor) -> float:
        """Mean raw data cost per held-out frame (probe-normalised units, comparable along the path); sets
        ``spread``, its standard error over the held-out frames."""
        if self.held_objective is not None:
            costs = self.held_objective.frame_costs(u)
        else:
            with frame_weights(self.objective, self.held_weight):
                costs = self.objective.frame_costs(u)
        frames = costs[self.scored_frames]
        sums = torch.stack([frames.sum(), (frames**2).sum()])
        total, squares = (self.comm.sum(sums) if self.comm is not None else sums).tolist()
        n = max(self.held_count, 1)
        mean = total / n
        self.spread = math.sqrt(max(squares / n - mean * mean, 0.0) / max(n - 1, 1))
        return mean

    def run_weight(self, step: int, weights: tuple[float, float], u: torch.Tensor,
                   optimizer) -> tuple[torch.Tensor, float]:
        """Iterate one weight pair from ``u``; returns the end point and the weight's best held-out misfit.

        ``optimizer`` is the stage's: only the TV weights change between its weights, so L-BFGS keeps
        its curvature pairs (a warm start of the memory as well as of the volume).  The first
        ``WARMUP`` iterates still mostly hold the previous weight's solution, so they do not score
        for this weight: the run finishes at the chosen weight, which must be good at its own solution."""
        optimizer.problem.tv_delta, optimizer.problem.tv_beta = weights
        optimizer.objective_changed()
        plateau, best_here, first_here, stale = Plateau(self.tolerance), math.inf, None, 0
        candidate = None
        for k in range(self.iterations_per_weight):
            if self.iterations_done >= self.budget:
                break
            with self.training():
                u, cost = optimizer.step(u)
            self.iterations_done += 1
            misfit = self.heldout_misfit(u)
            self.log_point(step, weights, misfit, cost, scored=k + 1 >= WARMUP)
            first_here = misfit if first_here is None else first_here
            if k + 1 < WARMUP:
                continue
            # An improvement counts when it is a noticeable share of the weight's decrease so far.
            if best_here - misfit > HELDOUT_TOLERANCE * max(first_here - misfit, 0.0):
                stale = 0
            else:
                stale += 1
            if misfit < best_here:
                best_here = misfit
                candidate = Candidate(weights, misfit, self.spread, u.detach().to("cpu", copy=True),
                                      self.iterations_done)
                self.lowest = min(self.lowest, misfit)
            if plateau.reached(cost) or stale >= STALE_PATIENCE:
                break
        if candidate is not None:
            self.candidates.append(candidate)
        return u, best_here

    def log_point(self, step, weights, misfit, cost, scored: bool) -> None:
        row = (step, self.iterations_done, weights[0], weights[1], misfit, cost, scored)
        for key, value in zip(self.curve, row):
            self.curve[key].append(float(value))

    def run_stage(self, weight_pairs, u: torch.Tensor, first_step: int) -> int:
        """One warm-started sequence of weight pairs; stops once it is past the best for a while."""
        worse = 0
        step = first_step
        optimizer = self.new_optimizer()
        for weights in weight_pairs:
            if self.iterations_done >= self.budget:
                break
            best_before = self.lowest
            u, best_here = self.run_weight(step, weights, u, optimizer)
            step += 1
            worse = worse + 1 if best_here > best_before else 0
            if worse >= WORSE_WEIGHTS_PATIENCE:
                break
        return step

    def run(self, tv_delta: float, tv_beta: float, u0: torch.Tensor) -> HeldOutChoice:
        step = self.run_stage([(tv_delta * s, tv_beta * s) for s in JOINT_MULTIPLIERS], u0, 0)
        stage_1 = [c for c in self.candidates if math.isfinite(c.misfit)]
        if not stage_1:  # no finite held-out misfit (a diverged path): nothing to choose from
            note = "--tv auto: the held-out misfit was never finite along the path: keeping the fixed TV weights"
            return HeldOutChoice(tv_delta=tv_delta, tv_beta=tv_beta, start=None, note=note,
                                 record={f"heldout_{k}": v for k, v in self.curve.items()})
        first = closest_within_one_standard_error(stage_1, (tv_delta, tv_beta))
        tie = min(stage_1, key=lambda c: c.misfit).spread
        (delta_1, beta_1), u_1 = first.weights, first.u.to(u0.device)
        # Stage 2, beta alone: down from the stage-1 point first, then up (each branch warm from it).
        self.candidates = []
        step = self.run_stage([(delta_1, beta_1 * s) for s in BETA_MULTIPLIERS if s < 1], u_1.clone(), step)
        self.run_stage([(delta_1, beta_1 * s) for s in BETA_MULTIPLIERS if s > 1], u_1.clone(), step)
        # Stage 2 keeps the lowest misfit: beta is the weak signal whose weight differs most between data
        # sets, and the stage explores it from the stage-1 point only.
        chosen = min([first] + [c for c in self.candidates if math.isfinite(c.misfit)], key=lambda c: c.misfit)
        record = {f"heldout_{k}": v for k, v in self.curve.items()}
        record.update(heldout_frames=self.held_count, heldout_chosen_iteration=chosen.iteration,
                      heldout_path_iterations=self.iterations_done, heldout_best_misfit=self.lowest,
                      heldout_chosen_misfit=chosen.misfit, heldout_standard_error=tie)
        return HeldOutChoice(tv_delta=chosen.weights[0], tv_beta=chosen.weights[1], start=chosen.u.to(u0.device),
                             record=record)


FINISH_FRACTION = 0.1  # of the iteration limit: the finish on all frames from the chosen point


def finish_iterations(iterations: int) -> int:
    """The finish only adds the held-out frames' information to a converged point: a short run."""
    return min(iterations, max(5, math.ceil(FINISH_FRACTION * iterations)))


def held_out_frames(data, seed: int = 0, comm=None) -> tuple[np.ndarray, str | None, int]:
    """This rank's held-out frames (A, J), the note when they are too few to compare weights (None
    otherwise), and their count over all ranks."""
    valid = data.valid_or_all()
    first_angle = 0
    if comm is not None and comm.size > 1:
        first_angle = int(comm.gather(np.array([valid.shape[0]]))[: comm.rank].sum())
    held = holdout_frames(valid, seed=seed, first_angle=first_angle)
    total = lambda n: comm.total(n) if comm is not None else n
    held_total = total(int(held.sum()))
    return held, too_few_frames_note(held_total, total(int(valid.sum()))), held_total


def choose_weights(objective, data, tv_delta: float, tv_beta: float, optimizer_options: dict,
                   nonnegative: bool, iterations: int, tolerance: float, seed: int = 0, comm=None,
                   build_objective=None, sequential=None, new_stepper=None) -> HeldOutChoice:
    """The TV weights (and the volume to finish from) of the lowest held-out misfit; ``tv_delta`` and
    ``tv_beta`` are the fixed weights the path is scaled from.  ``iterations`` is the run's limit:
    the path takes at most ``PATH_BUDGET`` times it.  ``build_objective(data)`` makes the objective
    of a subset of ``data`` (the held-out frames), with ``objective``'s loss and probe.

    With ``sequential`` (a :class:`~ptytomo.solvers.baselines.Sequential` whose ptychography ran on all
    frames), the path is Sequential's own: its ptychography again on the training frames (probe and
    positions as refined, not refined further), then its tomography along the path, every iterate
    scored by the held-out frames under the volume; the returned start is a tomography iterate, and
    the tomography target is left as it was (all frames).  Sequential's per-angle ptychography leaves
    artefacts that only TV removes, so its best weights are not the joint method's.

    ``new_stepper()`` (ADMM's) replaces the joint optimiser on the training frames: a stepper with
    ``problem`` (the regularised tomography whose weights the path sets), ``objective_changed`` and
    ``step``, warm-started from the point it is first stepped from."""
    held, note, held_total = held_out_frames(data, seed, comm)
    if note:
        return HeldOutChoice(tv_delta=tv_delta, tv_beta=tv_beta, start=None, note=note,
                             record={"heldout_frames": held_total})
    per_weight = max(5, math.ceil(PATH_BUDGET * iterations / len(JOINT_MULTIPLIERS)))
    held_data = held_frames_only(data, held) if build_objective is not None else None
    held_objective = build_objective(held_data) if held_data is not None else None
    path = HeldOutPath(objective, held, optimizer_options, nonnegative, per_weight,
                       budget=int(PATH_BUDGET * iterations), tolerance=tolerance, comm=comm,
                       held_objective=held_objective, new_optimizer=new_stepper)
    model = objective.model
    u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    if sequential is None:
        return path.run(tv_delta, tv_beta, u0)
    tomography = sequential.tomography
    all_frames = tomography.target
    with frame_weights(objective, path.train_weight):
        tomography.target = sequential.retrieve(groups=(), label="training frames for --tv auto")
    path.new_optimizer = lambda: sequential.solver(tomography)
    path.training = nullcontext
    try:
        return path.run(tv_delta, tv_beta, u0)
    finally:
        tomography.target = all_frames
