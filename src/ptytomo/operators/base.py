"""The operator interface: ``forward`` (A) and ``adjoint`` (A^H), side by side.

Every operator in ptytomo is linear in its input and exposes both directions,
so that gradients are assembled by the explicit chain rule and every operator
shares one adjointness test.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LinearOperator(Protocol):
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum(conj(a) * b), real part for real tensors."""
    return torch.sum(a.conj() * b) if a.is_complex() else torch.sum(a * b)


def adjointness_gap(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative gap |<A x, y> - <x, A^H y>| / (|A x| |y|), zero for an exact adjoint."""
    ax = op.forward(x)
    lhs = inner(ax, y)
    rhs = inner(x, op.adjoint(y))
    scale = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return float(torch.abs(lhs - rhs) / scale)
