"""Measured amplitudes read from the data file batch by batch, one batch ahead of the compute.

For data (or a rank's share of it) larger than memory: ``read_data(path,
stream=True)`` leaves the frames in the file, and :class:`AmplitudeStream`
feeds :class:`~ptytomo.objective.JointObjective` one angle batch at a time
while a background thread reads, checks and converts the next one (HDF5
reads, numpy and the copy to the device release the GIL, so reading overlaps
the compute).  Peak memory is two batches of frames instead of all of them;
the price is one read of the share per cost evaluation.  The numbers are the
in-memory path's, bit for bit: the same conversion, element by element.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .io import LazyIntensities, PtychoTomoData

CHUNK_BYTES = 256 * 2**20  # frames read at once when counting photons


class AmplitudeStream:
    """Stands in for the (A, J, M, M) amplitude tensor in the two ways JointObjective uses it:
    ``stream / number`` (the probe normalisation) and ``stream[angle_batch]``."""

    def __init__(self, frames: LazyIntensities, batches: list[slice], device, dtype, divisor: float = 1.0):
        self.frames = frames
        self.batches = [(b.start, b.stop) for b in batches]
        self.device = torch.device(device)
        self.dtype = dtype
        self.divisor = divisor
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[int, int], Future] | None = None

    def __truediv__(self, divisor: float) -> AmplitudeStream:
        return AmplitudeStream(self.frames, [slice(*b) for b in self.batches], self.device, self.dtype,
                               self.divisor * divisor)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frames.shape

    def __getitem__(self, batch: slice) -> torch.Tensor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptytomo-read-ahead")
        key = (batch.start or 0, len(self.frames) if batch.stop is None else batch.stop)
        if self._ahead is not None and self._ahead[0] == key:
            current = self._ahead[1]
        else:  # an unexpected order: read this one now (a stale read-ahead finishes unused)
            current = self._pool.submit(self._load, key)
        following = self._following(key)
        self._ahead = None if following is None else (following, self._pool.submit(self._load, following))
        return current.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _following(self, key: tuple[int, int]) -> tuple[int, int] | None:
        """The batch after ``key``; after the last, the first (the next evaluation starts there)."""
        if key not in self.batches:
            return None
        return self.batches[(self.batches.index(key) + 1) % len(self.batches)]

    def _load(self, key: tuple[int, int]) -> torch.Tensor:
        start, stop = key
        amplitudes = np.sqrt(np.maximum(self.frames[start:stop], 0, dtype=np.float32))
        if self.frames.valid is not None:
            amplitudes[~self.frames.valid[start:stop]] = 0.0
        return torch.from_numpy(amplitudes).to(device=self.device, dtype=self.dtype) / self.divisor


def _angle_chunks(data: PtychoTomoData, chunk_bytes: int):
    """(angle slice, frames) a chunk at a time (read from the file when streamed)."""
    frames = data.intensities
    per_angle = max(1, int(np.prod(frames.shape[1:])) * 4)
    step = max(1, chunk_bytes // per_angle)
    for a in range(0, len(frames), step):
        yield slice(a, min(a + step, len(frames))), frames[a : a + step]


def frame_sums(data: PtychoTomoData, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Photons per valid frame (a 1D array), reading streamed frames a chunk at a time."""
    valid = data.valid_or_all()
    sums = [frames.sum(axis=(2, 3)) for _, frames in _angle_chunks(data, chunk_bytes)]
    return np.concatenate(sums)[valid]


def frames_are_counts(data: PtychoTomoData, sample_bytes: int = 16 * 2**20) -> bool:
    """Whether the frames hold photon counts: whole numbers (within 1e-3), judged on the first angles'
    frames (``sample_bytes``, at least one angle: a detector writes counts everywhere or nowhere; a
    noise-free simulation or processed frames hold fractions).  float32 holds every whole number to 2^24."""
    valid = data.valid_or_all()
    angles, frames = next(_angle_chunks(data, sample_bytes), (slice(0, 0), None))
    if frames is None:
        return False
    values = np.asarray(frames)[valid[angles]]
    return bool(values.size) and bool(np.all(np.abs(values - np.round(values)) < 1e-3))


def mean_pattern(data: PtychoTomoData, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """The mean (M, M) diffraction pattern of the valid frames (float64)."""
    valid = data.valid_or_all()
    total = np.zeros(data.intensities.shape[-2:], dtype=np.float64)
    for angles, frames in _angle_chunks(data, chunk_bytes):
        total += np.asarray(frames, dtype=np.float64)[valid[angles]].sum(axis=0)
    return total / max(int(valid.sum()), 1)


def measured_amplitudes(data: PtychoTomoData) -> np.ndarray:
    """sqrt(counts), with padding entries (valid False) set to zero so they cannot leak NaN."""
    amplitudes = np.sqrt(np.maximum(data.intensities, 0, dtype=np.float32))
    if data.valid is not None:
        amplitudes[~data.valid] = 0.0
    return amplitudes


def amplitudes_of(data: PtychoTomoData, batches: list[slice], device, dtype) -> AmplitudeStream | None:
    """An AmplitudeStream for streamed data, None for frames in memory."""
    if not isinstance(data.intensities, LazyIntensities):
        return None
    return AmplitudeStream(data.intensities, batches, device, dtype)
