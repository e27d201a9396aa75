"""Angle-parallel joint reconstruction over processes started by torchrun.

Each rank owns a contiguous range of angles (:func:`partition`), reads only
those frames (:func:`read_share`) and keeps the whole volume.  The joint cost
is a sum over angles, so a rank evaluates its partial cost and gradient with
the ordinary batch loop and :meth:`Comm.sum` adds the partials (the
``reduce`` hook of :class:`~ptytomo.objective.JointObjective`).  Priors,
optimiser, line searches and stopping rules then see the same global numbers
on every rank and run redundantly; only rank 0 writes files.  With one rank
:class:`Comm` does nothing and the path is the ordinary one.

Deterministic reduction order.  :meth:`Comm.sum` is an all-reduce made of two
collectives whose arithmetic is ours: an all-to-all hands rank k the k-th
segment of every rank's partial, rank k adds the N pieces in rank order
(0, 1, ..., N-1), and an all-gather returns the summed segments.  Every
element is added on one rank only, so all ranks get the same bits (their
optimisers cannot drift apart), run after run, whatever the backend's own
algorithm; each rank sends 2 (N-1)/N times the tensor's bytes, the traffic
of a ring all-reduce.  Results differ from one rank only by how the
per-angle terms are grouped before adding (float rounding).

Ranks must also compute the redundant parts alike: the same software and
thread counts (torchrun sets OMP_NUM_THREADS=1); :meth:`Comm.check_same`
compares the final volumes.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import PtytomoError
from .io import PtychoTomoData, intensities_shape, read_data
from .resources import STREAM_MODES, is_out_of_memory, out_of_memory_message, should_stream

DEFAULT_TIMEOUT_S = 1800.0


class PeerLost(PtytomoError):
    """A collective failed: another rank died or stopped answering."""


class RankError(PtytomoError):
    """A failure every rank agreed on (:meth:`Comm.together`); rank 0 reports it."""

    def __init__(self, message: str, report: bool):
        super().__init__(message)
        self.report = report


def partition(n_items: int, size: int, rank: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n_items``; the first ``n_items % size`` ranks get one more."""
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def gather_angles(comm: Comm, local: torch.Tensor | None):
    """All ranks' per-angle state in angle order (on CPU), so a checkpoint resumes on any rank count."""
    if local is None:
        return None
    return torch.from_numpy(comm.gather(local.cpu().numpy()))


def share_of(comm: Comm, whole: torch.Tensor | None, like: torch.Tensor):
    """This rank's angles of a gathered per-angle state, on ``like``'s device."""
    if whole is None:
        return None
    return whole[partition(whole.shape[0], comm.size, comm.rank)].to(like.device)


