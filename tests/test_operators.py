"""Tests of the linear operators (R, Q), the joint model built from them, and their conventions.

Every claim is checked with numbers: adjointness gaps, agreement with an
independent numpy implementation of FORMAT.md, with analytic chord lengths,
and with Fourier-shifted objects.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptytomo.operators import JointModel, ParallelProjector, Ptychography, adjointness_gap, shift_probe
from ptytomo.operators.ptycho import far_field
from ptytomo.physics import wavenumber
from ptytomo.scan import disc_probe

GAP_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}

# Every octant, both diagonals, the axes (0 exactly included) and a few irregular angles.
OCTANT_ANGLES = np.concatenate([np.arange(16) * np.pi / 8, [0.3, 2.0, 3.9, 5.9, 2 * np.pi - 1e-3]])


def random_tensor(shape, dtype, is_complex=False, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=g, dtype=dtype)
    if not is_complex:
        return real
    return torch.complex(real, torch.randn(shape, generator=g, dtype=dtype))


def rel_error(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


class LambdaOperator:
    """A LinearOperator from two callables (for composite maps in adjointness tests)."""

    def __init__(self, forward, adjoint):
        self.forward = forward
        self.adjoint = adjoint


# ---------------------------------------------------------------------------
# 1. Adjointness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_complex", [False, True])
@pytest.mark.parametrize("shape", [(4, 8, 8), (3, 9, 9), (2, 7, 10), (3, 10, 7), (1, 6, 5)])
def test_projector_adjoint(dtype, is_complex, shape):
    projector = ParallelProjector(shape, OCTANT_ANGLES, voxel_size_m=0.7, dtype=dtype)
    x = random_tensor(shape, dtype, is_complex, seed=1)
    y = random_tensor(projector.projection_shape, dtype, is_complex, seed=2)
    assert projector.projection_shape == (len(OCTANT_ANGLES), shape[0], shape[2])
    gap = adjointness_gap(projector, x, y)
    assert gap <= GAP_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projector_complex_is_real_and_imaginary_parts(dtype):
    """R is real: R(a + ib) = Ra + i Rb, in both directions."""
    shape = (3, 8, 9)
    projector = ParallelProjector(shape, OCTANT_ANGLES[:7], dtype=dtype)
    a, b = random_tensor(shape, dtype, seed=3), random_tensor(shape, dtype, seed=4)
    both = projector.forward(torch.complex(a, b))
    assert rel_error(both.real, projector.forward(a)) < 10 * torch.finfo(dtype).eps
    assert rel_error(both.imag, projector.forward(b)) < 10 * torch.finfo(dtype).eps
    ya, yb = random_tensor(projector.projection_shape, dtype, seed=5), random_tensor(projector.projection_shape, dtype, seed=6)
    back = projector.adjoint(torch.complex(ya, yb))
    assert rel_error(back.real, projector.adjoint(ya)) < 10 * torch.finfo(dtype).eps
    assert rel_error(back.imag, projector.adjoint(yb)) < 10 * torch.finfo(dtype).eps


def test_projector_accepts_conjugate_views():
    projector = ParallelProjector((3, 6, 6), [0.3, 1.2], dtype=torch.float64)
    x = random_tensor((3, 6, 6), torch.float64, True, seed=7)
    assert rel_error(projector.forward(x.conj()), projector.forward(x).conj()) < 1e-14
    y = random_tensor(projector.projection_shape, torch.float64, True, seed=8)
    assert rel_error(projector.adjoint(y.conj()), projector.adjoint(y).conj()) < 1e-14


def _random_probe(m, dtype, seed):
    return random_tensor((m, m), dtype, True, seed=seed)


def _disc(m, diameter, dtype, soft_edge=0.0):
    return torch.from_numpy(disc_probe(m, diameter, soft_edge)).to(COMPLEX[dtype])


PTYCHO_CASES = ["integer-random-probe", "fractional", "valid-mask", "disc-pruned", "disc-unpruned", "fractional-disc"]


def _ptycho_setup(case, dtype):
    """Positions, probe and shapes of one Ptychography test case (B = 2 angles, J = 6 positions)."""
    g = np.random.default_rng(11)
    batch, n_pos, height, width = 2, 6, 26, 23
    if case in ("disc-pruned", "disc-unpruned", "fractional-disc"):
        m, probe = 15, _disc(15, 5, dtype)
    else:
        m, probe = 9, _random_probe(9, dtype, seed=12)
    rows = g.integers(0, height - m + 1, size=(batch, n_pos)).astype(float)
    cols = g.integers(0, width - m + 1, size=(batch, n_pos)).astype(float)
    positions = np.stack([rows, cols], axis=-1)
    valid = None
    pruned = None
    if case.startswith("fractional"):
        positions = positions + g.uniform(-0.49, 0.49, size=positions.shape)
        positions = np.clip(positions, 0, [height - m, width - m])
        positions[0, 0] = (3.5, 2.25)  # exact half pixel
    if case == "valid-mask":
        valid = torch.ones((batch, n_pos), dtype=torch.bool)
        valid[0, 2] = valid[1, 5] = False
    if case == "disc-pruned":
        pruned = True
    if case == "disc-unpruned":
        pruned = False
    return dict(
        positions=torch.from_numpy(positions),
        probe=probe,
        transmission_shape=(height, width),
        valid=valid,
        pruned=pruned,
        in_shape=(batch, height, width),
        out_shape=(batch, n_pos, m, m),
    )


def _build_ptycho(setup, device="cpu"):
    valid = setup["valid"]
    return Ptychography(
        setup["positions"].to(device),
        setup["probe"].to(device),
        setup["transmission_shape"],
        valid=None if valid is None else valid.to(device),
        pruned=setup["pruned"],
    )


def _ptycho_case(case, dtype):
    setup = _ptycho_setup(case, dtype)
    return _build_ptycho(setup), setup["in_shape"], setup["out_shape"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", PTYCHO_CASES)
def test_ptychography_adjoint(dtype, case):
    op, in_shape, out_shape = _ptycho_case(case, dtype)
    if case == "disc-pruned":
        assert op.pruned
    if case in ("disc-unpruned", "integer-random-probe", "fractional", "fractional-disc"):
        assert not op.pruned
    x = random_tensor(in_shape, dtype, True, seed=21)
    y = random_tensor(out_shape, dtype, True, seed=22)
    assert op.forward(x).shape == out_shape
    assert op.adjoint(y).shape == in_shape
    gap = adjointness_gap(op, x, y)
    assert gap <= GAP_TOLERANCE[dtype]


def test_ptychography_valid_mask_zeroes_both_directions():
    op, in_shape, out_shape = _ptycho_case("valid-mask", torch.float64)
    x = random_tensor(in_shape, torch.float64, True, seed=23)
    fields = op.forward(x)
    assert torch.count_nonzero(fields[0, 2]) == 0 and torch.count_nonzero(fields[1, 5]) == 0
    assert fields[0, 1].abs().min() > 0
    y = torch.zeros(out_shape, dtype=torch.complex128)
    y[0, 2] = 1.0
    y[1, 5] = 1.0
    assert torch.count_nonzero(op.adjoint(y)) == 0


def test_ptychography_matches_format_formula():
    """Psi = fftshift(fft2(P * O[r:r+M, c:c+M], norm="ortho")), per FORMAT.md, in numpy."""
    op, in_shape, out_shape = _ptycho_case("integer-random-probe", torch.float64)
    x = random_tensor(in_shape, torch.float64, True, seed=24)
    probe = op.probe.numpy()
    m = probe.shape[0]
    corners = op.rows[..., 0].numpy(), op.cols[..., 0].numpy()  # the full box starts at the corner
    ours = op.forward(x).numpy()
    obj = x.numpy()
    for b in range(out_shape[0]):
        for j in range(out_shape[1]):
            r, c = int(corners[0][b, j]), int(corners[1][b, j])
            expected = np.fft.fftshift(np.fft.fft2(probe * obj[b, r : r + m, c : c + m], norm="ortho"))
            np.testing.assert_allclose(ours[b, j], expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_ptychography_rejects_windows_outside_the_transmission():
    probe = _disc(9, 5, torch.float64)
    with pytest.raises(ValueError, match="outside"):
        Ptychography(torch.tensor([[[0.0, 15.0]]], dtype=torch.float64), probe, (20, 20))
    with pytest.raises(ValueError, match="outside"):
        Ptychography(torch.tensor([[[-1.0, 0.0]]], dtype=torch.float64), probe, (20, 20))


# ---------------------------------------------------------------------------
# 1b. The joint model's linearisation: pad / crop and the whole chain
# ---------------------------------------------------------------------------


def _small_joint_model(dtype, positions=None, **kwargs):
    shape = (6, 9, 8)  # Nz, Ny, Nx: projections are 6 x 8
    angles = np.array([0.0, 0.7, np.pi / 2, 2.5])
    m = 7
    if positions is None:
        base = np.array([[-3.0, -2.0], [0.0, 4.0], [2.0, -6.0], [4.0, 5.0]])
        positions = np.broadcast_to(base, (len(angles), 4, 2)) + np.arange(len(angles))[:, None, None] % 2
    probe = _disc(m, 5, torch.float64, soft_edge=1.0).numpy()
    model = JointModel(shape, 1e-8, 5.0, angles, positions, probe, dtype=dtype, **kwargs)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_pad_crop_adjoint(dtype):
    model = _small_joint_model(dtype)
    assert (model.pad_top, model.pad_left) == (3, 6)
    assert (model.pad_bottom, model.pad_right) == (6, 5)  # rows reach 5 + 7 = 12 > 6, cols 6 + 7 = 13 > 8
    nz, _, nx = model.volume_shape
    x = random_tensor((2, nz, nx), dtype, True, seed=31)
    y = random_tensor((2, *model.padded_shape), dtype, True, seed=32)
    op = LambdaOperator(model.pad, model.crop)
    assert model.pad(x).shape == y.shape
    assert adjointness_gap(op, x, y) <= GAP_TOLERANCE[dtype]
    # crop undoes pad exactly and pad fills with zeros (free space after exp(i k .))
    assert torch.equal(model.crop(model.pad(x)), x)
    assert float(model.pad(x).abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-6)


def _linearisation(model, x, b):
    """dx -> d g = Q (i k O pad(R dx)) at x, and its adjoint y -> -i k R^T crop(conj(O) Q^H y)."""
    projector, ptycho = model.projector(b), model.ptychography(b)
    transmission = model.transmission(x, b)

    def forward(dx):
        return ptycho.forward(1j * model.k * transmission * model.pad(projector.forward(dx)))

    def adjoint(y):
        return projector.adjoint(model.crop(-1j * model.k * transmission.conj() * ptycho.adjoint(y)))

    return LambdaOperator(forward, adjoint)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_linearisation_adjoint(dtype):
    model = _small_joint_model(dtype, angle_batch=2)
    assert len(model.batches) == 2
    x = 1e-4 * random_tensor(model.volume_shape, dtype, True, seed=41)
    for b, batch in enumerate(model.batches):
        op = _linearisation(model, x, b)
        dx = random_tensor(model.volume_shape, dtype, True, seed=42 + b)
        y = random_tensor((batch.stop - batch.start, model.n_positions, model.m, model.m), dtype, True, seed=44 + b)
        assert adjointness_gap(op, dx, y) <= GAP_TOLERANCE[dtype]


def test_joint_linearisation_is_the_derivative():
    """Central finite differences of model.far_field match the linearisation (float64)."""
    model = _small_joint_model(torch.float64)
    x = torch.complex(
        1e-4 * random_tensor(model.volume_shape, torch.float64, seed=51),
        2e-5 * random_tensor(model.volume_shape, torch.float64, seed=52).abs(),
    )
    # dx scaled so that k * R dx is of order 1 rad
    dx = random_tensor(model.volume_shape, torch.float64, True, seed=53) / (model.k * model.voxel_size_m * 9)
    eps = 1e-6
    op = _linearisation(model, x, 0)
    numeric = (model.far_field(x + eps * dx, 0) - model.far_field(x - eps * dx, 0)) / (2 * eps)
    assert rel_error(numeric, op.forward(dx)) < 1e-7


# ---------------------------------------------------------------------------
# 2. Pruned transforms equal the FFT path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m, diameter", [(15, 5), (16, 6), (21, 7)])
def test_pruned_equals_fft(m, diameter):
    dtype = torch.float32
    probe = _disc(m, diameter, dtype)
    g = np.random.default_rng(61)
    positions = torch.from_numpy(g.integers(0, 12, size=(2, 5, 2)).astype(float))
    shape = (12 + m, 12 + m)
    pruned = Ptychography(positions, probe, shape, pruned=True)
    full = Ptychography(positions, probe, shape, pruned=False)
    auto = Ptychography(positions, probe, shape)
    assert pruned.pruned and not full.pruned
    assert auto.pruned  # a small disc takes the pruned path by default
    x = random_tensor((2, *shape), dtype, True, seed=62)
    y = random_tensor((2, 5, m, m), dtype, True, seed=63)
    assert rel_error(pruned.forward(x), full.forward(x)) < 1e-5
    assert rel_error(pruned.adjoint(y), full.adjoint(y)) < 1e-5
    assert rel_error(auto.forward(x), full.forward(x)) < 1e-5


# ---------------------------------------------------------------------------
# 3. Projection geometry: analytic chords and the FORMAT.md formula
# ---------------------------------------------------------------------------

N_ANALYTIC = 64
SUB = 4  # sub-samples per voxel edge and per detector pixel edge
_CENTRED = np.arange(N_ANALYTIC) - (N_ANALYTIC - 1) / 2
_FINE = (_CENTRED[:, None] + ((np.arange(SUB) + 0.5) / SUB - 0.5)[None, :]).ravel()


def voxelised_ellipsoid(centre, semi_axes) -> np.ndarray:
    """Axis-aligned ellipsoid (z, y, x) in centred voxel units, partial volume from 4^3 sub-points."""
    cz, cy, cx = centre
    a, b, c = semi_axes
    y = _FINE[None, :, None]
    x = _FINE[None, None, :]
    out = np.empty((N_ANALYTIC,) * 3)
    for i in range(N_ANALYTIC):
        z = _FINE[i * SUB : (i + 1) * SUB][:, None, None]
        inside = ((z - cz) / a) ** 2 + ((y - cy) / b) ** 2 + ((x - cx) / c) ** 2 <= 1.0
        out[i] = inside.reshape(SUB, N_ANALYTIC, SUB, N_ANALYTIC, SUB).mean(axis=(0, 2, 4))
    return out


def analytic_projection(centre, semi_axes, theta) -> np.ndarray:
    """Chord length along t of the ray (z, s) of FORMAT.md, averaged over 4 x 4 points of each pixel."""
    cz, cy, cx = centre
    a, b, c = semi_axes
    z, s = _FINE[:, None], _FINE[None, :]
    rho2 = 1.0 - ((z - cz) / a) ** 2  # the slice at z is an ellipse scaled by sqrt(rho2)
    cos, sin = math.cos(theta), math.sin(theta)
    # point on the ray: X = s cos - t sin, Y = s sin + t cos, relative to the centre
    px, py = s * cos - cx, s * sin - cy
    with np.errstate(divide="ignore", invalid="ignore"):
        ax2, by2 = c**2 * rho2, b**2 * rho2
        qa = sin**2 / ax2 + cos**2 / by2
        qb = 2 * (-px * sin / ax2 + py * cos / by2)
        qc = px**2 / ax2 + py**2 / by2 - 1
        disc = qb**2 - 4 * qa * qc
        chord = np.where((rho2 > 0) & (disc > 0), np.sqrt(np.abs(disc)) / qa, 0.0)
    chord = np.nan_to_num(chord)
    return chord.reshape(N_ANALYTIC, SUB, N_ANALYTIC, SUB).mean(axis=(1, 3))


@pytest.mark.parametrize(
    "centre, semi_axes",
    [((0.0, 0.0, 0.0), (20.0, 20.0, 20.0)), ((5.0, -8.0, 10.0), (12.0, 18.0, 9.0))],
    ids=["sphere", "ellipsoid"],
)
def test_projection_matches_analytic_chords(centre, semi_axes):
    volume = voxelised_ellipsoid(centre, semi_axes)
    # sanity of the voxelisation: the volume is the ellipsoid's within 1 %
    assert volume.sum() == pytest.approx(4 / 3 * np.pi * np.prod(semi_axes), rel=1e-2)
    angles = np.linspace(0, np.pi, 17)
    projector = ParallelProjector(volume.shape, angles, voxel_size_m=1.0, dtype=torch.float64)
    projections = projector.forward(torch.from_numpy(volume)).numpy()
    errors = []
    for a, theta in enumerate(angles):
        reference = analytic_projection(centre, semi_axes, theta)
        errors.append(np.linalg.norm(projections[a] - reference) / np.linalg.norm(reference))
    assert max(errors) <= 0.02, errors


def test_analytic_reference_detects_wrong_rotation_sense():
    """The chord test above can tell theta from -theta for the off-centre ellipsoid."""
    centre, semi_axes = (5.0, -8.0, 10.0), (12.0, 18.0, 9.0)
    volume = voxelised_ellipsoid(centre, semi_axes)
    theta = np.pi / 3
    projector = ParallelProjector(volume.shape, [theta], dtype=torch.float64)
    p = projector.forward(torch.from_numpy(volume)).numpy()[0]
    wrong = analytic_projection(centre, semi_axes, -theta)
    assert np.linalg.norm(p - wrong) / np.linalg.norm(wrong) > 0.2


def format_projection(volume: np.ndarray, theta: float, voxel_size: float) -> np.ndarray:
    """FORMAT.md's integral for angles where every sample t lands on a voxel centre (multiples of pi/2)."""
    nz, ny, nx = volume.shape
    cos, sin = round(math.cos(theta)), round(math.sin(theta))
    out = np.zeros((nz, nx), dtype=volume.dtype)
    length = max(ny, nx)
    for u in range(nx):
        s = u - (nx - 1) / 2
        for t in np.arange(length) - (length - 1) / 2:
            big_x, big_y = s * cos - t * sin, s * sin + t * cos
            col, row = big_x + (nx - 1) / 2, big_y + (ny - 1) / 2
            if 0 <= col <= nx - 1 and 0 <= row <= ny - 1:
                assert col == int(col) and row == int(row)
                out[:, u] += volume[:, int(row), int(col)]
    return voxel_size * out


