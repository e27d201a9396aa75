"""The iteration loop every method shares: history, progress bar, stopping, checkpoints.

A method provides ``step(u) -> (u, cost)`` and ``state_dict``/``load_state_dict``;
this loop records the history (iteration, cost, elapsed seconds and, with a
truth, rmse_delta and rmse_beta in physical units), shows the cost on a
progress bar, stops at the iteration limit, at the tolerance or on Ctrl-C
(keeping what it had), and writes checkpoints from which ``resume`` continues
to the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import suppress
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
        """Add one row.  A column first seen in it is NaN in the earlier rows and a column it lacks is
        NaN in it (diagnostics that start late, e.g. with a refinement), so all columns keep one length."""
        rows = len(self)
        for key in list(self.columns) + [k for k in row if k not in self.columns]:
            self.columns.setdefault(key, [math.nan] * rows).append(float(row.get(key, math.nan)))

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
    """The tolerance rule: the cost change stayed below ``tolerance`` for ``patience`` steps, relative
    to the cost *and* to the decrease so far, ``|c_prev - c| / min(|c|, |c_first - c|)``.

    Relative to the cost alone, a cost with a large constant offset (a likelihood at low dose, a
    misfit dominated by noise or model error) looks flat from the first iterations, while the volume
    is still empty; the decrease so far is the scale of the progress still to come.  Taking the
    smaller of the two never stops earlier than the cost-relative rule did.
    """

    def __init__(self, tolerance: float, patience: int = 3):
        self.tolerance, self.patience, self.previous, self.quiet = tolerance, patience, None, 0
        self.first = None

    def reached(self, cost: float) -> bool:
        if self.first is None:
            self.first = cost
        if self.tolerance and self.previous is not None:
            scale = min(abs(cost), abs(self.first - cost))
            change = abs(self.previous - cost) / max(scale, 1e-30)
            self.quiet = self.quiet + 1 if change < self.tolerance else 0
        self.previous = cost
        return bool(self.tolerance) and self.quiet >= self.patience


CHECKPOINT_FORMAT = "ptytomo-checkpoint"
CHECKPOINT_KEYS = ("u", "iteration", "history", "optimizer")
# Test hook only: seconds to pause once part of the temporary file is written,
# so that a test can kill a run in the middle of a checkpoint write.
_PAUSE_ENV = "PTYTOMO_TEST_CHECKPOINT_PAUSE_S"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic and durable: a crash or SIGKILL at any moment leaves the previous or the new checkpoint.

    The bytes go to a temporary file in the same folder, which is flushed and
    fsync'ed before ``os.replace`` puts it in place; the folder is fsync'ed
    after, so that the rename itself survives a power cut.
    """
    path = Path(path)
    _remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            # Straight to the file, not through a buffer: a checkpoint can be tens of volumes.
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, _pausing(f))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
        with suppress(OSError):
            os.remove(temporary)
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        raise PtytomoError(f"--checkpoint {path}: cannot write it ({reason}); "
                           "the previous checkpoint is kept") from None
    _fsync_folder(path.parent)


class _PausingWriter:
    """A file that pauses once, after its first write reached the disk (the test hook above)."""

    def __init__(self, f, pause_s: float):
        self.f, self.pause_s = f, pause_s

    def write(self, data) -> int:
        written = self.f.write(data)
        if self.pause_s:
            self.f.flush()
            time.sleep(self.pause_s)
            self.pause_s = 0.0
        return written

    def flush(self) -> None:
        self.f.flush()


def _pausing(f):
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    return _PausingWriter(f, pause) if pause > 0 else f


