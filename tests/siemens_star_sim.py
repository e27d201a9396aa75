"""An independent simulator of a 2D Siemens-star ptychography scan, written as a beamline CXI file.

Nothing here imports ptytomo: the object, the probe, the scan and the detector
are modelled with numpy alone, from the physics rather than from ptytomo's
forward model, so that ``ptytomo import`` + ``ptytomo reconstruct`` meet data
they did not make.  Used by ``benchmarks/siemens_star.py`` and
``tests/test_siemens_star.py``; the measurements at the bottom (spoke
modulation, phase and probe correlation) are numpy too.

Physics and conventions (what differs from ptytomo's own simulator):

- The object is a Siemens star (``spokes`` gold-like spokes: phase ``phase``
  rad, amplitude ``amplitude``) rendered on a grid twice as fine as the
  detector's object-plane pixel, each fine pixel the area average of 4 x 4
  sub-samples.  It follows the physics sign, ``T = A exp(-i phi)``
  (``n = 1 - delta + i beta`` with an ``exp(+i k z)`` wave), the conjugate of
  FORMAT.md's ``exp(+i k P delta)``: the importer has to find that out.
- The probe is a Fresnel zone plate's: an annular pupil (central stop),
  defocused so that the sample sees a ring-shaped beam with Fresnel fringes,
  a little astigmatism, and ``modes`` incoherent modes from a finite source
  (the pupil shifted by a fraction of a detector pixel, weighted).
- Each exit wave is formed on the fine grid (2M x 2M) at the TRUE position:
  the nominal Fermat-spiral position plus a stage error (``position_error``
  px rms per coordinate), applied as a sub-pixel Fourier shift of the object.
  Its far field (numpy FFT) is cropped to the central M x M: the detector's
  finite aperture band-limits the data (no interpolation, no inverse crime).
- Poisson counts, stored as uint16 with the zero frequency at the corner
  (unshifted FFT order), as detectors write them.  The file holds the NOMINAL
  positions and a poor probe guess (a flat disc of the wrong size, or the
  unaberrated, unshifted pupil), as beamline files do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import h5py
import numpy as np

JOULES_PER_EV = 1.602176634e-19
HC_EV_M = 1.239841984e-6  # h c in eV m
FINE = 2  # fine-grid oversampling against the detector's object-plane pixel
SUPER = 4  # sub-samples per fine pixel and axis when rendering the star
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


@dataclass
class StarConfig:
    detector: int = 64  # M, detector pixels per side (after the far-field crop)
    frames: int = 300
    spokes: int = 36
    phase: float = 0.8  # phase shift of a spoke, rad (about 250 nm of gold at 6.2 keV)
    amplitude: float = 0.9  # transmitted amplitude in a spoke
    star_radius: float = 0.0  # px; 0: 85 % of the scanned field's radius
    pupil_radius: float = 0.22  # outer radius of the zone plate's bright-field disc, fraction of M
    central_stop: float = 0.4  # inner radius / outer radius
    beam_diameter: float = 0.45  # outer diameter of the defocused ring in the sample plane, fraction of M
    astigmatism: float = 0.6  # rad at the pupil's edge
    modes: int = 3
    mode_weights: tuple = (0.7, 0.2, 0.1)  # intensity fractions
    mode_shift: float = 0.7  # detector pixels by which the weaker modes' pupils are displaced
    step: float = 0.25  # mean spacing of the Fermat spiral, fraction of the beam diameter
    position_error: float = 0.5  # px rms per coordinate, NOT in the file
    photons: float = 2e5  # mean counts per frame
    energy_ev: float = 6200.0
    detector_pixel_m: float = 75e-6
    object_pixel_m: float = 20e-9  # sets the detector distance: lambda z / (M d)
    stage_origin_m: tuple = (3.1e-6, -1.7e-6)  # (x, y) of the stage's zero: arbitrary
    file_probe: str = "disc"  # disc | pupil: the guess the file carries
    seed: int = 0

    @property
    def wavelength_m(self) -> float:
        return HC_EV_M / self.energy_ev

    @property
    def distance_m(self) -> float:
        return self.object_pixel_m * self.detector * self.detector_pixel_m / self.wavelength_m

    @property
    def beam_px(self) -> float:
        return self.beam_diameter * self.detector

    @property
    def defocus_m(self) -> float:
        """Distance from the zone plate's focus to the sample that the pupil's defocus phase
        ``pi s / M rho^2`` (see :func:`pupil`) stands for, positive when the sample is downstream: with
        this file's physics sign (``exp(+i k z)`` waves) free space multiplies the angular spectrum by
        ``exp(-i pi lambda z f^2)``, ``f = rho / (M d)``, so ``z = -s M d^2 / lambda`` (a converging beam)."""
        s = 0.5 * self.beam_px / (self.pupil_radius * self.detector)
        return -s * self.detector * self.object_pixel_m**2 / self.wavelength_m

    @property
    def spiral_c(self) -> float:
        """Fermat spiral r_k = c sqrt(k + 1/2): each point has area pi c^2, mean spacing about c sqrt(pi)."""
        return self.step * self.beam_px / np.sqrt(np.pi)

    @property
    def scan_radius(self) -> float:
        return self.spiral_c * np.sqrt(self.frames)

    @property
    def radius(self) -> float:
        return self.star_radius or 0.85 * self.scan_radius


@dataclass
class StarScan:
    config: StarConfig
    nominal: np.ndarray  # (J, 2) window corners (row, col), coarse pixels, canvas coordinates
    true: np.ndarray  # (J, 2)
    centre: np.ndarray  # (2,) star centre, coarse pixels, canvas coordinates
    probe_modes: np.ndarray  # (K, M, M) true probe on the coarse grid, physics sign, sum |P|^2 = photons
    file_probe: np.ndarray  # (M, M) the guess written to the file
    frames: np.ndarray  # (J, M, M) uint16, DC at the corner
    expected_photons: np.ndarray = field(default=None)  # (J,) noise-free counts per frame


# ----------------------------------------------------------------------------------------------
# object


def star_phase_fraction(rows: np.ndarray, cols: np.ndarray, centre, spokes: int, radius: float) -> np.ndarray:
    """Fraction of each pixel (centres rows, cols, in coarse px; size given by the caller's sub-sampling)
    covered by a spoke: 1 inside a spoke, 0 between spokes and outside the star."""
    y, x = rows - centre[0], cols - centre[1]
    theta = np.arctan2(y, x)
    inside = np.cos(spokes * theta) > 0  # 2 * spokes sectors, every other one gold
    return (inside & (np.hypot(y, x) <= radius)).astype(np.float64)


def render_star(shape, pixel: float, origin, centre, spokes: int, radius: float, sub: int = SUPER) -> np.ndarray:
    """Spoke coverage (0..1) of a grid of ``shape`` whose pixel (i, j) is centred at
    origin + (i, j) * pixel (coarse px), each the mean of sub x sub point samples."""
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    out = np.zeros(shape)
    rows = origin[0] + np.arange(shape[0]) * pixel
    cols = origin[1] + np.arange(shape[1]) * pixel
    for dr in offsets:
        for dc in offsets:
            out += star_phase_fraction((rows + dr * pixel)[:, None], (cols + dc * pixel)[None, :], centre, spokes,
                                       radius)
    return out / sub**2


def transmission(coverage: np.ndarray, config: StarConfig, sign: float = -1.0) -> np.ndarray:
    """Complex transmission from spoke coverage: amplitude and phase mixed per covered area.
    ``sign = -1``: the physics convention exp(-i phi); +1: FORMAT.md's."""
    spoke = config.amplitude * np.exp(sign * 1j * config.phase)
    return 1.0 + coverage * (spoke - 1.0)


# ----------------------------------------------------------------------------------------------
# probe


def pupil(n: int, config: StarConfig, shift=(0.0, 0.0), aberrated: bool = True, sub: int = SUPER) -> np.ndarray:
    """Zone-plate pupil on an n x n far-field grid in detector pixels, centred at n//2 (+ shift):
    annulus (anti-aliased edges) times defocus (and astigmatism)."""
    m = config.detector
    r_out = config.pupil_radius * m
    r_in = config.central_stop * r_out
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    q = np.arange(n) - n // 2
    amp = np.zeros((n, n))
    for dr in offsets:
        for dc in offsets:
            rho = np.hypot(q[:, None] + dr - shift[0], q[None, :] + dc - shift[1])
            amp += (rho <= r_out) & (rho >= r_in)
    amp /= sub**2
    qy, qx = q[:, None] - shift[0], q[None, :] - shift[1]
    rho2 = qy**2 + qx**2
    # Defocus: the ray of pupil radius rho lands at s * rho coarse px, s = beam radius / pupil radius;
    # stationary phase of sum exp(i alpha rho^2 + 2 pi i rho x / M) gives alpha = pi s / M.
    s = 0.5 * config.beam_px / r_out
    phase = np.pi * s / m * rho2
    if aberrated:
        phase = phase + config.astigmatism * (qx**2 - qy**2) / r_out**2
    return amp * np.exp(1j * phase)


def probe_from_pupil(field_far: np.ndarray) -> np.ndarray:
    """Object-plane probe (centred at n//2) of a centred far field, unitary DFT."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(field_far), norm="ortho"))


def true_probes(config: StarConfig, n: int):
    """(K, n, n) probe modes on a grid of n pixels per side (n = M coarse, 2M fine: same far-field pixel),
    scaled so that the modes' summed power is the photon count."""
    shifts = [(0.0, 0.0), (config.mode_shift, 0.0), (0.0, -config.mode_shift)][: config.modes]
    weights = np.asarray(config.mode_weights[: config.modes], dtype=np.float64)
    weights = weights / weights.sum()
    modes = []
    for shift, w in zip(shifts, weights):
        far = pupil(n, config, shift)
        modes.append(far * np.sqrt(w * config.photons / np.sum(np.abs(far) ** 2)))
    # The fine grid's far field is the same pupil on a wider frequency range (zero beyond the pupil),
    # so the probe's object-plane samples differ, the power (Parseval) does not.
    return np.stack([probe_from_pupil(f) for f in modes])


def guess_probe(config: StarConfig) -> np.ndarray:
    """What the file carries instead of the probe: a flat disc 60 % of the beam's size with the right power,
    or the pupil without aberrations and modes."""
    m = config.detector
    if config.file_probe == "disc":
        q = np.arange(m) - m // 2
        disc = (np.hypot(q[:, None], q[None, :]) <= 0.3 * config.beam_px).astype(np.complex128)
        return disc * np.sqrt(config.photons / disc.sum())
    if config.file_probe == "pupil":
        far = pupil(m, config, aberrated=False)
        return probe_from_pupil(far * np.sqrt(config.photons / np.sum(np.abs(far) ** 2)))
    raise ValueError(f"file_probe {config.file_probe!r}: disc or pupil")


# ----------------------------------------------------------------------------------------------
# scan and detector


def fermat_corners(config: StarConfig, centre) -> np.ndarray:
    k = np.arange(config.frames)
    r = config.spiral_c * np.sqrt(k + 0.5)
    t = k * GOLDEN_ANGLE
    centres = np.stack([centre[0] + r * np.sin(t), centre[1] + r * np.cos(t)], axis=-1)
    return centres - config.detector / 2  # the window's top-left corner; the probe sits at its M//2


def fourier_shift(patch: np.ndarray, frac) -> np.ndarray:
    """patch(u + frac) by the Fourier shift theorem (periodic; the caller crops a margin)."""
    ky = np.fft.fftfreq(patch.shape[0])[:, None]
    kx = np.fft.fftfreq(patch.shape[1])[None, :]
    ramp = np.exp(2j * np.pi * (ky * frac[0] + kx * frac[1]))
    return np.fft.ifft2(np.fft.fft2(patch) * ramp)


def simulate(config: StarConfig, progress: bool = False) -> StarScan:
    rng = np.random.default_rng(config.seed)
    m, n = config.detector, FINE * config.detector
    margin_px = config.scan_radius + m / 2 + 4 * max(config.position_error, 0.5) + 4
    canvas = int(np.ceil(2 * margin_px + m))  # coarse px
    centre = np.array([canvas / 2, canvas / 2])
    nominal = fermat_corners(config, centre)
    true = nominal + rng.normal(0.0, config.position_error, nominal.shape)
    # Object on the fine grid: fine pixel j is centred at coarse coordinate j / FINE.
    fine_shape = (FINE * canvas, FINE * canvas)
    coverage = render_star(fine_shape, 1.0 / FINE, (0.0, 0.0), centre, config.spokes, config.radius)
    obj = transmission(coverage, config, sign=-1.0)
    probes_fine = true_probes(config, n)
    probes_coarse = true_probes(config, m)
    pad = 4  # fine pixels of margin for the periodic sub-pixel shift
    frames = np.zeros((config.frames, m, m), dtype=np.uint16)
    expected = np.zeros(config.frames)
    lo = n // 2 - m // 2
    for j, corner in enumerate(true):
        start = FINE * corner
        base = np.floor(start).astype(int)
        frac = start - base
        patch = obj[base[0] - pad: base[0] + n + pad, base[1] - pad: base[1] + n + pad]
        window = fourier_shift(patch, frac)[pad: pad + n, pad: pad + n]
        intensity = np.zeros((m, m))
        for probe in probes_fine:
            far = np.fft.fftshift(np.fft.fft2(probe * window, norm="ortho"))
            intensity += np.abs(far[lo: lo + m, lo: lo + m]) ** 2  # the detector's aperture
        expected[j] = intensity.sum()
        counts = rng.poisson(intensity)
        frames[j] = np.fft.ifftshift(np.minimum(counts, 65534)).astype(np.uint16)  # DC at the corner
        if progress and j % 100 == 0:
            print(f"  frame {j}/{config.frames}", flush=True)
    return StarScan(config, nominal, true, centre, probes_coarse, guess_probe(config), frames, expected)


def write_cxi(path, scan: StarScan) -> None:
    """CXI 1.6 as a beamline writes it: SI units, the SAMPLE's translation (x, y, z) in metres
    (the window moves the other way), nominal positions only, the probe guess."""
    c = scan.config
    px = c.object_pixel_m
    rows_m, cols_m = (scan.nominal * px).T
    translation = np.stack([-cols_m + c.stage_origin_m[0], -rows_m + c.stage_origin_m[1],
                            np.zeros_like(rows_m)], axis=-1)
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        entry = f.create_group("entry_1")
        detector = entry.create_group("instrument_1/detector_1")
        detector.create_dataset("data", data=scan.frames, chunks=(min(64, c.frames), c.detector, c.detector),
                                compression="gzip")
        entry["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        detector["distance"] = c.distance_m
        detector["x_pixel_size"] = c.detector_pixel_m
        detector["y_pixel_size"] = c.detector_pixel_m
        entry["sample_1/geometry_1/translation"] = translation
        entry["instrument_1/source_1/energy"] = c.energy_ev * JOULES_PER_EV
        entry["instrument_1/source_1/illumination"] = scan.file_probe.astype(np.complex64)
        entry["sample_1/name"] = "Siemens star (independent numpy simulation)"


def write_truth(path, scan: StarScan) -> None:
    """What the file does not hold: true positions, probe modes, the star (npz)."""
    np.savez(path, nominal=scan.nominal, true=scan.true, centre=scan.centre, probe_modes=scan.probe_modes,
             file_probe=scan.file_probe, config=np.array(repr(asdict(scan.config))))


# ----------------------------------------------------------------------------------------------
# measurements (numpy): in the reconstruction's (FORMAT.md) coordinates and sign


def truth_phase(shape, centre, config: StarConfig, sub: int = SUPER) -> np.ndarray:
    """FORMAT.md-sign phase of the star (phase * coverage) on a coarse grid whose pixel (i, j) is at
    (i, j); ``centre`` in that grid's coordinates."""
    return config.phase * render_star(shape, 1.0, (0.0, 0.0), centre, config.spokes, config.radius, sub)


def illumination(shape, corners, probe_modes) -> np.ndarray:
    """Summed probe intensity of all windows on a grid (integer-rounded corners; for a region mask)."""
    m = probe_modes.shape[-1]
    power = (np.abs(probe_modes) ** 2).sum(0)
    big = np.zeros((shape[0] + 2 * m, shape[1] + 2 * m))
    for r, c in np.rint(corners).astype(int):
        big[r + m: r + 2 * m, c + m: c + 2 * m] += power
    return big[m: m + shape[0], m: m + shape[1]]


def remove_ramp(o: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """o times the conjugate of the best global phase offset and linear phase ramp relative to the reference
    transmission (ramps and offsets are ambiguities of ptychography), over ``region``."""
    g = o * np.conj(reference) * region
    rows, cols = np.indices(o.shape)
    slope_r = np.angle(np.sum(g[1:, :] * np.conj(g[:-1, :])))
    slope_c = np.angle(np.sum(g[:, 1:] * np.conj(g[:, :-1])))
    ramp = np.exp(-1j * (slope_r * rows + slope_c * cols))
    offset = np.angle(np.sum(g * ramp))
    return o * ramp * np.exp(-1j * offset)


def correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    a, b = a[region] - a[region].mean(), b[region] - b[region].mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b) + 1e-300))


