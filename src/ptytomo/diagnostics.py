"""What the fit says about the data: the final misfit against what photon noise alone leaves.

For Poisson counts n with mean lambda, the amplitude misfit (sqrt(n) - sqrt(lambda))^2 has
expectation close to 1/4 wherever lambda is a few photons or more (the variance of sqrt of a
Poisson variable), and the Poisson deviance used by ``--loss poisson`` (half the usual
deviance) close to 1/2: both fall towards 0 in pixels that receive almost nothing.  A fit
whose misfit stays many times above that leaves structure in the data unexplained: a wrong
probe, wrong positions, misaligned projections, or frames in the other sign convention.
"""

from __future__ import annotations

import numpy as np

from .distributed import SOLO, Comm
from .stream import _angle_chunks

# Expected misfit per pixel at high counts, per loss (intensity: the count itself, see below).
NOISE_PER_PIXEL = {"amplitude": 0.25, "poisson": 0.5}
# A misfit this many times the noise expectation earns a warning.
BAD_FIT_RATIO = 10.0


def expected_noise_misfit(data, loss: str) -> float:
    """Sum over this rank's measured pixels of the misfit Poisson noise alone would leave."""
    valid = data.valid_or_all()
    mask = None if data.mask is None else np.asarray(data.mask, dtype=bool)
    total = 0.0
    for angles, frames in _angle_chunks(data, 256 * 2**20):
        counts = np.asarray(frames, dtype=np.float64)[valid[angles]]
        if mask is not None:
            counts = counts[:, mask]
        if loss == "intensity":
            total += float(counts.sum())  # Var(n) = lambda
        else:
            total += float(np.sum(NOISE_PER_PIXEL[loss] * -np.expm1(-counts)))
    return total


def fit_quality(misfit_counts: float, data, loss: str, comm: Comm = SOLO) -> tuple[dict, str | None]:
    """(parameters to record, a warning line or None) for a final data misfit in count units."""
    import torch

    noise = float(comm.sum(torch.tensor(expected_noise_misfit(data, loss), dtype=torch.float64)))  # all ranks
    ratio = misfit_counts / noise if noise > 0 else float("inf")
    record = {"final_misfit": misfit_counts, "noise_misfit": noise, "misfit_to_noise": ratio}
    warning = None
    if ratio > BAD_FIT_RATIO:
        warning = (f"the final misfit is {ratio:.3g}x what photon noise alone would leave: the model does not "
                   "explain the data; likely causes: the probe (try --refine probe, --probe-modes 3, "
                   "--probe-init mean-pattern with --probe-defocus for a defocused zone plate), the scan positions "
                   "(--refine probe,positions), misaligned projections, or frames in the other sign convention "
                   "(ptytomo import --conjugate)")
    return record, warning
