"""The joint cost and its gradient by the explicit chain rule (METHOD.md eq. 4-5).

The gradient is assembled batch by batch of angles through the operators'
adjoints, so no autograd tape ever spans the data set: memory stays at the
data plus a few volumes.

Normalisation (documented so that the paper's step constants mean something):
the unknown is ``u = k * voxel_size * x`` (phase and attenuation per voxel),
the probe and the measured amplitudes are divided by ``max|P|``, and the cost
is multiplied by ``scale`` chosen so that the Lipschitz constant of the
gradient at ``u = 0`` (power iteration on the Gauss-Newton operator) is
``1 / 0.01 = 100``.  Under it Algorithm 1's ``alpha0 = 0.01`` is the
classical ``1/L`` step, whatever the data size, probe intensity or voxel size.
The Poisson likelihood is divided by its curvature relative to the amplitude
cost's (RELATIVE_CURVATURE: 2), so that a TV weight means the same under
either loss.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .device import resolve_device, resolve_precision
from .diagnostics import choose_loss, choose_propagation
from .distributed import SOLO, Comm
from .errors import PtytomoError
from .operators import JointModel
from .stream import amplitudes_of, measured_amplitudes

LOSSES = ("amplitude", "intensity", "poisson")
# Losses with a Gauss-Newton residual (detector_residual(gauss_newton=True)): the per-angle ptychography
# sweeps and the parameter groups (probe, positions, shifts, flux) step with them.
GAUSS_NEWTON_LOSSES = ("amplitude", "poisson")
TARGET_LIPSCHITZ = 100.0
# The losses' expected curvature (Fisher information) per unit of detector amplitude, relative to the
# amplitude cost's 2: the Poisson likelihood's is 4 at every intensity (2 + 2 n / |g|^2 with E n = |g|^2),
# so under the same normalisation its data would weigh twice as much against the priors, and a TV weight
# (chosen under the amplitude cost) would mean half as much.  The intensity cost's grows with the intensity
# (8 n), so no constant matches it; it keeps the amplitude cost's.
RELATIVE_CURVATURE = {"amplitude": 1.0, "intensity": 1.0, "poisson": 2.0}


def detector_residual(loss: str, field: torch.Tensor, measured: torch.Tensor, weight, per_frame: bool = False,
                      gauss_newton: bool = False):
    """(cost, r) with d cost = 2 Re <r, d field>; ``measured`` is amplitude (sqrt of counts).

    The bracket of METHOD.md eq. 5 and its variants for the other losses.  A
    ``field`` with one more axis than ``measured`` (B, J, K, M, M) holds K
    incoherent modes: the model intensity is the sum of theirs, and every
    mode's residual is its field times the same real factor.  ``per_frame``: the cost of
    every frame (B, J) instead of their sum.

    ``gauss_newton``: instead of the gradient's residual, the one whose step preconditioned by the
    amplitude cost's curvature ``2 J^T J`` is the loss's Fisher-scoring step, for the Gauss-Newton
    updates of the ptychography sweeps and the parameter groups.  For the amplitude cost it is the
    gradient's.  For the Poisson likelihood the gradient's factor ``1 - n/|g|^2`` is twice the
    amplitude cost's near a fit (its curvature is twice as large) and unbounded where the model is
    dark but a photon arrived (a weak object's dark field): a step that divides it by the amplitude
    curvature overshoots, and such pixels throw the probe and the windows about (measured: windows
    0.5 -> 6.5 px rms on a weak phase object).  ``(|g|^2 - n) / (|g|^2 + n)`` is the Newton step
    with the likelihood's own per-pixel curvature: it equals the amplitude factor ``1 - sqrt(n)/|g|``
    to first order near a fit, is bounded by 1, and vanishes where the Poisson gradient does.
    """
    modal = field.dim() == measured.dim() + 1
    parts = torch.view_as_real(field)
    if modal:
        modulus = torch.sqrt(torch.sum(parts**2, dim=(2, -1)))
    else:
        modulus = torch.linalg.vector_norm(parts, dim=-1)  # fewer passes over memory than field.abs()
    if loss == "amplitude":
        misfit = modulus - measured
        cost_map = misfit**2
        # g - a g/|g|, with g/|g| = 0 where g = 0 (there g itself is 0, so any finite scale works)
        factor = misfit / modulus.clamp_min(1e-20)
    elif loss == "intensity":
        misfit = modulus**2 - measured**2
        cost_map = misfit**2
        factor = 2 * misfit
    else:  # poisson negative log-likelihood as a deviance: 0 at a perfect fit, so relative changes mean something
        counts = measured**2
        intensity = modulus**2
        floor = torch.finfo(modulus.dtype).tiny
        log_ratio = torch.log(intensity.clamp_min(floor)) - torch.log(counts.clamp_min(floor))
        cost_map = intensity - counts - counts * log_ratio
        if gauss_newton:
            factor = (intensity - counts) / (intensity + counts).clamp_min(floor)
        else:
            factor = 1 - counts / intensity.clamp_min(floor)
    if weight is not None:
        cost_map = cost_map * weight
        factor = factor * weight
    if per_frame:
        return cost_map.sum(dim=(-2, -1)), None
    if modal:
        factor = factor.unsqueeze(2)
    r = torch.view_as_complex(parts * factor.unsqueeze(-1))
    return cost_map.sum(), r


def power_iteration(apply, v: torch.Tensor, iterations: int) -> float:
    """Largest eigenvalue of the positive semi-definite operator ``apply``, from the unit vector ``v``."""
    value = 0.0
    for _ in range(iterations):
        out = apply(v)
        value = float(torch.linalg.vector_norm(out))
        v = out / value
    return value


@dataclass
class BatchResidual:
    """One angle batch's share of an evaluation: what every unknown's gradient starts from.

    ``back`` is F^H of the detector residual per probe mode (B, J, K, Kr, Kc), so that
    ``d cost = 2 Re <back, d exit wave>``; the volume, the probe and the positions
    each chain it to their own variable (parameter groups: :mod:`ptytomo.model`).
    Costs are raw (probe-normalised, not multiplied by ``Scaling.cost``): the groups
    take Gauss-Newton steps, which do not depend on the cost's scale.
    """

    index: int  # batch number b
    angles: slice  # the batch's angles
    ptychography: object  # the batch's Ptychography operator
    transmission: torch.Tensor  # padded O (B, H, W)
    back: torch.Tensor
    fields: torch.Tensor  # the forward far fields (B, J, [K,] M, M)
    measured: torch.Tensor  # the batch's measured amplitudes (probe-normalised)
    weight: torch.Tensor | None  # detector mask x valid flags
    loss: str
    _position_gradient: tuple | None = field(default=None, repr=False)
    _step_back: torch.Tensor | None = field(default=None, repr=False)

    def step_back(self) -> torch.Tensor:
        """``back`` of the Gauss-Newton residual (:func:`detector_residual` with ``gauss_newton``), from
        which the sweeps' and the groups' steps start; computed once, and only for a loss whose
        Gauss-Newton residual differs from its gradient's (Poisson)."""
        if self.loss == "amplitude":
            return self.back
        if self._step_back is None:
            _, r = detector_residual(self.loss, self.fields, self.measured, self.weight, gauss_newton=True)
            self._step_back = self.ptychography.back_waves(r)
        return self._step_back

    def position_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad (B, J, 2), Gauss-Newton matrices (B, J, 2, 2)) of the cost with respect to every window's
        position (:meth:`Ptychography.position_gradient`) with the Gauss-Newton residual, computed once:
        the positions and the per-angle shifts (their sums over each angle) both start from it."""
        if self._position_gradient is None:
            self._position_gradient = self.ptychography.position_gradient(self.transmission, self.step_back(),
                                                                          self.fields)
        return self._position_gradient


def with_mode_axis(weight, field: torch.Tensor):
    """``weight`` (mask, valid flags) broadcast against a field that may carry a mode axis."""
    if weight is None or field.dim() == 4:
        return weight
    return weight.unsqueeze(-3)


@dataclass
class Scaling:
    """Maps between the physical volume x and the solver's unknown u."""

    to_u: float  # u = to_u * x  (k * voxel_size)
    cost: float  # multiplies the raw (probe-normalised) cost


