"""X-ray constants and optical constants of the phantom materials.

The forward model needs only the wavenumber ``k`` and the complex index
``delta + i*beta`` of each material.  Optical constants come from xraydb's
tabulated data (never typed-in numbers), so a phantom built at any beam energy
carries the right contrast between strongly and weakly absorbing materials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import xraydb

from ptytomo.errors import PtytomoError

PLANCK_KEV_M = 1.239841984e-9
"""h*c in keV*m: ``lambda_m = PLANCK_KEV_M / energy_kev`` (FORMAT.md)."""


def _positive_finite(value: float, name: str) -> float:
    """Return ``value`` as a float, or raise naming ``name`` if it is not a finite positive number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PtytomoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0.0:
        raise PtytomoError(f"{name} must be finite and > 0, got {value!r}")
    return number


def wavelength_m(energy_kev: float) -> float:
    """Wavelength in metres of a photon of ``energy_kev``."""
    return PLANCK_KEV_M / _positive_finite(energy_kev, "energy_kev")


def wavenumber(energy_kev: float) -> float:
    """Wavenumber ``k = 2*pi/lambda`` in rad/m, the factor in ``exp(i k R x)``."""
    return 2.0 * math.pi / wavelength_m(energy_kev)


def delta_beta(formula: str, density_g_cm3: float, energy_kev: float) -> tuple[float, float]:
    """Refractive-index decrement ``delta`` and absorption index ``beta`` of a compound.

    ``formula`` is a chemical formula such as ``"TiO2"``; xraydb expects the
    energy in eV, hence the conversion here.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise PtytomoError(f"formula must be a non-empty chemical formula, got {formula!r}")
    density = _positive_finite(density_g_cm3, "density_g_cm3")
    energy = _positive_finite(energy_kev, "energy_kev")
    try:
        xraydb.chemparse(formula)
    except ValueError:
        raise PtytomoError(f"formula {formula!r} is not a chemical formula xraydb knows") from None
    try:
        delta, beta, _ = xraydb.xray_delta_beta(formula, density, energy * 1e3)
    except ValueError:
        raise PtytomoError(f"energy_kev={energy_kev!r} is outside xraydb's tabulated range") from None
    if not (math.isfinite(delta) and math.isfinite(beta)):
        raise PtytomoError(f"energy_kev={energy_kev!r} gives non-finite optical constants for {formula!r}")
    return float(delta), float(beta)


@dataclass(frozen=True)
class Material:
    """A named compound at a given density, the unit the phantoms are built from."""

    name: str
    formula: str
    density_g_cm3: float

    def refractive_index(self, energy_kev: float) -> complex:
        """Complex index ``delta + 1j*beta`` at ``energy_kev``, the value stored in a volume."""
        delta, beta = delta_beta(self.formula, self.density_g_cm3, energy_kev)
        return complex(delta, beta)


WIRE_MATERIALS: tuple[Material, ...] = (
    Material("gold", "Au", 19.32),
    Material("platinum", "Pt", 21.45),
    Material("zinc oxide", "ZnO", 5.606),
    Material("titania", "TiO2", 4.23),
)
"""The reference paper's four wire materials: two strongly, two weakly absorbing.

Gold is 19.32 g/cm^3; the paper's "9.32" is a typo (METHOD.md).
"""
