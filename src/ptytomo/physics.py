"""X-ray constants and optical constants of the phantom materials.

The forward model needs only the wavenumber ``k`` and the complex index
``delta + i*beta`` of each material.  Optical constants come from xraydb's
tabulated data (never typed-in numbers), so a phantom built at any beam energy
carries the right contrast between strongly and weakly absorbing materials.

The same constants turn a reconstructed volume into physical units: electron
density from delta, and a named compound's mass density from delta and from
beta (:func:`physical_units`, docs/export.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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


def depth_of_field_m(voxel_size_m: float, energy_kev: float, factor: float = 5.2) -> float:
    """Depth of field ``factor * dx^2 / lambda`` in metres: the thickest sample the projection
    approximation describes at resolution ``dx = voxel_size_m``; thicker ones need a multislice model.

    The factor 5.2 is Li and Maiden's (2018, Sci. Rep. 8:2049, multi-slice ptychographic
    tomography); others use 5.4 (Du et al. 2020) or 4.  It is a rule of thumb, so the factor is
    the caller's to choose.
    """
    dx = _positive_finite(voxel_size_m, "voxel_size_m")
    return _positive_finite(factor, "factor") * dx**2 / wavelength_m(energy_kev)


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


# --------------------------------------------------------------------------
# Physical units of a reconstructed volume
# --------------------------------------------------------------------------

CLASSICAL_ELECTRON_RADIUS_M = 2.8179403262e-15
"""Classical electron radius ``r_e`` in metres (CODATA 2018)."""

OBJECT_PERCENTILE = 99.5
OBJECT_FRACTION = 0.5
OBJECT_DEFINITION = f"voxels whose delta exceeds {OBJECT_FRACTION:g} x the {OBJECT_PERCENTILE:g}th percentile of delta"
"""Which voxels hold the object in :func:`physical_units`' summaries.

A high percentile rather than the maximum, so that a few ringing or noisy
voxels do not move the threshold; half of it, so that the empty space around
the object (delta near 0, noise of either sign) stays out even at a noise of
10 % of the object's delta, and the partial voxels of its surface mostly do
too.  The summaries then describe the densest material and whatever is at
least about half as dense; a sample of materials far apart in density is
better summarised per material, from an exported volume (docs/export.md).
The object must fill well over 0.5 % of the volume, or the percentile lies in
the empty space.
"""


def electron_density_per_delta(energy_kev: float) -> float:
    """Electrons per cubic nanometre per unit delta: ``rho_e = 2 pi delta / (r_e lambda^2)``.

    Away from absorption edges ``delta = r_e lambda^2 rho_e / (2 pi)`` holds
    to within the anomalous scattering factor ``f'/Z`` (below 1 % for light
    elements at hard x-ray energies); close to an edge of an element in the
    sample ``f'`` is large and negative, and this electron density is too low.
    """
    wavelength = wavelength_m(energy_kev)
    per_m3 = 2.0 * math.pi / (CLASSICAL_ELECTRON_RADIUS_M * wavelength**2)
    return per_m3 * 1e-27


def check_compound(text: str) -> None:
    """Accept ``""`` (no compound) or a chemical formula xraydb parses ("SiO2", "Au"); raise one line otherwise."""
    if not isinstance(text, str):
        raise PtytomoError(f"--compound must be a chemical formula such as SiO2, got {text!r}")
    if not text.strip():
        return
    try:
        elements = xraydb.chemparse(text.strip())
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "not a formula"
        raise PtytomoError(f"--compound {text!r} is not a chemical formula xraydb knows ({reason}); "
                           "use element symbols with counts, such as SiO2 or Au") from None
    if not elements:
        raise PtytomoError(f"--compound {text!r} names no element; use a formula such as SiO2 or Au")


def compound_density_factors(formula: str, energy_kev: float) -> tuple[float, float]:
    """Mass density in g/cm^3 per unit delta and per unit beta of ``formula`` at ``energy_kev``.

    delta and beta are proportional to the density, so xraydb's values at
    1 g/cm^3 give both factors: ``density = delta * g_cm3_per_delta``, and
    likewise for beta.  The two estimates agree where the sample is this
    compound and the reconstruction is quantitative in both parts.
    """
    check_compound(formula)
    if not formula.strip():
        raise PtytomoError("--compound is empty; name a chemical formula such as SiO2")
    delta, beta = delta_beta(formula.strip(), 1.0, energy_kev)
    if not (delta > 0 and beta > 0):
        raise PtytomoError(f"--compound {formula!r} has delta {delta:g}, beta {beta:g} at {energy_kev:g} keV; "
                           "expected both > 0")
    return 1.0 / delta, 1.0 / beta


def object_mask(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """Boolean mask of the voxels that hold the object (:data:`OBJECT_DEFINITION`) and its delta threshold.

    The mask is empty (threshold NaN) when no finite delta is positive.
    """
    delta = np.asarray(delta)
    finite = np.isfinite(delta)
    if not finite.any():
        return np.zeros(delta.shape, dtype=bool), float("nan")
    high = float(np.percentile(delta[finite], OBJECT_PERCENTILE))
    if not high > 0:
        return np.zeros(delta.shape, dtype=bool), float("nan")
    threshold = OBJECT_FRACTION * high
    with np.errstate(invalid="ignore"):
        return finite & (delta > threshold), threshold


def physical_units(volume: np.ndarray, energy_kev: float, compound: str = "") -> dict:
    """Physical units of a ``delta + i*beta`` volume, as attributes for ``/reconstruction``.

    Always: ``electron_density_per_delta_nm3`` (electrons/nm^3 per unit
    delta), the object's definition (:data:`OBJECT_DEFINITION`), its delta
    threshold and voxel fraction, and the median, 5th and 95th percentiles of
    its electron density (e/nm^3) over the object's voxels.  With a
    ``compound``: the formula, its mass density per unit delta and per unit
    beta (g/cm^3), and the object's median mass density from delta and from
    beta, which differ where the sample is not that compound or one part of
    the reconstruction is not quantitative.  Medians are NaN when no voxel
    holds an object (no positive delta).
    """
    check_compound(compound)
    per_delta = electron_density_per_delta(energy_kev)
    volume = np.asarray(volume)
    delta = volume.real
    mask, threshold = object_mask(delta)
    inside = delta[mask].astype(np.float64)
    summaries = np.percentile(inside, (50, 5, 95)) * per_delta if inside.size else np.full(3, np.nan)
    units = {
        "electron_density_per_delta_nm3": per_delta,
        "object_definition": OBJECT_DEFINITION,
        "object_delta_threshold": threshold,
        "object_voxel_fraction": float(mask.mean()) if mask.size else 0.0,
        "object_electron_density_median_nm3": float(summaries[0]),
        "object_electron_density_p05_nm3": float(summaries[1]),
        "object_electron_density_p95_nm3": float(summaries[2]),
    }
    if compound.strip():
        per_delta_mass, per_beta_mass = compound_density_factors(compound, energy_kev)
        beta = volume.imag if np.iscomplexobj(volume) else np.zeros(volume.shape)
        inside_beta = beta[mask].astype(np.float64)
        units.update({
            "compound": compound.strip(),
            "mass_density_per_delta_g_cm3": per_delta_mass,
            "mass_density_per_beta_g_cm3": per_beta_mass,
            "object_mass_density_from_delta_median_g_cm3":
                float(np.median(inside)) * per_delta_mass if inside.size else float("nan"),
            "object_mass_density_from_beta_median_g_cm3":
                float(np.median(inside_beta)) * per_beta_mass if inside_beta.size else float("nan"),
        })
    return units
