"""Optimisers behind one interface: ``step(u) -> (u_next, cost_at_u_next_or_u)``.

Each optimiser sees a problem with ``value_and_grad(u)``, ``value(u)`` and
``project(u)`` (see :class:`ptytomo.solvers.priors.Regularised`) and keeps its
own state in a dict that checkpoints save and restore.  Steps need no hand
tuning except in ``gd`` (the paper's schedule, on the normalisation of
:mod:`ptytomo.objective`) and ``adam`` (a learning rate).
"""

from __future__ import annotations

import math

import torch

from ..errors import PtytomoError
from ..objective import TARGET_LIPSCHITZ
from .preconditioner import RampFilter


class Optimizer:
    name = ""

    def __init__(self, problem, **options):
        self.problem = problem
        self.state: dict = {}

    def step(self, u: torch.Tensor) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)

    def objective_changed(self) -> None:
        """The problem's data changed (ADMM's next target): drop what belonged to the old one."""


class GradientDescent(Optimizer):
    """Algorithm 1 of the paper: x <- x - alpha grad; alpha <- alpha / (1 + eps n)."""

    name = "gd"

    def __init__(self, problem, alpha0: float = 0.01, eps: float = 1e-6, **_):
        super().__init__(problem)
        self.eps = eps
        self.state = {"alpha": alpha0, "n": 0}

    def step(self, u):
        cost, grad = self.problem.value_and_grad(u)
        u = self.problem.project(u - self.state["alpha"] * grad)
        self.state["alpha"] /= 1 + self.eps * self.state["n"]
        self.state["n"] += 1
        return u, cost


class Fista(Optimizer):
    """Accelerated projected gradient (Beck & Teboulle 2009) with backtracking on L
    and adaptive restart (O'Donoghue & Candes 2015): no step to tune."""

    name = "fista"

    def __init__(self, problem, **_):
        super().__init__(problem)
        self.state = {"L": TARGET_LIPSCHITZ, "t": 1.0, "t_prev": 1.0, "previous": None, "cost": math.inf}

    def step(self, u):
        s = self.state
        momentum = (s["t_prev"] - 1) / s["t"]
        y = self.problem.project(u + momentum * (u - s["previous"])) if momentum > 0 else u
        cost_y, grad = self.problem.value_and_grad(y)
        lipschitz = s["L"] * 0.8  # let the step grow again where the landscape flattens
        while True:
            candidate = self.problem.project(y - grad / lipschitz)
            diff = candidate - y
            bound = cost_y + _dot(grad, diff) + 0.5 * lipschitz * _dot(diff, diff)
            cost_new = self.problem.value(candidate)
            if cost_new <= bound or lipschitz > 1e12:
                break
            lipschitz *= 2.0
        if cost_new > s["cost"]:
            # Adaptive restart: the momentum overshot, so the next step starts without it.
            s.update(t=1.0, t_prev=1.0)
        else:
            s.update(t_prev=s["t"], t=(1 + math.sqrt(1 + 4 * s["t"] ** 2)) / 2)
        s.update(L=lipschitz, previous=u, cost=cost_new)
        return candidate, cost_new

    def objective_changed(self):
        self.state.update(t=1.0, t_prev=1.0, cost=math.inf)