@pytest.mark.parametrize("is_complex", [False, True])
def test_projection_at_zero_is_voxel_size_times_sum_over_y(is_complex):
    g = np.random.default_rng(71)
    volume = g.uniform(size=(4, 7, 9)) + (1j * g.uniform(size=(4, 7, 9)) if is_complex else 0)
    projector = ParallelProjector(volume.shape, [0.0], voxel_size_m=2.5e-8, dtype=torch.float64)
    p = projector.forward(torch.from_numpy(volume)).numpy()[0]
    expected = 2.5e-8 * volume.sum(axis=1)
    np.testing.assert_allclose(p, expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(p, format_projection(volume, 0.0, 2.5e-8), rtol=1e-14)


@pytest.mark.parametrize("theta", [np.pi / 2, np.pi, 3 * np.pi / 2])
def test_projection_quarter_turns_follow_format(theta):
    """At pi/2, X = -t and Y = s: p[z, u] = sum_x x[z, y=u, x] on an asymmetric volume."""
    g = np.random.default_rng(72)
    volume = g.uniform(size=(3, 9, 9))
    volume[:, 1, 6] += 5.0  # strongly asymmetric
    projector = ParallelProjector(volume.shape, [theta], voxel_size_m=0.5, dtype=torch.float64)
    p = projector.forward(torch.from_numpy(volume)).numpy()[0]
    reference = format_projection(volume, theta, 0.5)
    np.testing.assert_allclose(p, reference, rtol=1e-12, atol=1e-12)
    if theta == np.pi / 2:
        np.testing.assert_allclose(p, 0.5 * volume.sum(axis=2), rtol=1e-12)
        # and it is not the mirror image
        assert np.abs(p - 0.5 * volume.sum(axis=2)[:, ::-1]).max() > 1.0


def test_projection_is_linear_in_voxel_size():
    g = np.random.default_rng(73)
    volume = torch.from_numpy(g.uniform(size=(2, 8, 8)))
    p1 = ParallelProjector(volume.shape, OCTANT_ANGLES, 1.0, dtype=torch.float64).forward(volume)
    p2 = ParallelProjector(volume.shape, OCTANT_ANGLES, 1e-8, dtype=torch.float64).forward(volume)
    assert rel_error(p2, 1e-8 * p1) < 1e-14


# ---------------------------------------------------------------------------
# 4. Sub-pixel positions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m", [15, 16])
def test_shift_probe_integer_is_roll(m):
    probe = _random_probe(m, torch.float64, seed=81)
    shifts = torch.tensor([[2.0, -3.0], [0.0, 5.0], [-7.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    shifted = shift_probe(probe, shifts)
    for k, (dr, dc) in enumerate(shifts.tolist()):
        rolled = torch.roll(probe, shifts=(int(dr), int(dc)), dims=(0, 1))
        assert (shifted[k] - rolled).abs().max() < 1e-12


def test_shift_probe_halves_compose_to_one_pixel():
    probe = _random_probe(15, torch.float64, seed=82)
    half = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    twice = shift_probe(shift_probe(probe, half)[0], half)[0]
    assert (twice - torch.roll(probe, (1, -1), (0, 1))).abs().max() < 1e-12


def _band_limited_object(height, width, seed):
    """A trigonometric polynomial (exactly band-limited and periodic on the grid)."""
    g = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    obj = np.ones((height, width), dtype=complex)
    for _ in range(6):
        ky, kx = g.integers(-3, 4, size=2)
        obj += 0.15 * complex(g.normal(), g.normal()) * np.exp(2j * np.pi * (ky * yy / height + kx * xx / width))
    return torch.from_numpy(obj)


def _fourier_shift(obj: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """obj(u + d) for a periodic band-limited obj."""
    fy = torch.fft.fftfreq(obj.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(obj.shape[-1], dtype=torch.float64)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(obj) * torch.exp(2j * np.pi * (dy * fy + dx * fx)))


def test_half_pixel_window_differs_from_both_neighbours():
    m = 15
    probe = _disc(m, 7, torch.float64, soft_edge=2.0)
    obj = torch.exp(1j * random_tensor((1, 40, 40), torch.float64, seed=83))  # non-uniform phase object
    positions = torch.tensor([[[10.0, 12.0], [10.5, 12.0], [11.0, 12.0], [10.0, 12.5], [10.0, 13.0]]])
    amplitudes = Ptychography(positions, probe, (40, 40)).forward(obj).abs()[0]

    def differ(i, j):
        return rel_error(amplitudes[i], amplitudes[j])

    assert differ(1, 0) > 0.05 and differ(1, 2) > 0.05
    assert differ(3, 0) > 0.05 and differ(3, 4) > 0.05


def test_fractional_positions_equal_a_fourier_shifted_object():
    m, height, width = 31, 64, 64
    probe = _disc(m, 14, torch.float64, soft_edge=6.0)  # smooth probe: its frames are nearly periodic
    obj = _band_limited_object(height, width, seed=84)
    positions = torch.tensor([[[10.3, 12.7], [20.5, 5.25], [15.0, 15.0], [3.75, 30.5]]], dtype=torch.float64)
    amplitudes = Ptychography(positions, probe, (height, width)).forward(obj[None]).abs()[0]
    for j, (r, c) in enumerate(positions[0].tolist()):
        r0, c0 = math.floor(r), math.floor(c)
        shifted = _fourier_shift(obj, r - r0, c - c0)
        reference = far_field(probe * shifted[r0 : r0 + m, c0 : c0 + m]).abs()
        assert rel_error(amplitudes[j], reference) < 1e-3
        # and the integer neighbour is clearly different, so the test has teeth
        if (r, c) != (r0, c0):
            plain = far_field(probe * obj[r0 : r0 + m, c0 : c0 + m]).abs()
            assert rel_error(plain, reference) > 1e-2


# ---------------------------------------------------------------------------
# 5. Free space and the joint model against FORMAT.md
# ---------------------------------------------------------------------------


def reference_far_fields(volume, voxel_size, energy_kev, angles, positions, probe):
    """numpy FORMAT.md forward model for integer positions: O = 1 outside the projection."""
    projector = ParallelProjector(volume.shape, angles, voxel_size, dtype=torch.float64)
    proj = projector.forward(torch.from_numpy(volume)).numpy()
    k = wavenumber(energy_kev)
    m = probe.shape[0]
    nz, _, nx = volume.shape
    out = np.zeros((len(angles), positions.shape[1], m, m), dtype=complex)
    for a in range(len(angles)):
        transmission = np.exp(1j * k * proj[a])
        for j, (r, c) in enumerate(positions[a].astype(int)):
            window = np.ones((m, m), dtype=complex)
            for i in range(m):
                for jj in range(m):
                    if 0 <= r + i < nz and 0 <= c + jj < nx:
                        window[i, jj] = transmission[r + i, c + jj]
            out[a, j] = np.fft.fftshift(np.fft.fft2(probe * window, norm="ortho"))
    return out


def _joint_case():
    g = np.random.default_rng(91)
    shape = (6, 9, 8)
    volume = 1e-4 * g.uniform(size=shape) + 1e-5j * g.uniform(size=shape)
    angles = np.array([0.0, 1.1, 2.0])
    m = 7
    positions = np.array(
        [
            [[0, 0], [-3, 2], [2, -4], [4, 5], [-9, 0], [6, 8]],
            [[1, 1], [-6, -6], [0, 7], [5, -1], [3, 3], [-2, 1]],
            [[0, 0], [2, 2], [-1, 3], [3, -2], [0, -7], [14, 20]],
        ],
        dtype=float,
    )
    probe = (g.normal(size=(m, m)) + 1j * g.normal(size=(m, m))).astype(np.complex64)
    return volume, 1e-8, 5.0, angles, positions, probe


@pytest.mark.parametrize("angle_batch", [None, 1, 2])
def test_joint_model_matches_format_reference(angle_batch):
    volume, voxel, energy, angles, positions, probe = _joint_case()
    model = JointModel(volume.shape, voxel, energy, angles, positions, probe, angle_batch=angle_batch, dtype=torch.float64)
    reference = reference_far_fields(volume, voxel, energy, angles, positions, probe.astype(complex))
    fields = torch.cat([model.far_field(model.volume(volume), b) for b in range(len(model.batches))]).numpy()
    assert np.abs(fields - reference).max() < 1e-12 * np.abs(reference).max()
    amplitudes = model.amplitudes(model.volume(volume)).numpy()
    np.testing.assert_allclose(amplitudes, np.abs(reference), rtol=1e-10, atol=1e-12 * np.abs(reference).max())


def test_joint_model_float32_close_to_float64():
    volume, voxel, energy, angles, positions, probe = _joint_case()
    a32 = JointModel(volume.shape, voxel, energy, angles, positions, probe, dtype=torch.float32)
    a64 = JointModel(volume.shape, voxel, energy, angles, positions, probe, dtype=torch.float64)
    amp32 = a32.amplitudes(a32.volume(volume))
    amp64 = a64.amplitudes(a64.volume(volume))
    assert amp32.dtype == torch.float32 and amp64.dtype == torch.float64
    assert rel_error(amp32.double(), amp64) < 1e-5


def test_windows_outside_the_volume_see_free_space():
    volume, voxel, energy, angles, positions, probe = _joint_case()
    nz, _, nx = volume.shape
    m = probe.shape[0]
    outside = np.array([[-m - 3, 0], [0, -m], [nz, 1], [2, nx + 4], [-m, -m], [nz + 5, nx + 5]], dtype=float)
    pos = np.broadcast_to(outside, (len(angles), *outside.shape)).copy()
    model = JointModel(volume.shape, voxel, energy, angles, pos, probe, dtype=torch.float64)
    x = model.volume(volume)
    probe_far_field = np.abs(np.fft.fftshift(np.fft.fft2(probe.astype(complex), norm="ortho")))
    amplitudes = model.amplitudes(x).numpy()
    assert np.abs(amplitudes - probe_far_field).max() < 1e-12 * probe_far_field.max()
    # the padding is exactly free space (transmission 1), the volume is not
    transmission = model.transmission(x, 0)
    inner = transmission[:, model.pad_top : model.pad_top + nz, model.pad_left : model.pad_left + nx].clone()
    assert (inner - 1).abs().min() > 0
    transmission[:, model.pad_top : model.pad_top + nz, model.pad_left : model.pad_left + nx] = 1
    assert torch.equal(transmission, torch.ones_like(transmission))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_volume_gives_probe_far_field_everywhere(dtype):
    volume, voxel, energy, angles, positions, probe = _joint_case()
    model = JointModel(volume.shape, voxel, energy, angles, positions, disc_probe(15, 5, photons=1e4), dtype=dtype)
    amplitudes = model.amplitudes(model.volume(np.zeros(volume.shape))).double().numpy()
    expected = np.abs(np.fft.fftshift(np.fft.fft2(disc_probe(15, 5, photons=1e4).astype(complex), norm="ortho")))
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert np.abs(amplitudes - expected).max() < tolerance * expected.max()
    assert (amplitudes**2).sum(axis=(2, 3)) == pytest.approx(1e4, rel=1e-5)


def test_joint_model_valid_mask_ignores_padding_entries():
    volume, voxel, energy, angles, positions, probe = _joint_case()
    valid = np.ones(positions.shape[:2], dtype=bool)
    valid[1, 2] = valid[2, 5] = False
    wild = positions.copy()
    wild[1, 2] = (1e6, -1e6)  # padding entries may hold anything
    wild[2, 5] = (-5e5, 3e5)
    before = wild.copy()
    model = JointModel(volume.shape, voxel, energy, angles, wild, probe, valid=valid, dtype=torch.float64)
    np.testing.assert_array_equal(wild, before)  # the caller's array is not modified
    assert max(model.padded_shape) < 60  # not padded to reach the wild entries
    amplitudes = model.amplitudes(model.volume(volume)).numpy()
    reference = np.abs(reference_far_fields(volume, voxel, energy, angles, positions, probe.astype(complex)))
    np.testing.assert_allclose(amplitudes[valid], reference[valid], rtol=1e-10, atol=1e-12 * reference.max())
    assert np.count_nonzero(amplitudes[~valid]) == 0


def test_joint_model_batch_bytes_picks_batch():
    volume, voxel, energy, angles, positions, probe = _joint_case()
    per_angle = 3 * positions.shape[1] * probe.shape[0] ** 2 * 16  # complex128
    model = JointModel(volume.shape, voxel, energy, angles, positions, probe, batch_bytes=2 * per_angle, dtype=torch.float64)
    assert model.angle_batch == 2
    assert [(s.start, s.stop) for s in model.batches] == [(0, 2), (2, 3)]


# ---------------------------------------------------------------------------
# 10. CUDA agrees with the CPU
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_projector_adjoint_and_agreement(self, dtype):
        shape = (4, 9, 8)
        cpu = ParallelProjector(shape, OCTANT_ANGLES, dtype=dtype)
        gpu = ParallelProjector(shape, OCTANT_ANGLES, dtype=dtype, device="cuda")
        x = random_tensor(shape, dtype, True, seed=101)
        y = random_tensor(cpu.projection_shape, dtype, True, seed=102)
        assert adjointness_gap(gpu, x.cuda(), y.cuda()) <= GAP_TOLERANCE[dtype]
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert rel_error(gpu.forward(x.cuda()).cpu(), cpu.forward(x)) < tol
        assert rel_error(gpu.adjoint(y.cuda()).cpu(), cpu.adjoint(y)) < tol

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("case", PTYCHO_CASES)
    def test_ptychography_adjoint_and_agreement(self, dtype, case):
        setup = _ptycho_setup(case, dtype)
        cpu, gpu = _build_ptycho(setup), _build_ptycho(setup, "cuda")
        assert gpu.pruned == cpu.pruned
        x = random_tensor(setup["in_shape"], dtype, True, seed=103)
        y = random_tensor(setup["out_shape"], dtype, True, seed=104)
        assert adjointness_gap(gpu, x.cuda(), y.cuda()) <= GAP_TOLERANCE[dtype]
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert rel_error(gpu.forward(x.cuda()).cpu(), cpu.forward(x)) < tol
        assert rel_error(gpu.adjoint(y.cuda()).cpu(), cpu.adjoint(y)) < tol

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_joint_model_forward(self, dtype):
        volume, voxel, energy, angles, positions, probe = _joint_case()
        fractional = positions + np.array([0.25, -0.5])
        for pos in (positions, fractional):
            cpu = JointModel(volume.shape, voxel, energy, angles, pos, probe, dtype=dtype)
            gpu = JointModel(volume.shape, voxel, energy, angles, pos, probe, dtype=dtype, device="cuda")
            a_cpu = cpu.amplitudes(cpu.volume(volume))
            a_gpu = gpu.amplitudes(gpu.volume(volume))
            assert a_gpu.device.type == "cuda"
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert rel_error(a_gpu.cpu(), a_cpu) < tol
