"""The paper's baselines as steppers for :func:`ptytomo.solvers.iterate` (METHOD.md).

- :class:`Sequential`: ptychography of every angle to convergence first (its
  own progress bar), then one tomography; each ``step`` is one iteration of
  the tomography optimiser (or the whole FBP).
- :class:`Admm`: ADMM-GD of Aslan et al. (2019); each ``step`` is one outer
  iteration: proximal ptychography sweeps, tomography steps, multiplier
  update, optional residual balancing of rho.

Both share the run loop with the joint method, so history, progress bar,
tolerance, Ctrl-C, checkpoints and resume behave the same.  The tomography
half is a :class:`~ptytomo.solvers.priors.Regularised` least-squares problem
solved by the same optimisers (TV and non-negativity included), so the
baselines get the priors the joint method gets.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ..distributed import SOLO, Comm, gather_angles, share_of
from ..model.groups import group_states, load_group_states
from .run import Plateau
from .subproblems import PtychographyRetrieval, TomographyObjective

TomographySolver = Callable[[TomographyObjective], object]  # builds an optimiser for a target


class Sequential:
    """Sequential baseline: ``retrieve`` all angles, then tomography steps."""

    def __init__(self, objective, solver: TomographySolver, ptycho_iterations: int, tolerance: float = 0.0,
                 direct: bool = False, step: float = 1.0, progress: bool = True, comm: Comm = SOLO, groups=()):
        self.comm = comm
        self.groups = list(groups)  # refined during the ptychography (probe, positions)
        self.retrieval = PtychographyRetrieval(objective)
        self.tomography = TomographyObjective(objective.model, self.retrieval.lit, objective.reduce)
        self.solver = solver
        self.ptycho_iterations = ptycho_iterations
        self.tolerance = tolerance
        self.direct = direct
        self.step_size = step
        self.progress = progress
        self.inner = None
        self.diagnostics: dict[str, float] = {}
        self.ptycho_cost = float("nan")
        # --tv auto: called once, after the ptychography on all frames, with this stepper; returns a
        # solvers.heldout.HeldOutChoice (weights, start), kept as ``choice``
        self.choose_weights = None
        self.choice = None

    def retrieve(self, groups=None, label: str = "") -> torch.Tensor:
        """Ptychography of every angle from psi = 1, refining ``groups`` (default: the run's) on the way;
        the projections for the tomography."""
        groups = self.groups if groups is None else list(groups)
        psi = self.retrieval.initial()
        plateau = Plateau(self.tolerance)
        with tqdm(total=self.ptycho_iterations, desc="sequential/ptychography" + (f" ({label})" if label else ""),
                  unit="it", disable=not self.progress or None) as bar:
            for sweep in range(1, self.ptycho_iterations + 1):
                cost = self.retrieval.sweep(psi, step=self.step_size, groups=groups, index=sweep)
                bar.set_postfix(cost=f"{cost:.4g}")
                bar.update()
                if plateau.reached(cost) and all(g.started() for g in groups):
                    break
        self.ptycho_cost = cost
        return self.retrieval.projections(psi)

    def step(self, u: torch.Tensor):
        if self.tomography.target is None:
            self.tomography.target = self.retrieve()
            ptycho_cost = self.ptycho_cost
            self.inner = self.solver(self.tomography)
            if self.choose_weights is not None:  # --tv auto: Sequential's own held-out path
                self.choice = self.choose_weights(self)
                self.ptycho_cost = ptycho_cost
                self.inner.problem.tv_delta, self.inner.problem.tv_beta = self.choice.tv_delta, self.choice.tv_beta
                if self.choice.start is not None:
                    u = self.choice.start
        self.diagnostics = {"ptycho_cost": self.ptycho_cost}
        if self.direct:
            u = self.tomography.filtered_back_projection()
            return u, self.tomography.value(u)
        return self.inner.step(u)

    def state_dict(self) -> dict:
        return {"projections": gather_angles(self.comm, self.tomography.target), "ptycho_cost": self.ptycho_cost,
                "inner": None if self.inner is None else self.inner.state_dict(),
                "groups": group_states(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        load_group_states(self.groups, state["groups"])
        self.retrieval.refresh_illumination()
        self.ptycho_cost = state["ptycho_cost"]
        self.tomography.target = share_of(self.comm, state["projections"], self.retrieval.lit)
        if self.tomography.target is not None:
            self.inner = self.solver(self.tomography)
            if state["inner"] is not None:
                self.inner.load_state_dict(state["inner"])


class Admm:
    """ADMM-GD: psi = exp(i R' u) split off, coupled by the multiplier ``lam`` and the penalty ``rho``."""

    def __init__(self, objective, solver: TomographySolver, rho: float, rho_update: str, ptycho_iterations: int,
                 tomo_iterations: int, ptycho_step: float = 1.0, comm: Comm = SOLO, groups=()):
        self.comm = comm
        self.groups = list(groups)  # refined during the ptychography steps (probe, positions)
        self.sweeps = 0
        self.model = objective.model
        self.retrieval = PtychographyRetrieval(objective)
        self.tomography = TomographyObjective(objective.model, self.retrieval.lit, objective.reduce)
        self.rho_update = rho_update
        self.ptycho_iterations = ptycho_iterations
        self.tomo_iterations = tomo_iterations
        self.ptycho_step = ptycho_step
        psi = self.retrieval.initial()
        self.state = {"psi": psi, "h": psi.clone(), "lam": torch.zeros_like(psi), "rho": float(rho)}
        self.started = False  # the first step sets psi = h = exp(i R' u) of its u (psi = 1 from u = 0)
        # One tomography optimiser for the whole run: its curvature memory carries over targets.
        self.inner = solver(self.tomography)
        self.diagnostics: dict[str, float] = {}

    @property
    def problem(self):
        """The regularised tomography problem, whose TV weights ``--tv auto``'s path sets."""
        return self.inner.problem

    def objective_changed(self) -> None:
        self.inner.objective_changed()

    def transmission(self, u: torch.Tensor) -> torch.Tensor:
        """h = exp(i R' u) on the padded plane for all angles."""
        h = torch.empty_like(self.state["psi"])
        x = u / self.tomography.scaling.to_u
        for b, batch in enumerate(self.model.batches):
            h[batch] = self.model.transmission(x, b)
        return h

    def step(self, u: torch.Tensor):
        st = self.state
        if not self.started:  # a warm start (--tv auto's path and finish) splits off its own transmission
            self.started = True
            if bool(u.any()):
                st["h"] = self.transmission(u)
                st["psi"], st["lam"] = st["h"].clone(), torch.zeros_like(st["h"])
        psi, lam, rho = st["psi"], st["lam"], st["rho"]
        # 1. ptychography: proximal steps towards h - lam / rho
        target = st["h"] - lam / rho
        for _ in range(self.ptycho_iterations):
            self.sweeps += 1
            cost = self.retrieval.sweep(psi, target, rho, self.ptycho_step, groups=self.groups, index=self.sweeps)
        # 2. tomography: fit R' u to -i log(psi + lam / rho), unwrapped relative to the current
        # projections so that the phase of a thick sample never has to be unwrapped from scratch
        current = torch.cat([self.tomography.project(u, b) for b in range(len(self.model.batches))])
        self.tomography.target = self.retrieval.projections(psi + lam / rho, reference=current)
        self.inner.objective_changed()
        for _ in range(self.tomo_iterations):
            u, _ = self.inner.step(u)
        # 3. multiplier and penalty
        h_previous, st["h"] = st["h"], self.transmission(u)
        lam += rho * (psi - st["h"])
        reduce = self.tomography.reduce
        primal = float(reduce(torch.linalg.vector_norm(psi - st["h"]).double() ** 2)) ** 0.5
        dual = rho * float(reduce(torch.linalg.vector_norm(st["h"] - h_previous).double() ** 2)) ** 0.5
        self.diagnostics = {"primal_residual": primal, "dual_residual": dual, "rho": rho}
        if self.rho_update == "balance":
            if primal > 10 * dual:
                st["rho"] = 2 * rho
            elif dual > 10 * primal:
                st["rho"] = rho / 2
        return u, cost

    @property
    def may_stop(self) -> bool:
        """The tolerance may end the run only once every refined group has started to move."""
        return all(g.started() for g in self.groups)

    # Per-angle state and its value on the free-space padding, which each rank sizes from its own
    # scan positions: checkpoints keep the volume's projection box, the same shape on every rank.
    PER_ANGLE = {"psi": 1.0, "h": 1.0, "lam": 0.0}

    def state_dict(self) -> dict:
        state = {k: gather_angles(self.comm, self.model.crop(v)) if k in self.PER_ANGLE else v
                 for k, v in self.state.items()}
        return {**state, "inner": self.inner.state_dict(), "sweeps": self.sweeps,
                "groups": group_states(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.started = True
        self.inner.load_state_dict(state.pop("inner"))
        self.sweeps = int(state.pop("sweeps"))
        load_group_states(self.groups, state["groups"])
        state.pop("groups")
        self.retrieval.refresh_illumination()
        like = self.state["psi"]
        self.state = {}
        for key, value in state.items():
            if key in self.PER_ANGLE:
                free = self.PER_ANGLE[key]
                value = self.model.pad(share_of(self.comm, value, like) - free) + free
            self.state[key] = value


class Ptycho:
    """2D ptychography of every angle on its own (``--method ptycho``): one sweep per iteration,
    with the same refinement as Sequential; the result is the transmissions, not a volume."""

    def __init__(self, objective, step: float = 1.0, comm: Comm = SOLO, groups=()):
        self.comm = comm
        self.retrieval = PtychographyRetrieval(objective)
        self.groups = list(groups)
        self.step_size = step
        self.psi = self.retrieval.initial()
        self.sweeps = 0
        self.diagnostics: dict[str, float] = {}

    def step(self, u: torch.Tensor):
        self.sweeps += 1
        cost = self.retrieval.sweep(self.psi, step=self.step_size, groups=self.groups, index=self.sweeps)
        return u, cost

    @property
    def may_stop(self) -> bool:
        """The tolerance may end the run only once every refined group has started to move."""
        return all(g.started() for g in self.groups)

    def transmissions(self) -> torch.Tensor:
        """Every angle's transmission on the volume's projection box (A, Nz, Nu), all ranks' angles."""
        return gather_angles(self.comm, self.retrieval.model.crop(self.psi))

    def state_dict(self) -> dict:
        return {"psi": self.transmissions(), "sweeps": self.sweeps,
                "groups": group_states(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        load_group_states(self.groups, state["groups"])
        self.retrieval.refresh_illumination()
        self.sweeps = int(state["sweeps"])
        model = self.retrieval.model
        self.psi = model.pad(share_of(self.comm, state["psi"], self.psi) - 1.0) + 1.0