class JointObjective:
    """phi(u) for one data set: value and gradient, streamed over angle batches."""

    def __init__(self, model: JointModel, amplitudes: torch.Tensor, loss: str = "amplitude", mask=None,
                 reduce=None):
        """``amplitudes``: a tensor, or a :class:`~ptytomo.stream.AmplitudeStream`.
        ``reduce``: sums a partial over ranks (:meth:`ptytomo.distributed.Comm.sum`) when
        ``model`` holds one rank's angles; it is applied to the data cost, its gradient and
        the power iteration, so the normalisation and every cost are global."""
        if loss not in LOSSES:
            raise PtytomoError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.model = model
        self.loss = loss
        self.reduce = reduce or (lambda partial: partial)
        # The brightest pixel of the summed mode intensities (max |P| for one mode).
        self.probe_max = float(torch.sqrt((model.probe.abs() ** 2).reshape(-1, model.m, model.m).sum(0).max()))
        # Normalise the probe to max |P| = 1 in the model and the data alike.
        model.set_probe(model.probe / self.probe_max)
        self.amplitudes = amplitudes / self.probe_max
        # Kept apart and combined per batch: their product would be as large as the data.
        self.mask_weight = None
        if mask is not None:
            self.mask_weight = torch.as_tensor(np.asarray(mask), device=model.device).to(model.real_dtype)
        self.valid_weight = None
        if model.valid is not None:
            self.valid_weight = model.valid.to(device=model.device, dtype=model.real_dtype)[..., None, None]
        self.scaling = Scaling(to_u=model.k * model.voxel_size_m, cost=1.0)
        self.normalise()
        self.evaluations = 0
        # Parameter groups (probe, positions, ...) that take their gradients from the next
        # evaluations' residuals; set by the stepper for the iterations in which they update.
        self.listeners: list = []
        self.last_point = None  # the unknown of the latest evaluation (whose residuals the listeners hold)

    def residual(self, b: int, transmission: torch.Tensor, operator=None) -> tuple[BatchResidual, torch.Tensor]:
        """Far fields, detector residual and its back-transform for batch ``b``; the cost goes to
        the caller, the residual to every listening group (the one place data meet the model).
        ``operator``: the Q the transmission is for (default: the model's, multislice or not; the
        per-angle ptychography passes the single-plane one)."""
        batch = self.model.batches[b]
        q = self.model.forward_operator(b) if operator is None else operator
        fields = q.forward(transmission)
        measured, weight = self.amplitudes[batch], self.batch_weight(batch)
        cost, r = detector_residual(self.loss, fields, measured, weight)
        result = BatchResidual(b, batch, q, transmission, q.back_waves(r), fields, measured, weight, self.loss)
        for listener in self.listeners:
            listener.accumulate(result)
        return result, cost

    @contextmanager
    def listening(self, groups):
        """Hand the residuals of the evaluations inside the block to ``groups`` (and only those)."""
        self.listeners = list(groups)
        try:
            yield
        finally:
            self.listeners = []

    def begin_evaluation(self) -> None:
        for listener in self.listeners:
            listener.begin()

    def end_evaluation(self, point) -> None:
        self.last_point = point
        for listener in self.listeners:
            listener.finish(self.reduce)

    def batch_weight(self, batch: slice):
        """Detector mask x valid flags for one angle batch (None when neither is given)."""
        valid = None if self.valid_weight is None else self.valid_weight[batch]
        if self.mask_weight is None:
            return valid
        return self.mask_weight if valid is None else valid * self.mask_weight

    def value_and_grad(self, u: torch.Tensor, need_grad: bool = True) -> tuple[float, torch.Tensor | None]:
        model = self.model
        x = u / self.scaling.to_u
        total = torch.zeros((), dtype=torch.float64, device=model.device)
        grad = torch.zeros_like(u) if need_grad else None
        self.begin_evaluation()
        for b in range(len(model.batches)):
            o = model.transmission(x, b)
            result, cost = self.residual(b, o)
            total += cost.to(torch.float64)
            if need_grad:
                back = model.crop(o.conj() * result.ptychography.transmission_gradient(o, result.back))
                # d/du of 2 Re<r, Q(o * i R' du)> is -2i R'^T(conj(o) Q^H r): delta part
                # Im, beta part -Re (METHOD.md eq. 5), with R' = R / voxel_size (per slab with multislice).
                grad += model.projector(b).adjoint(-2j * back) / model.voxel_size_m
            result.ptychography.release()
        self.evaluations += 1
        self.end_evaluation(u)
        total = self.reduce(total)
        if need_grad:
            grad = self.reduce(grad)
            grad *= self.scaling.cost
        return float(total) * self.scaling.cost, grad

    def value(self, u: torch.Tensor) -> float:
        return self.value_and_grad(u, need_grad=False)[0]

    @torch.no_grad()
    def frame_costs(self, u: torch.Tensor) -> torch.Tensor:
        """Raw (probe-normalised, unscaled) data cost of every frame (A, J) of this rank's angles, float64 on
        the CPU; frames whose weight is zero (padding, held out) cost 0.  No listener sees these residuals."""
        model = self.model
        x = u / self.scaling.to_u
        costs = []
        for b, batch in enumerate(model.batches):
            fields = model.far_field(x, b)
            cost, _ = detector_residual(self.loss, fields, self.amplitudes[batch], self.batch_weight(batch),
                                        per_frame=True)
            costs.append(cost.to(torch.float64).cpu())
        return torch.cat(costs)

    def normalise(self) -> None:
        """Scale the cost to a Lipschitz constant of TARGET_LIPSCHITZ at u = 0 for the model's current
        windows: again after the windows moved far (coarse alignment), so that a TV weight means the same
        whatever the recorded positions' errors were, and with the loss's curvature (RELATIVE_CURVATURE),
        so that it means the same whichever loss was chosen."""
        self.scaling.cost = 1.0
        self.scaling.cost = TARGET_LIPSCHITZ / (self.lipschitz_at_zero() * RELATIVE_CURVATURE[self.loss])

    def lipschitz_at_zero(self, iterations: int = 8, seed: int = 0) -> float:
        """Largest eigenvalue of 2 J^T J at u = 0 (J: du -> far fields), by power iteration."""
        model = self.model
        generator = torch.Generator().manual_seed(seed)
        v = torch.randn(model.volume_shape, generator=generator, dtype=torch.float64)
        v = torch.complex(v, torch.randn(model.volume_shape, generator=generator, dtype=torch.float64))
        v = (v / torch.linalg.vector_norm(v)).to(device=model.device, dtype=model.complex_dtype)

        def gauss_newton(v):
            out = torch.zeros_like(v)
            for b in range(len(model.batches)):
                # At u = 0 the transmission is 1, so J du = Q(i R' du).
                projection = model.pad(model.projector(b).forward(v)) / model.voxel_size_m
                q = model.forward_operator(b)
                field = q.linear_forward(1j * projection)
                weight = with_mode_axis(self.batch_weight(model.batches[b]), field)
                if weight is not None:
                    field = field * weight
                back = model.crop(q.linear_adjoint(field))
                out += model.projector(b).adjoint(-1j * back) / model.voxel_size_m
            return 2 * self.reduce(out)

        return power_iteration(gauss_newton, v, iterations)