def _fsync_folder(folder: Path) -> None:
    with suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of killed runs (their process is gone) would otherwise pile up."""
    for temporary in path.parent.glob(f".{path.name}.tmp*"):
        pid = temporary.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            with suppress(OSError):
                temporary.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's payload; a missing, truncated or foreign file is refused in one line."""
    if not Path(path).exists():
        raise PtytomoError(f"--resume: checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: torch's reader says little that helps
        raise PtytomoError(f"--resume: {path} is truncated or not a ptytomo checkpoint "
                           f"({exc.__class__.__name__}, {Path(path).stat().st_size} bytes)") from None
    if not isinstance(payload, dict) or any(key not in payload for key in CHECKPOINT_KEYS):
        raise PtytomoError(f"--resume: {path} is not a ptytomo checkpoint (it lacks "
                           f"{', '.join(k for k in CHECKPOINT_KEYS if not isinstance(payload, dict) or k not in payload)})")
    return payload


def identity_mismatch(written: dict, current: dict) -> str | None:
    """One line naming what differs between a checkpoint's identity and this run's, None when alike."""
    differing = [k for k in sorted(set(written) | set(current)) if written.get(k) != current.get(k)]
    if not differing:
        return None
    parts = []
    for key in differing:
        if key == "data":
            parts.append("other data (fingerprint "
                         f"{written.get('data', 'none')}, this file {current.get('data', 'none')})")
        else:
            parts.append(f"--{key.replace('_', '-')} {written.get(key, '(unset)')} (now {current.get(key, '(unset)')})")
    return "--resume: the checkpoint was written with " + ", ".join(parts) + "; use the same data and options"


class StopRequest:
    """Ctrl-C during the loop asks to stop after the current iteration, so the state stays consistent.

    Under torchrun every rank gets the signal (from the terminal and again from
    torchrun), at different moments and possibly inside a collective: each rank
    only notes it, and the ranks agree after each iteration (``agree``) so that
    all stop at the same one.  A single process stops at once on a second
    Ctrl-C (``forced``; the last checkpoint written is then kept as it is).
    """

    def __init__(self, escalate: bool, announce: bool = True):
        self.escalate = escalate
        self.announce = announce  # one rank says it, not all
        self.requested = False
        self.forced = False
        self._previous = None

    # SIGTERM is what a batch scheduler (Slurm, PBS) sends before it kills a job at its time limit:
    # it stops after the iteration like a first Ctrl-C, so the run ends with its file and checkpoint.
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "StopRequest":
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: Ctrl-C keeps raising KeyboardInterrupt
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            for s, previous in self._previous.items():
                signal.signal(s, previous)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            if not self.requested and self.announce:
                print("\nptytomo: terminated: stopping after this iteration", file=sys.stderr, flush=True)
            self.requested = True
            return
        if self.requested and self.escalate:
            self.forced = True
            raise KeyboardInterrupt
        if not self.requested and self.announce:
            print("\nptytomo: stopping after this iteration" + (" (Ctrl-C again to stop at once)" if self.escalate else ""),
                  file=sys.stderr, flush=True)
        self.requested = True


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
    comm=None,
    extra=None,
) -> RunResult:
    """Run ``optimizer`` from ``u0`` (or a resumed checkpoint) for up to ``iterations`` in all.

    ``to_physical`` maps the solver's unknown to delta + i beta (x = u / to_physical).
    The tolerance stops when the cost change, relative to the cost and to the decrease so far
    (:class:`Plateau`), stays below it for 3 iterations.
    Of several ranks (which all see the same costs) only the ``main`` one shows
    progress and writes checkpoints; a checkpoint holds nothing rank-specific,
    so it resumes on any number of ranks.  ``identity`` (the data's fingerprint
    and every option that changes the result) is stored with it, and a
    checkpoint of another kind is refused.  Ctrl-C stops after the current
    iteration, on every rank of ``comm`` at the same one (:class:`StopRequest`).
    ``extra()`` (a dict, asked at every checkpoint) is stored as the checkpoint's ``"extra"``: what the
    run chose on the way and a resumed run must reuse (``--tv auto``'s weights).
    """
    u = u0
    history = History()
    start_iteration = 0
    elapsed_before = 0.0
    if resume is not None:
        mismatch = identity_mismatch(resume.get("identity") or {}, identity) if identity else None
        if mismatch:
            raise PtytomoError(mismatch)
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
                     "optimizer": _to_device(state, torch.device("cpu")), "extra": extra() if extra else {}},
                )

    stopped_by = "iterations"
    plateau = Plateau(tolerance)
    for cost in history.columns.get("cost", []):  # a resumed run stops where the whole run would
        plateau.reached(cost)
    started = time.perf_counter()
    bar = tqdm(total=iterations, initial=start_iteration, desc=description, unit="it",
               disable=not (progress and main) or None)
    with StopRequest(escalate=not _under_torchrun(comm), announce=main) as stop:
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
                # A stepper whose refinements have not all started yet (probe, positions) may not stop.
                if plateau.reached(cost) and getattr(optimizer, "may_stop", True):
                    stopped_by = "tolerance"
                    break
                if _anyone_asked_to_stop(stop.requested, comm):  # every rank agrees on the same iteration
                    stopped_by = "interrupted"
                    break
        except KeyboardInterrupt:
            stopped_by = "interrupted"
        finally:
            bar.close()
    if checkpoint_path and len(history) and not stop.forced:  # forced: mid-step, keep the last one written
        checkpoint(int(history.last("iteration")))
    return RunResult(u=u, history=history, stopped_by=stopped_by)


def _under_torchrun(comm) -> bool:
    """Ranks started by torchrun get each Ctrl-C twice (terminal and torchrun), so it cannot escalate."""
    return getattr(comm, "size", 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def _anyone_asked_to_stop(requested: bool, comm) -> bool:
    if comm is None or comm.size == 1:
        return requested
    return comm.anyone(requested)


def _to_device(state, device):
    if torch.is_tensor(state):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_device(v, device) for v in state)
    return state