def register(phase: np.ndarray, centre, config: StarConfig, region: np.ndarray, span: float = 2.0,
             steps: int = 9) -> tuple[np.ndarray, float]:
    """Star centre (sub-pixel) that best matches the reconstructed phase: ptychography leaves the object
    free to move with the probe.  Coarse grid of trial centres, then a finer one around the best."""
    best, best_c = np.asarray(centre, float), -2.0
    for width in (span, span / 4, span / 16):
        grid = np.linspace(-width, width, steps)
        base = best.copy()
        for dr in grid:
            for dc in grid:
                trial = base + (dr, dc)
                c = correlation(phase, truth_phase(phase.shape, trial, config, sub=2), region)
                if c > best_c:
                    best, best_c = trial, c
    return best, best_c


def integer_shift(image: np.ndarray, reference: np.ndarray, region: np.ndarray, max_shift: int = 8) -> np.ndarray:
    """(rows, cols), each within ``max_shift``, by which ``image`` is the ``reference`` moved: peak of their
    circular cross-correlation over ``region`` (for a star displaced by more than a pixel)."""
    a = np.where(region, image - image[region].mean(), 0.0)
    b = np.where(region, reference - reference[region].mean(), 0.0)
    xc = np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real
    shifts = [np.fft.fftfreq(n, 1.0 / n) for n in xc.shape]  # 0, 1, ..., -1
    xc[(np.abs(shifts[0])[:, None] > max_shift) | (np.abs(shifts[1])[None, :] > max_shift)] = -np.inf
    peak = np.unravel_index(int(np.argmax(xc)), xc.shape)
    return np.array([shifts[0][peak[0]], shifts[1][peak[1]]])


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    r0 = np.clip(r0, 0, image.shape[0] - 2)
    c0 = np.clip(c0, 0, image.shape[1] - 2)
    return ((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c0 + 1]
            + fr * (1 - fc) * image[r0 + 1, c0] + fr * fc * image[r0 + 1, c0 + 1])