def build_objective(data, options, comm: Comm = SOLO, probe: np.ndarray | None = None) -> JointObjective:
    """The joint objective of ``data`` (a PtychoTomoData) under ``options`` (a ReconstructOptions: device,
    precision, loss, angle batch, the refined groups and their window margin); ``probe`` (K, M, M)
    replaces the file's (initial guesses).  ``comm`` joins the ranks of a distributed run."""
    device = resolve_device(options.device)
    real_dtype, _ = resolve_precision(options.precision)
    g = data.geometry
    refined = options.refined()
    margin = options.window_margin(g.volume_shape)
    propagation = choose_propagation(g, options.propagation, options.slices, options.method == "joint")
    model = JointModel(
        g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions,
        data.probe if probe is None else probe, valid=data.valid, angle_batch=options.angle_batch or None,
        device=device, dtype=real_dtype, margin=margin, pruned=False if refined else None,
        propagation=propagation.model, slices=propagation.slices,
    )
    amplitudes = amplitudes_of(data, model.batches, device, real_dtype)  # None unless streamed
    if amplitudes is None:
        amplitudes = torch.from_numpy(measured_amplitudes(data)).to(device=device, dtype=real_dtype)
    loss = choose_loss(data, comm) if options.loss == "auto" else options.loss
    return JointObjective(model, amplitudes, loss, data.mask, reduce=comm.sum)
