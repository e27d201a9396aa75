"""Device and precision selection, with clear errors for what is not there."""

from __future__ import annotations

import torch

from .errors import PtytomoError

PRECISIONS = {"float32": (torch.float32, torch.complex64), "float64": (torch.float64, torch.complex128)}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error, not a crash later."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PtytomoError(f"--device {name} asked for, but CUDA is not available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PtytomoError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise PtytomoError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def resolve_precision(name: str) -> tuple[torch.dtype, torch.dtype]:
    """(real dtype, complex dtype) for ``float32`` or ``float64``."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise PtytomoError(f"unknown precision {name!r}; use {' or '.join(PRECISIONS)}") from None


def complex_dtype_of(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64
