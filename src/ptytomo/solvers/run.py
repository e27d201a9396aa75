"""The iteration loop every method shares: history, progress bar, stopping, checkpoints.

A method provides ``step(u) -> (u, cost)`` and ``state_dict``/``load_state_dict``;
this loop records the history (iteration, cost, elapsed seconds and, with a
truth, rmse_delta and rmse_beta in physical units), shows the cost on a
progress bar, stops at the iteration limit, at the tolerance or on Ctrl-C
(keeping what it had), and writes checkpoints from which ``resume`` continues
to the same result as an uninterrupted run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import PtytomoError
from ..metrics import rmse


@dataclass
class History:
    columns: dict[str, list[float]] = field(default_factory=dict)

    def append(self, **row: float) -> None:
        for key, value in row.items():
            self.columns.setdefault(key, []).append(float(value))

    def __len__(self) -> int:
        return len(self.columns.get("iteration", []))

    def last(self, key: str) -> float:
        return self.columns[key][-1]


@dataclass
class RunResult:
    u: torch.Tensor
    history: History
    stopped_by: str  # iterations | tolerance | interrupted


class Plateau:
    """The tolerance rule: the relative cost change stayed below ``tolerance`` for ``patience`` steps."""

    def __init__(self, tolerance: float, patience: int = 3):
        self.tolerance, self.patience, self.previous, self.quiet = tolerance, patience, None, 0

    def reached(self, cost: float) -> bool:
        if self.tolerance and self.previous is not None:
            change = abs(self.previous - cost) / max(abs(cost), 1e-30)
            self.quiet = self.quiet + 1 if change < self.tolerance else 0
        self.previous = cost
        return bool(self.tolerance) and self.quiet >= self.patience


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic: a crash while writing leaves the previous checkpoint intact."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    if not Path(path).exists():
        raise PtytomoError(f"--resume: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise PtytomoError(f"--resume: {path} is not a ptytomo checkpoint ({exc.__class__.__name__})") from None


def iterate(
    optimizer,
    u0: torch.Tensor,
    iterations: int,
    to_physical: float,
    truth: torch.Tensor | None = None,
    tolerance: float = 0.0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: dict | None = None,
    progress: bool = True,
    description: str = "reconstruct",
    main: bool = True,
    identity: dict | None = None,
) -> RunResult:
    """Run ``optimizer`` from ``u0`` (or a resumed checkpoint) for up to ``iterations`` in all.

    ``to_physical`` maps the solver's unknown to delta + i beta (x = u / to_physical).
    The tolerance stops when the relative cost change stays below it for 3 iterations.
    Of several ranks (which all see the same costs) only the ``main`` one shows
    progress and writes checkpoints; a checkpoint holds nothing rank-specific,
    so it resumes on any number of ranks.  ``identity`` (method, optimiser,
    precision) is stored with it, and a checkpoint of another kind is refused.
    """
    u = u0
    history = History()
    start_iteration = 0
    elapsed_before = 0.0
    if resume is not None:
        if identity and resume.get("identity", identity) != identity:
            written = " ".join(f"--{k} {v}" for k, v in resume["identity"].items())
            raise PtytomoError(f"--resume: the checkpoint was written with {written}; use the same options")
        u = resume["u"].to(device=u0.device, dtype=u0.dtype)
        history = History({k: list(v) for k, v in resume["history"].items()})
        start_iteration = int(resume["iteration"])
        elapsed_before = history.last("time_s") if len(history) else 0.0
        optimizer.load_state_dict(_to_device(resume["optimizer"], u0.device))

    def checkpoint(iteration: int) -> None:
        if checkpoint_path:
            state = optimizer.state_dict()  # on every rank: a baseline gathers its per-angle state
            if main:
                save_checkpoint(
                    checkpoint_path,
                    {"u": u.cpu(), "iteration": iteration, "history": history.columns, "identity": identity,
                     "optimizer": _to_device(state, torch.device("cpu"))},
                )

    stopped_by = "iterations"
    plateau = Plateau(tolerance)
    for cost in history.columns.get("cost", []):  # a resumed run stops where the whole run would
        plateau.reached(cost)
    started = time.perf_counter()
    bar = tqdm(total=iterations, initial=start_iteration, desc=description, unit="it",
               disable=not (progress and main) or None)
    try:
        for iteration in range(start_iteration + 1, iterations + 1):
            u_next, cost = optimizer.step(u)
            u = u_next
            row = {"iteration": iteration, "cost": cost, "time_s": elapsed_before + time.perf_counter() - started}
            row.update(getattr(optimizer, "diagnostics", {}))  # method-specific columns (ADMM residuals, ...)
            if truth is not None:
                x = u / to_physical
                row["rmse_delta"] = rmse(x.real, truth.real)
                row["rmse_beta"] = rmse(x.imag, truth.imag)
            history.append(**row)
            bar.set_postfix(cost=f"{cost:.4g}")
            bar.update()
            if checkpoint_every and iteration % checkpoint_every == 0:
                checkpoint(iteration)
            if plateau.reached(cost):
                stopped_by = "tolerance"
                break
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        bar.close()
    if checkpoint_path and len(history):
        checkpoint(int(history.last("iteration")))
    return RunResult(u=u, history=history, stopped_by=stopped_by)


def _to_device(state, device):
    if torch.is_tensor(state):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_device(v, device) for v in state)
    return state