def modulation(phase: np.ndarray, centre, spokes: int, radii: np.ndarray) -> np.ndarray:
    """Amplitude of the spokes' harmonic exp(i spokes theta) of the phase along circles of the given radii."""
    out = []
    for r in radii:
        count = max(720, int(16 * 2 * np.pi * r))
        theta = 2 * np.pi * np.arange(count) / count
        values = bilinear(phase, centre[0] + r * np.sin(theta), centre[1] + r * np.cos(theta))
        out.append(2 * np.abs(np.mean(values * np.exp(-1j * spokes * theta))))
    return np.asarray(out)


def resolved_radius(mod: np.ndarray, radii: np.ndarray, reference: float, fraction: float = 0.5) -> float:
    """Smallest radius from which outwards every circle keeps ``fraction`` of the reference modulation."""
    ok = mod >= fraction * reference
    if not ok[-1]:
        return float("inf")
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    return float(radii[i])


def ideal_modulation(config: StarConfig) -> float:
    """The spokes' first harmonic of an ideal 50 % duty square wave of height ``phase``: 2 phase / pi."""
    return 2 * config.phase / np.pi


def probe_shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = 8) -> float:
    """Best correlation of two moduli over integer circular shifts of b (probe and object may move together)."""
    best = -2.0
    region = np.ones(a.shape, bool)
    for dr in range(-max_shift, max_shift + 1):
        for dc in range(-max_shift, max_shift + 1):
            best = max(best, correlation(a, np.roll(b, (dr, dc), axis=(0, 1)), region))
    return best