class Lbfgs(Optimizer):
    """Limited-memory BFGS (Nocedal & Wright, Alg. 7.4) with a projected backtracking
    (Armijo) line search that starts from the unit quasi-Newton step: no step to tune.

    Written out rather than wrapping torch.optim.LBFGS so that each call is one
    iteration with a checkpointable state and so the non-negativity projection
    is part of the search path; curvature pairs with s.y <= 0 are skipped.

    Cost per iteration stays flat: a search that finds no decrease (near the
    minimum, where float32 rounding hides the Armijo decrease) forgets the
    curvature pairs and the next iteration tries the preconditioned gradient;
    if that fails too the point is stationary and later iterations cost no
    evaluation until the objective changes.  ``diagnostics["evaluations"]``
    (a history column) counts each iteration's cost-and-gradient evaluations.
    """

    name = "lbfgs"

    def __init__(self, problem, history_size: int = 10, precondition: bool = True, **_):
        super().__init__(problem)
        self.history_size = history_size
        self.preconditioner = None
        if precondition:
            model = problem.objective.model
            self.preconditioner = RampFilter(model.volume_shape, model.device, model.complex_dtype)
        self.state = {"s": [], "y": [], "grad": None, "cost": None, "stationary": False}
        self.diagnostics: dict[str, float] = {}

    def free_directions(self, u: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Zero the components that push a variable held at its bound (0) further out,
        so the projection does not bend the search path (projected quasi-Newton)."""
        if not getattr(self.problem, "nonnegative", False):
            return direction
        real = torch.where((u.real <= 0) & (direction.real < 0), 0.0, direction.real)
        imag = torch.where((u.imag <= 0) & (direction.imag < 0), 0.0, direction.imag)
        return torch.complex(real, imag)

    def objective_changed(self):
        # Cost and gradient belong to the old problem; the curvature pairs stay valid
        # when only a least-squares target moved (the Hessian does not depend on it).
        self.state.update(cost=None, grad=None, stationary=False)

    def initial_inverse_hessian(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.preconditioner is None else self.preconditioner(v)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        s_list, y_list = self.state["s"], self.state["y"]
        q = grad.clone()
        alphas = []
        for s, y in zip(reversed(s_list), reversed(y_list)):
            rho = 1.0 / _dot(y, s)
            alpha = rho * _dot(s, q)
            q -= alpha * y
            alphas.append((rho, alpha))
        if s_list:
            y = y_list[-1]
            q = self.initial_inverse_hessian(q) * (_dot(s_list[-1], y) / _dot(y, self.initial_inverse_hessian(y)))
        else:
            q = self.initial_inverse_hessian(q) / TARGET_LIPSCHITZ  # first step: ~1/L of the normalised problem
        for (s, y), (rho, alpha) in zip(zip(s_list, y_list), reversed(alphas)):
            q += (alpha - rho * _dot(y, q)) * s
        return -q

    def step(self, u):
        st = self.state
        evaluations = 0
        if st["grad"] is None:
            st["cost"], st["grad"] = self.problem.value_and_grad(u)
            evaluations += 1
        cost, grad = st["cost"], st["grad"]
        if st.get("stationary"):  # no descent along the gradient either: nothing left to search
            self.diagnostics = {"evaluations": evaluations}
            return u, cost
        direction = self.free_directions(u, self.direction(grad))
        if _dot(grad, direction) >= 0:  # not a descent direction: forget the curvature
            st["s"], st["y"] = [], []
            direction = self.free_directions(u, self.direction(grad))
        if not st["s"]:
            direction = capped_first_step(direction)
        slope = _dot(grad, direction)
        t = 1.0
        for _ in range(MAX_LINE_SEARCH):
            candidate = self.problem.project(u + t * direction)
            new_cost, new_grad = self.problem.value_and_grad(candidate)
            evaluations += 1
            if new_cost <= cost + 1e-4 * _dot(grad, candidate - u):
                break
            # Minimum of the quadratic through cost(0), slope(0) and cost(t), kept in [t/10, t/2].
            t_quadratic = -slope * t * t / (2 * (new_cost - cost - slope * t))
            t = min(max(t_quadratic, 0.1 * t), 0.5 * t)
        else:
            # No decrease: with curvature pairs, they may be stale (retry from the gradient next
            # iteration); without, the point is stationary.  Either way the next search is not this one.
            st["stationary"] = not st["s"]
            st["s"], st["y"] = [], []
            self.diagnostics = {"evaluations": evaluations}
            return u, cost
        self.diagnostics = {"evaluations": evaluations}
        s, y = candidate - u, new_grad - grad
        if _dot(s, y) > 1e-12 * _dot(s, s) ** 0.5 * _dot(y, y) ** 0.5:
            st["s"] = (st["s"] + [s])[-self.history_size :]
            st["y"] = (st["y"] + [y])[-self.history_size :]
        st.update(cost=new_cost, grad=new_grad)
        return candidate, new_cost


MAX_LINE_SEARCH = 6  # evaluations; a quasi-Newton step cut below ~1e-3 means the direction is stale
# Largest change of u (phase or attenuation per voxel, radians) in a step without curvature pairs.
# The 1/L scale of that step comes from the Gauss-Newton operator at u = 0 without the loss's
# weights; the Poisson likelihood of a band-limited (focused) probe has pixels where the model
# intensity is ~0 and the gradient 1e5 times larger, so 1/L moved u by hundreds of radians and the
# search never found a decrease (the run stopped with the empty volume).  The amplitude cost's
# first steps are ~1e-4-1e-3 here, so the cap does not bind for it.
FIRST_STEP_MAX = 1e-2


def capped_first_step(direction: torch.Tensor) -> torch.Tensor:
    largest = float(direction.abs().max()) if direction.numel() else 0.0
    return direction * (FIRST_STEP_MAX / largest) if largest > FIRST_STEP_MAX else direction


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product of complex volumes viewed as (delta, beta) pairs."""
    return float(torch.real(torch.vdot(a.flatten(), b.flatten())))


class Adam(Optimizer):
    """torch.optim.Adam on (delta, beta) as one real vector, projected after each step."""

    name = "adam"

    def __init__(self, problem, learning_rate: float = 1e-3, **_):
        super().__init__(problem)
        self.learning_rate = learning_rate
        self.parameter = None
        self.torch_optimizer = None

    def step(self, u):
        if self.parameter is None:
            self.parameter = torch.nn.Parameter(torch.view_as_real(u.clone()))
            self.torch_optimizer = torch.optim.Adam([self.parameter], lr=self.learning_rate)
            if self.state:
                self.torch_optimizer.load_state_dict(self.state)
        else:
            with torch.no_grad():
                self.parameter.copy_(torch.view_as_real(u))
        cost, grad = self.problem.value_and_grad(u)
        self.parameter.grad = torch.view_as_real(grad).clone()
        self.torch_optimizer.step()
        return self.problem.project(torch.view_as_complex(self.parameter.detach()).clone()), cost

    def state_dict(self):
        return self.torch_optimizer.state_dict() if self.torch_optimizer else dict(self.state)


OPTIMIZERS = {cls.name: cls for cls in (GradientDescent, Fista, Lbfgs, Adam)}


def make_optimizer(name: str, problem, **options) -> Optimizer:
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise PtytomoError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    return cls(problem, **options)
