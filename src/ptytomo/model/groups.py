"""Unknowns as parameter groups, and the stepper that updates any set of them.

The volume is always refined, by one of the optimisers of
:mod:`ptytomo.solvers.optimizers` (which run their own line searches).  Every
other unknown -- probe modes, scan positions, later per-angle shifts -- is a
:class:`ParameterGroup`: it listens to the detector residuals of the
objective's evaluations (:class:`ptytomo.objective.BatchResidual`), chains
them to its own variable, and takes a Gauss-Newton-preconditioned step when
told to.  A group knows nothing of the others, so adding one touches none of
them: subclass, implement ``accumulate`` and ``update``, list it in
``GROUPS`` of :mod:`ptytomo.model`.

The residuals a group uses are those of the volume step's accepted
evaluation: L-BFGS's line search ends on the point it returns, so the
refinement costs no evaluation of its own there (other optimisers get one).
After the groups move, the volume optimiser is told that its objective
changed, and re-evaluates once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupOptions:
    """When and how hard a group is refined; subclasses add their own knobs."""

    enabled: bool = False
    start: int = 1  # first iteration (or sweep) at which the group moves
    every: int = 1  # move every N iterations from ``start`` on
    step: float = 1.0  # fraction of the Gauss-Newton step
    updates: int = 1  # steps per active iteration of the joint method (the extra ones against the same volume)
    wait: int = 0  # with a group to wait for (``ParameterGroup.waits_for``): at most this many iterations more


class ParameterGroup:
    """One refinable unknown of the forward model (not the volume)."""

    name = ""
    needs_volume = False  # True: only a method with the volume in its model (joint) can refine it

    def __init__(self, model, options: GroupOptions):
        self.model = model
        self.options = options
        # A group that must not move before another has settled (positions wait for the probe: a probe
        # far from the truth leaves residuals the windows would chase) is told so by its builder.
        self.waits_for: ParameterGroup | None = None
        self.released_at: int | None = None  # the iteration at which the group first moved

    @property
    def settled(self) -> bool:
        """Whether the group's latest steps have stopped changing it (groups that can tell override)."""
        return True

    def active(self, iteration: int) -> bool:
        """Whether the group moves at ``iteration``: from ``start`` on, once the group it waits for has
        settled or ``wait`` iterations have passed, then every ``every`` iterations."""
        o = self.options
        if not o.enabled or iteration < o.start:
            return False
        if self.released_at is None:
            if self.waits_for is not None and not self.waits_for.settled and iteration < o.start + o.wait:
                return False
            self.released_at = iteration
        return (iteration - self.released_at) % max(o.every, 1) == 0

    def started(self) -> bool:
        """Whether the group has begun to move (the tolerance may not end a run before)."""
        return self.released_at is not None or not self.options.enabled

    # -- one evaluation: begin, accumulate per angle batch, finish (sum over ranks)
    def begin(self) -> None:
        raise NotImplementedError

    def accumulate(self, residual) -> None:
        raise NotImplementedError

    def finish(self, reduce) -> None:
        """``reduce`` sums a partial over ranks; groups shared by all angles need it."""

    def update(self) -> None:
        """Take one step from the latest evaluation's gradient and put the result into the model."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class RefiningStepper:
    """Steps the volume with ``volume_optimizer`` and every active group from the same residuals.

    Has the optimisers' interface (``step``, ``state_dict``, ``load_state_dict``), so
    :func:`ptytomo.solvers.iterate` runs it like any optimiser.
    """

    def __init__(self, objective, volume_optimizer, groups: list[ParameterGroup]):
        self.objective = objective
        self.volume = volume_optimizer
        self.groups = [g for g in groups if g.options.enabled]
        self.iteration = 0
        self.diagnostics: dict[str, float] = {}

    def step(self, u: torch.Tensor):
        self.iteration += 1
        active = [g for g in self.groups if g.active(self.iteration)]
        with self.objective.listening(active):
            u_next, cost = self.volume.step(u)
        if active:
            if self.objective.last_point is not u_next:  # the last evaluation was elsewhere: one more
                with self.objective.listening(active):
                    self.objective.value_and_grad(u_next, need_grad=False)
            for group in active:
                group.update()
            self.extra_updates(u_next, active)
            self.volume.objective_changed()
        self.diagnostics = dict(getattr(self.volume, "diagnostics", {}))  # e.g. L-BFGS's evaluations
        for group in self.groups:
            self.diagnostics.update(getattr(group, "diagnostics", {}))
        return u_next, cost

    def extra_updates(self, u: torch.Tensor, active: list[ParameterGroup]) -> None:
        """Further steps of the groups that take several per iteration, against the same volume: a
        probe needs on the order of a hundred steps (docs/refinement.md), the volume far fewer, and
        an evaluation without the volume's gradient costs about half of one with it."""
        for done in range(1, max(g.options.updates for g in active)):
            listening = [g for g in active if g.options.updates > done and not g.settled]
            if not listening:  # the groups have stopped changing: further steps would cost for nothing
                return
            with self.objective.listening(listening):
                self.objective.value_and_grad(u, need_grad=False)
            for group in listening:
                group.update()

    @property
    def may_stop(self) -> bool:
        """The tolerance may end the run only once every group has started to move."""
        return all(g.started() for g in self.groups)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "volume": self.volume.state_dict(), "groups": group_states(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.volume.load_state_dict(state["volume"])
        load_group_states(self.groups, state["groups"])


def group_states(groups: list[ParameterGroup]) -> dict:
    """Every group's checkpoint state, with the iteration its schedule released it at."""
    return {g.name: {"state": g.state_dict(), "released_at": g.released_at} for g in groups}


def load_group_states(groups: list[ParameterGroup], states: dict) -> None:
    for group in groups:
        group.load_state_dict(states[group.name]["state"])
        group.released_at = states[group.name]["released_at"]