def probe_modulus(modes: np.ndarray) -> np.ndarray:
    modes = np.asarray(modes)
    if modes.ndim == 2:
        modes = modes[None]
    return np.sqrt((np.abs(modes) ** 2).sum(0))


def stop_ratio(modes: np.ndarray, config: StarConfig) -> float:
    """Far-field amplitude inside the zone plate's central stop over that in its annulus (true probe ~0,
    a flat disc > 1): does the probe show the ring?  Centred on the far field's centroid (pixels above
    10 % of the brightest), so a phase ramp of the probe (a shifted far field) does not matter."""
    modes = np.asarray(modes)
    if modes.ndim == 2:
        modes = modes[None]
    m = modes.shape[-1]
    far = np.sqrt(sum(np.abs(np.fft.fftshift(np.fft.fft2(p, norm="ortho"))) ** 2 for p in modes))
    weight = np.where(far >= 0.1 * far.max(), far, 0.0)
    rows, cols = np.indices(far.shape)
    centre = (np.sum(weight * rows) / weight.sum(), np.sum(weight * cols) / weight.sum())
    rho = np.hypot(rows - centre[0], cols - centre[1])
    r_out = config.pupil_radius * m
    r_in = config.central_stop * r_out
    hole = far[rho <= 0.6 * r_in].mean()
    ring = far[(rho >= r_in + 1) & (rho <= r_out - 1)].mean()
    return float(hole / ring)


