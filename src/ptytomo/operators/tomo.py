"""Parallel-beam tomographic projector R (rotation about z) and its exact adjoint.

The projector is Joseph's method: each ray crosses the slice along its major
axis one voxel row (or column) at a time and interpolates linearly along the
minor axis, with weight ``voxel_size / max(|cos|, |sin|)``.  It is stored as
one sparse matrix ``(A * Nu, Ny * Nx)`` that acts on every z-slice at once
(rotation about z leaves slices independent), and its transpose is stored too,
so the adjoint is exact by construction and both directions are one sparse
matrix product.  Geometry and sign conventions are those of FORMAT.md.

The slab projectors of a multislice model split the same entries by the depth
``t`` of their sample along the beam (``SlabProjector``): the slabs partition
every ray, so their projections add up to R's and each keeps an exact adjoint.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import PtytomoError


def joseph_matrix_entries(
    angles: np.ndarray, slice_shape: tuple[int, int], n_detector: int, with_depth: bool = False
) -> tuple[np.ndarray, ...]:
    """(row, column, weight-in-voxels) of Joseph's projector for ``angles``.

    Row ``a * Nu + u`` is detector bin ``u`` at angle ``a``; column
    ``y * Nx + x`` is voxel ``(y, x)`` of a slice.  ``with_depth`` appends a
    fourth array: the depth ``t`` along the beam (voxel units, centred on the
    rotation axis) of the sample each entry interpolates, which is what the
    slab projectors split on.
    """
    ny, nx = slice_shape
    rows_out, cols_out, weights_out, depth_out = [], [], [], []
    s = np.arange(n_detector, dtype=np.float64) - (n_detector - 1) / 2
    for a, theta in enumerate(np.asarray(angles, dtype=np.float64)):
        cos, sin = np.cos(theta), np.sin(theta)
        if abs(cos) >= abs(sin):
            # Step through voxel rows y; interpolate along x.
            y = np.arange(ny, dtype=np.float64) - (ny - 1) / 2
            t = (y[None, :] - s[:, None] * sin) / cos
            minor = s[:, None] * cos - t * sin + (nx - 1) / 2
            major_index = np.broadcast_to(np.arange(ny)[None, :], minor.shape)
            n_minor, weight = nx, 1.0 / abs(cos)
        else:
            # Step through voxel columns x; interpolate along y.
            x = np.arange(nx, dtype=np.float64) - (nx - 1) / 2
            t = (s[:, None] * cos - x[None, :]) / sin
            minor = s[:, None] * sin + t * cos + (ny - 1) / 2
            major_index = np.broadcast_to(np.arange(nx)[None, :], minor.shape)
            n_minor, weight = ny, 1.0 / abs(sin)
        lower = np.floor(minor)
        frac = minor - lower
        lower = lower.astype(np.int64)
        detector_row = np.broadcast_to((a * n_detector + np.arange(n_detector))[:, None], minor.shape)
        for index, w in ((lower, 1.0 - frac), (lower + 1, frac)):
            keep = (index >= 0) & (index < n_minor) & (w > 0)
            if abs(cos) >= abs(sin):
                column = major_index[keep] * nx + index[keep]
            else:
                column = index[keep] * nx + major_index[keep]
            rows_out.append(detector_row[keep])
            cols_out.append(column)
            weights_out.append(w[keep] * weight)
            if with_depth:
                depth_out.append(t[keep])
    entries = (np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(weights_out))
    return (*entries, np.concatenate(depth_out)) if with_depth else entries


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape, dtype, device) -> torch.Tensor:
    coo = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(values), size=shape, check_invariants=False
    ).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr().to(dtype=dtype, device=device)


class ParallelProjector:
    """R: volume (Nz, Ny, Nx) -> projections (A, Nz, Nu) in metres, Nu = Nx.

    Real and complex inputs are both accepted (R is real, so it acts on
    delta and beta alike).  Build one per angle batch: the batch is the unit
    of work of the joint model.
    """

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        angles,
        voxel_size_m: float = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.volume_shape = tuple(int(n) for n in volume_shape)
        nz, ny, nx = self.volume_shape
        self.angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        self.n_angles = len(self.angles)
        self.n_detector = nx
        self.projection_shape = (self.n_angles, nz, nx)
        rows, cols, weights = joseph_matrix_entries(self.angles, (ny, nx), nx)
        weights = weights * voxel_size_m
        n_rays = self.n_angles * nx
        self.matrix = _csr(rows, cols, weights, (n_rays, ny * nx), dtype, device)
        self.matrix_t = _csr(cols, rows, weights, (ny * nx, n_rays), dtype, device)

    @staticmethod
    def _columns(volume_like: torch.Tensor, leading: int) -> tuple[torch.Tensor, bool]:
        """(leading, n_slices [x 2 for complex]) matrix whose columns are slices."""
        volume_like = volume_like.resolve_conj()
        is_complex = volume_like.is_complex()
        v = torch.view_as_real(volume_like) if is_complex else volume_like.unsqueeze(-1)
        # (n_slices, ..., parts) -> (..., n_slices, parts)
        v = v.movedim(0, -2)
        return v.reshape(leading, -1), is_complex

    @staticmethod
    def _from_columns(columns: torch.Tensor, shape: tuple[int, ...], is_complex: bool) -> torch.Tensor:
        parts = 2 if is_complex else 1
        v = columns.reshape(*shape[1:], shape[0], parts).movedim(-2, 0)
        return torch.view_as_complex(v.contiguous()) if is_complex else v[..., 0].contiguous()

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.volume_shape
        columns, is_complex = self._columns(volume, ny * nx)
        out = self.matrix @ columns  # (A*Nu, Nz*parts)
        # rows are (a, u); bring slices to the front, then (A, Nz, Nu)
        proj = self._from_columns(out, (nz, self.n_angles, nx), is_complex)
        return proj.movedim(0, 1).contiguous()

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.volume_shape
        columns, is_complex = self._columns(projections.movedim(1, 0), self.n_angles * nx)
        out = self.matrix_t @ columns  # (Ny*Nx, Nz*parts)
        return self._from_columns(out, (nz, ny, nx), is_complex)


# -- slab projectors (multislice) ----------------------------------------------


def slab_edges(volume_shape: tuple[int, int, int], n_slices: int) -> np.ndarray:
    """``n_slices + 1`` equally spaced depths (voxel units, along the beam, centred on the rotation
    axis) whose slabs hold every sample of Joseph's projector at every angle.

    A sample with a nonzero weight lies less than one voxel beyond the outer voxels' centres, so
    ``|X| < (Nx + 1) / 2``, ``|Y| < (Ny + 1) / 2`` and ``|t|`` stays strictly below
    ``hypot((Nx + 1) / 2, (Ny + 1) / 2)``, the outer edges (about half the slice's diagonal).  One set of edges serves
    every angle, so the propagation distances between slabs are the same at all angles.
    """
    try:
        n = int(n_slices)
    except (TypeError, ValueError):
        raise PtytomoError(f"n_slices must be a positive integer, got {n_slices!r}") from None
    if n < 1 or n != n_slices:
        raise PtytomoError(f"n_slices must be a positive integer, got {n_slices!r}")
    _, ny, nx = (int(v) for v in volume_shape)
    reach = math.hypot((nx + 1) / 2, (ny + 1) / 2)
    return np.linspace(-reach, reach, n + 1)


def slab_centres(edges: np.ndarray) -> np.ndarray:
    """Mid-depths of the slabs between ``edges`` (same units)."""
    edges = np.asarray(edges, dtype=np.float64)
    return 0.5 * (edges[1:] + edges[:-1])


class SlabProjector:
    """R_s, s = 0 .. S-1: volume (Nz, Ny, Nx) -> slab projections (S, A, Nz, Nu) in metres.

    Slab ``s`` keeps the entries of Joseph's projector whose sample depth ``t`` (voxel units, beam
    along ``+t``, rotation axis at ``t = 0``) satisfies ``edges[s] <= t < edges[s+1]``, so every
    sample belongs to at most one slab (to exactly one if the edges span it, as
    :func:`slab_edges`' do) and the slabs' projections sum to :class:`ParallelProjector`'s.
    Slab 0 is the first the beam meets.

    All slabs live in one sparse matrix ``(S * A * Nu, Ny * Nx)``, row ``(s * A + a) * Nu + u``,
    and its transpose: the entries are those of the full projector with the slab index added to
    their row, so the matrices take the memory of one ParallelProjector (only the row pointers grow
    with S), one product gives every slab, and the adjoint (the transpose, stored) sums the slabs'
    back-projections in one product too.  With one slab spanning everything the matrix is
    ParallelProjector's, entry for entry.
    """

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        angles,
        edges,
        voxel_size_m: float = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.volume_shape = tuple(int(n) for n in volume_shape)
        nz, ny, nx = self.volume_shape
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or len(self.edges) < 2 or not np.all(np.isfinite(self.edges)):
            raise PtytomoError("edges must be at least two finite depths (voxel units)")
        if np.any(np.diff(self.edges) <= 0):
            raise PtytomoError("edges must increase strictly")
        self.n_slabs = len(self.edges) - 1
        self.voxel_size_m = float(voxel_size_m)
        self.thickness_m = np.diff(self.edges) * self.voxel_size_m
        self.centres_m = slab_centres(self.edges) * self.voxel_size_m
        self.angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        self.n_angles = len(self.angles)
        self.n_detector = nx
        self.projection_shape = (self.n_slabs, self.n_angles, nz, nx)
        rows, cols, weights, depth = joseph_matrix_entries(self.angles, (ny, nx), nx, with_depth=True)
        # side="right": a sample exactly on an edge belongs to the slab that edge opens.
        slab = np.searchsorted(self.edges, depth, side="right") - 1
        inside = (slab >= 0) & (slab < self.n_slabs)
        if not np.all(inside):
            rows, cols, weights, slab = rows[inside], cols[inside], weights[inside], slab[inside]
        n_rays = self.n_angles * nx
        rows = slab * n_rays + rows
        weights = weights * voxel_size_m
        shape = (self.n_slabs * n_rays, ny * nx)
        self.matrix = _csr(rows, cols, weights, shape, dtype, device)
        self.matrix_t = _csr(cols, rows, weights, shape[::-1], dtype, device)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.volume_shape
        columns, is_complex = ParallelProjector._columns(volume, ny * nx)
        out = self.matrix @ columns  # (S*A*Nu, Nz*parts)
        proj = ParallelProjector._from_columns(out, (nz, self.n_slabs * self.n_angles, nx), is_complex)
        return proj.movedim(0, 1).reshape(self.projection_shape)

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.volume_shape
        flat = projections.reshape(self.n_slabs * self.n_angles, nz, nx)
        columns, is_complex = ParallelProjector._columns(flat.movedim(1, 0), self.n_slabs * self.n_angles * nx)
        out = self.matrix_t @ columns  # (Ny*Nx, Nz*parts)
        return ParallelProjector._from_columns(out, (nz, ny, nx), is_complex)