def reduce_bytes(numel: int, itemsize: int, size: int) -> int:
    """Bytes one rank sends in :meth:`Comm.sum` of ``numel`` real elements: 2 (N-1)/N of the tensor."""
    segment = -(-numel // size)
    return 2 * (size - 1) * segment * itemsize


@dataclass
class Comm:
    """This process's place among the ranks; with ``size == 1`` every method is the identity."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sent_bytes: int = 0  # by sum(), for the benchmarks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks, added in rank order, the same bits on every rank."""
        if self.size == 1:
            return tensor
        parts = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        flat = parts.reshape(-1)
        n = self.size
        segment = -(-flat.numel() // n)
        buffer = torch.zeros(n * segment, dtype=flat.dtype, device=flat.device)
        buffer[: flat.numel()] = flat
        pieces = torch.empty_like(buffer)
        self._collective(dist.all_to_all_single, pieces, buffer)
        pieces = pieces.view(n, segment)
        total = pieces[0].clone()
        for piece in pieces[1:]:
            total += piece
        self._collective(dist.all_gather, list(buffer.view(n, segment).unbind(0)), total)
        self.sent_bytes += reduce_bytes(flat.numel(), flat.element_size(), n)
        out = buffer[: flat.numel()].view(parts.shape)
        return torch.view_as_complex(out) if tensor.is_complex() else out

    def gather(self, array: np.ndarray) -> np.ndarray:
        """The ranks' arrays (any first length) concatenated along axis 0 in rank order."""
        if self.size == 1:
            return array
        local = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        lengths = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        self._collective(dist.all_gather, lengths, torch.tensor([local.shape[0]], device=self.device))
        lengths = [int(n) for n in lengths]
        padded = torch.zeros((max(lengths), *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective(dist.all_gather, parts, padded)
        return np.concatenate([part[:n].cpu().numpy() for part, n in zip(parts, lengths)])

    def union(self, flags: np.ndarray) -> np.ndarray:
        """Element-wise OR of a bool array over ranks."""
        if self.size == 1:
            return flags
        t = torch.from_numpy(np.asarray(flags, dtype=np.uint8)).to(self.device)
        self._collective(dist.all_reduce, t, dist.ReduceOp.MAX)
        return t.cpu().numpy().astype(bool)

    def anyone(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a Ctrl-C seen by one rank stops all alike)."""
        if self.size == 1:
            return bool(flag)
        return bool(self.union(np.array([flag], dtype=bool))[0])

    def total(self, n: int) -> int:
        if self.size == 1:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        self._collective(dist.all_reduce, t)
        return int(t)

    def gather_objects(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        self._collective(dist.all_gather_object, out, obj)
        return out

    @contextmanager
    def together(self):
        """A block every rank runs (reading, checking options): a PtytomoError on any rank
        becomes a RankError on all, with the lowest failing rank's message, reported once."""
        message = None
        try:
            yield
        except PtytomoError as exc:
            if self.size == 1:
                raise
            message = str(exc)
        if self.size == 1:
            return
        failed = [(rank, text) for rank, text in enumerate(self.gather_objects(message)) if text is not None]
        if failed:
            rank, text = failed[0]
            more = f" (and on {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
            raise RankError(f"rank {rank}: error: {text}{more}", report=self.is_main)

    def check_same(self, volume: np.ndarray) -> None:
        """Raise on every rank unless all ranks hold bit-identical volumes (an exact, order-free checksum)."""
        if self.size == 1:
            return
        checksum = int(np.ascontiguousarray(volume).view(np.int32).sum(dtype=np.int64))
        sums = self.gather_objects(checksum)
        if len(set(sums)) > 1:
            raise RankError(
                "error: the ranks ended with different volumes; run every rank with the same ptytomo, "
                "torch and OMP_NUM_THREADS", report=self.is_main,
            )

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _collective(self, function, *args) -> None:
        try:
            function(*args)
        except Exception as exc:  # the backend's error: a peer died, closed its socket or timed out
            raise PeerLost(f"lost contact with another rank (it failed, was stopped or did not answer within "
                           f"--rank-timeout): {_first_line(exc)}") from None


SOLO = Comm()  # the one-rank default of the reconstruction API


def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Comm:
    """Join the other ranks when started by torchrun (WORLD_SIZE > 1), else a one-rank Comm."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return Comm()
    if not timeout_s > 0:
        raise PtytomoError(f"--rank-timeout must be > 0 seconds, got {timeout_s}")
    if "RANK" not in os.environ:
        raise PtytomoError("WORLD_SIZE is set but RANK is not: start the ranks with torchrun (docs/distributed.md)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    where = rank_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    try:
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    except Exception as exc:
        raise PtytomoError(f"rank {rank} cannot join the other ranks ({_first_line(exc)})") from None
    return Comm(rank=rank, size=size, local_rank=local_rank, device=where)


def rank_device(name: str, local_rank: int) -> torch.device:
    """Ranks map to GPUs by local rank: ``auto`` and ``cuda`` mean cuda:LOCAL_RANK."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise PtytomoError(f"--device {name}: under torchrun each rank takes cuda:LOCAL_RANK; "
                           "use --device auto, cuda or cpu")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    resolve_device("cuda")  # the usual error when CUDA is missing
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise PtytomoError(f"--device {name}: local rank {local_rank} but only {count} GPU(s) on this node; "
                           f"start at most {count} processes per node (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def read_share(path, comm: Comm, stream: str = "auto") -> PtychoTomoData:
    """This rank's angles of the data file; the frames stay in the file when ``stream`` says so."""
    if stream not in STREAM_MODES:
        raise PtytomoError(f"--stream {stream!r}: choose one of {', '.join(STREAM_MODES)}")
    n_angles, n_positions, m, _ = intensities_shape(path)
    if n_angles < comm.size:
        raise PtytomoError(f"{os.fspath(path)}: {n_angles} angles cannot be shared by {comm.size} ranks; "
                           f"start at most {n_angles}")
    rows = partition(n_angles, comm.size, comm.rank)
    frame_bytes = (rows.stop - rows.start) * n_positions * m * m * 4
    return read_data(path, angles=rows, stream=should_stream(stream, frame_bytes, comm.device))


@contextmanager
def failures_end_the_job(comm: Comm, command: str):
    """Under torchrun, any exception prints at most one line and ends this rank at once.

    Exiting (not waiting) closes this rank's connections, so the others' next
    collective fails within a second (gloo) or torchrun stops them; a rank that
    hangs instead is ended by the process-group timeout.  Lines: the failing
    rank's own message; a failure agreed by all ranks only from rank 0; a
    lost peer only from rank 0 (the root cause is printed by the peer).
    """
    if comm.size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - every way out must end the job, not hang it
        code, line = _failure_line(comm, exc)
        if line:
            print(f"ptytomo {command}: {line}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter teardown: it can wait forever on a broken process group


def _failure_line(comm: Comm, exc: BaseException) -> tuple[int, str | None]:
    if isinstance(exc, RankError):
        return 2, str(exc) if exc.report else None
    if isinstance(exc, PeerLost):
        return 1, f"rank {comm.rank}: stopped: {exc}" if comm.is_main else None
    if isinstance(exc, PtytomoError):
        return 2, f"rank {comm.rank}: error: {exc}"
    if is_out_of_memory(exc):
        return 2, f"rank {comm.rank}: error: {out_of_memory_message(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted" if comm.is_main else None
    if isinstance(exc, SystemExit):
        return int(exc.code or 0) if isinstance(exc.code, int) else 1, None
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return 1, f"rank {comm.rank}: internal error: {type(exc).__name__}: {_first_line(exc)}{at}"


def _first_line(exc: BaseException) -> str:
    """The gist of an exception: first sentence, without a backend's ``[source.cc:123]`` prefix."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return text.split(". ")[0].rstrip(".")