class Scorer:
    """The measurements of one data set, in the imported file's pixel coordinates and FORMAT.md's sign.

    ``positions`` (J, 2), ``volume_shape`` and ``file_probe`` are the imported file's
    (/measurement/positions of the angle, /geometry volume_shape, /probe)."""

    def __init__(self, config: StarConfig, scan: StarScan, positions: np.ndarray, volume_shape, file_probe):
        self.config = config
        offset = positions - scan.nominal  # the importer centred the scanned field
        if np.ptp(offset, axis=0).max() > 1e-6:
            raise RuntimeError(f"imported positions are not the file's nominal ones moved: spread {np.ptp(offset, 0)}")
        self.offset = offset.mean(0)
        self.centre = scan.centre + self.offset
        nz, _, nx = volume_shape
        self.shape = (nz, nx)
        # FORMAT.md's probe is the conjugate of the physics-sign one (import conjugates); the moduli agree.
        self.true_probe = np.conj(scan.probe_modes)
        lit = illumination(self.shape, positions, self.true_probe)
        self.region = lit >= 0.25 * lit.max()
        self.radii = np.arange(2.0, config.radius - 2.0, 0.5)
        self.file_probe = file_probe

    def truth(self, centre=None) -> np.ndarray:
        return truth_phase(self.shape, self.centre if centre is None else centre, self.config)

    def phase(self, o: np.ndarray):
        """Phase after offset/ramp removal and registration, in the sign that matches the truth better
        (FORMAT.md's +, or - when the frames kept the physics sign); (phase, centre, correlation, sign)."""
        best = None
        for sign, candidate in ((+1, o), (-1, np.conj(o))):
            centre = self.centre
            for _ in range(2):  # the ramp is removed against the registered truth, which needs the ramp removed
                reference = transmission(self.truth(centre) / self.config.phase, self.config, sign=+1.0)
                phase = np.angle(remove_ramp(candidate, reference, self.region))
                centre = self.centre + integer_shift(phase, self.truth(), self.region)
                centre, _ = register(phase, centre, self.config, self.region, span=1.0)
            reference = transmission(self.truth(centre) / self.config.phase, self.config, sign=+1.0)
            phase = np.angle(remove_ramp(candidate, reference, self.region))
            corr = correlation(phase, self.truth(centre), self.region)
            if best is None or corr > best[2]:
                best = (phase, centre, corr, sign)
        return best

    def star(self, phase: np.ndarray, centre) -> tuple[np.ndarray, float]:
        mod = modulation(phase, centre, self.config.spokes, self.radii)
        return mod, resolved_radius(mod, self.radii, ideal_modulation(self.config))

    def probe(self, modes: np.ndarray) -> tuple[float, float]:
        corr = probe_shift_correlation(probe_modulus(self.true_probe), probe_modulus(modes))
        return corr, stop_ratio(modes, self.config)


def position_error(scan: StarScan, imported: np.ndarray, positions) -> tuple[float, float]:
    """rms (per coordinate) of window errors after removing the mean: file's nominal and refined."""
    def rms(p):
        e = p - (scan.true + (imported - scan.nominal))
        e = e - e.mean(0)
        return float(np.sqrt(np.mean(e**2)))
    return rms(imported), (rms(positions) if positions is not None else float("nan"))
