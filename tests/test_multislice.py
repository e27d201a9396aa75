"""The multislice forward model: every slab's Jacobian and every unknown's gradient through all slabs.

The model is multilinear in the slabs, so a dot-product test of the whole could hide a factor on one
slab: each slab's vector-Jacobian product is checked against autograd on its own, as are the probe's
and the positions', and the volume's gradient through the joint model against finite differences.
One slab centred on the rotation axis is the projection model bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptytomo.objective import JointObjective, detector_residual
from ptytomo.operators import JointModel
from ptytomo.operators.multislice import MultislicePtychography, slab_propagators
from ptytomo.operators.ptycho import Ptychography, far_field, shift_probe
from ptytomo.physics import wavelength_m

B, J, M, K, H, W, S = 2, 3, 8, 2, 20, 20, 3
PIXEL, ENERGY = 5e-9, 0.7  # keV: soft x-rays, so that the slabs' propagations matter at these sizes


def _problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    slabs = torch.exp(1j * rand(S, B, H, W) - 0.3 * rand(S, B, H, W))
    probe = torch.complex(torch.randn(K, M, M, generator=generator, dtype=torch.float64),
                          torch.randn(K, M, M, generator=generator, dtype=torch.float64))
    positions = rand(B, J, 2) * 8 + 2  # fractional: the probe carries the sub-pixel shift
    amplitudes = rand(B, J, M, M) * 3
    return slabs, probe, positions, amplitudes


def _propagators(centres_m=(-40e-9, 0.0, 40e-9)):
    return slab_propagators(np.asarray(centres_m), M, PIXEL, wavelength_m(ENERGY), "cpu", torch.complex128)


def _autograd_cost(loss, slabs, probe, positions, fraction, amplitudes, propagators):
    """The same model written independently (slab after slab), differentiable in everything."""
    corner = torch.round(positions).long()
    wave = shift_probe(probe, fraction.reshape(-1, 2)).reshape(B, J, K, M, M)
    rows = corner[..., 0, None] + torch.arange(M)
    cols = corner[..., 1, None] + torch.arange(M)
    for slab, propagator in zip(slabs, propagators):
        window = slab[torch.arange(B)[:, None, None, None], rows[..., :, None], cols[..., None, :]]
        spectrum = torch.fft.fft2(wave, norm="ortho") * (propagator.transfer if propagator.transfer is not None else 1)
        wave = torch.fft.ifft2(spectrum, norm="ortho") * window[:, :, None]
    return detector_residual(loss, far_field(wave), amplitudes, None)[0]


@pytest.mark.parametrize("loss", ["amplitude", "poisson"])
def test_every_slab_probe_and_position_gradient_matches_autograd(loss):
    slabs, probe, positions, amplitudes = _problem()
    propagators = _propagators()
    q = MultislicePtychography(positions, probe, (H, W), propagators)
    fields = q.forward(slabs)
    _, r = detector_residual(loss, fields, amplitudes, None)
    back = q.back_waves(r)
    slab_grad = q.transmission_gradient(slabs, back)
    probe_grad, _ = q.probe_gradient(slabs, back)
    position_grad, hessian = q.position_gradient(slabs, back, fields)

    variables = [slabs.real.clone().requires_grad_(), slabs.imag.clone().requires_grad_(),
                 probe.real.clone().requires_grad_(), probe.imag.clone().requires_grad_(),
                 (positions - torch.round(positions)).clone().requires_grad_()]
    cost = _autograd_cost(loss, torch.complex(*variables[:2]), torch.complex(*variables[2:4]), positions,
                          variables[4], amplitudes, propagators)
    cost.backward()
    # d cost = 2 Re <g, dz>: d/dRe = 2 Re g, d/dIm = 2 Im g
    expected_slabs = torch.complex(variables[0].grad, variables[1].grad)
    for s in range(S):  # each slab's vector-Jacobian product on its own
        error = (expected_slabs[s] - 2 * slab_grad[s]).abs().max() / expected_slabs[s].abs().max()
        assert float(error) < 1e-12, (s, float(error))
    expected_probe = torch.complex(variables[2].grad, variables[3].grad)
    assert float((expected_probe - 2 * probe_grad).abs().max() / expected_probe.abs().max()) < 1e-12
    fraction_grad = variables[4].grad
    assert float((fraction_grad - position_grad).abs().max() / fraction_grad.abs().max()) < 1e-12
    assert bool(torch.all(torch.linalg.eigvalsh(hessian) >= -1e-12))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.func imports torch.jit.script
def test_every_slab_jacobian_vector_product_matches_autograd():
    """The forward derivative at empty slabs (the normalisation's Jacobian), slab by slab, against
    autograd's forward-mode product, and its adjoint against it (dot-product test)."""
    _, probe, positions, _ = _problem(seed=1)
    propagators = _propagators()
    q = MultislicePtychography(positions, probe, (H, W), propagators)
    generator = torch.Generator().manual_seed(7)
    ones = torch.ones(S, B, H, W, dtype=torch.complex128)
    for s in range(S):
        direction = torch.zeros(S, B, H, W, dtype=torch.complex128)
        direction[s] = torch.complex(torch.randn(B, H, W, generator=generator, dtype=torch.float64),
                                     torch.randn(B, H, W, generator=generator, dtype=torch.float64))
        _, expected = torch.func.jvp(lambda o: MultislicePtychography(positions, probe, (H, W), propagators).forward(o),
                                     (ones,), (direction,))
        got = q.linear_forward(direction)
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-12, s
    fields = torch.complex(torch.randn(*got.shape, generator=generator, dtype=torch.float64),
                           torch.randn(*got.shape, generator=generator, dtype=torch.float64))
    left = torch.vdot(q.linear_forward(direction).flatten(), fields.flatten())
    right = torch.vdot(direction.flatten(), q.linear_adjoint(fields).flatten())
    assert abs(complex(left - right)) < 1e-12 * abs(complex(left))


def test_one_slab_on_the_axis_is_the_projection_model_bit_for_bit():
    slabs, probe, positions, amplitudes = _problem(seed=2)
    plane = Ptychography(positions, probe, (H, W), pruned=False)
    thick = MultislicePtychography(positions, probe, (H, W), _propagators((0.0,)))
    fields = plane.forward(slabs[0])
    assert torch.equal(thick.forward(slabs[:1]), fields)
    _, r = detector_residual("amplitude", fields, amplitudes, None)
    back = plane.back_waves(r)
    assert torch.equal(thick.transmission_gradient(slabs[:1], back)[0], plane.transmission_gradient(slabs[0], back))
    for a, b in zip(thick.probe_gradient(slabs[:1], back), plane.probe_gradient(slabs[0], back)):
        assert torch.equal(a, b)
    for a, b in zip(thick.position_gradient(slabs[:1], back, fields), plane.position_gradient(slabs[0], back, fields)):
        assert torch.equal(a, b)


def _joint_model(propagation, slices, dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    angles = np.array([0.0, 0.7, 2.1])
    positions = np.stack([np.stack(np.meshgrid(np.arange(-1, 8, 4), np.arange(-1, 8, 4), indexing="ij"), -1)
                          .reshape(-1, 2)] * 3).astype(np.float64) + 0.25
    probe = torch.complex(torch.randn(9, 9, generator=generator, dtype=torch.float64),
                          torch.randn(9, 9, generator=generator, dtype=torch.float64)).numpy()
    return JointModel((6, 10, 10), PIXEL, ENERGY, angles, positions, probe, device="cpu", dtype=dtype,
                      propagation=propagation, slices=slices, pruned=False)


def test_joint_multislice_volume_gradient_matches_autograd_and_finite_differences():
    model = _joint_model("multislice", 4)
    generator = torch.Generator().manual_seed(4)
    truth = torch.complex(torch.rand(6, 10, 10, generator=generator, dtype=torch.float64),
                          torch.rand(6, 10, 10, generator=generator, dtype=torch.float64)) * 0.05
    measured = model.amplitudes(truth / (model.k * model.voxel_size_m)) * 1.3
    objective = JointObjective(model, measured, "amplitude")
    u = truth * 0.5
    cost, grad = objective.value_and_grad(u)

    w = u.clone().requires_grad_(True)
    total = sum(detector_residual("amplitude", model.far_field(w / objective.scaling.to_u, b),
                                  objective.amplitudes[batch], None)[0] for b, batch in enumerate(model.batches))
    reference = torch.autograd.grad(total * objective.scaling.cost, w)[0]
    assert float(total.detach()) * objective.scaling.cost == pytest.approx(cost, rel=1e-12)
    assert float(torch.linalg.vector_norm(reference - grad) / torch.linalg.vector_norm(reference)) < 1e-10

    h = 1e-6
    for index in [(0, 1, 2), (3, 5, 5), (5, 9, 0)]:
        for part in (1.0, 1j):  # delta and beta of one voxel
            step = torch.zeros_like(u)
            step[index] = h * part
            numeric = (objective.value(u + step) - objective.value(u - step)) / (2 * h)
            analytic = float((grad[index].conj() * part).real)  # d cost = Re <grad, du>
            assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-7 * float(grad.abs().max()))


def test_one_slab_joint_model_and_objective_equal_the_projection_model_bit_for_bit():
    thin, thick = _joint_model("projection", 1), _joint_model("multislice", 1)
    generator = torch.Generator().manual_seed(5)
    x = torch.complex(torch.rand(6, 10, 10, generator=generator, dtype=torch.float64),
                      torch.rand(6, 10, 10, generator=generator, dtype=torch.float64)) * 1e-3
    assert torch.equal(thin.amplitudes(x), thick.amplitudes(x))
    measured = thin.amplitudes(x * 0.7)
    costs = []
    for model in (thin, thick):
        objective = JointObjective(model, measured.clone(), "poisson")
        costs.append((objective.scaling.cost, *objective.value_and_grad(x * objective.scaling.to_u)))
    assert costs[0][0] == costs[1][0] and costs[0][1] == costs[1][1]
    assert torch.equal(costs[0][2], costs[1][2])


def test_a_uniform_slab_under_a_plane_wave_whatever_the_slicing():
    """exp(i k (delta + i beta) T) for every window in the cube's shadow at theta = 0, with 1, 3 or 7 slabs: a plane
    wave is an eigenfunction of free space, and the slabs' phases add."""
    n, index = 12, 2e-3 + 4e-4j
    amplitudes = []
    for slices in (1, 3, 7):
        model = JointModel((n, n, n), PIXEL, ENERGY, [0.0], np.array([[[2.0, 2.0], [4.0, 3.0]]]),
                           np.ones((6, 6), dtype=np.complex128), device="cpu", dtype=torch.float64,
                           propagation="multislice", slices=slices, pruned=False)
        fields = model.far_field(torch.full((n, n, n), index, dtype=torch.complex128), 0)
        amplitudes.append(fields)
        expected = 6 * np.exp(1j * model.k * index * n * PIXEL)  # the DC of a 6 x 6 window of ones
        centre = fields[..., 3, 3]
        np.testing.assert_allclose(centre.numpy(), expected, rtol=1e-12)
        assert float(fields.abs().sum() - centre.abs().sum()) < 1e-9 * float(centre.abs().sum())
    assert torch.allclose(amplitudes[0], amplitudes[2], rtol=1e-12, atol=1e-12)


def test_empty_slabs_carry_the_probe_as_one_propagation_over_their_span():
    """N empty propagations over dz equal one over N dz: the incident wave of the last of 8 empty slabs is the
    probe propagated once from the rotation axis to that slab's centre."""
    from ptytomo.operators.propagation import FresnelPropagator

    model = _joint_model("multislice", 8)
    q = model.forward_operator(0)
    _, waves, _ = q._forward_state(torch.ones((8, q.batch, *model.padded_shape), dtype=torch.complex128))
    distance = float(sum(p.distance_m for p in model.propagators))
    once = FresnelPropagator((9, 9), PIXEL, wavelength_m(ENERGY), distance, device="cpu",
                             dtype=torch.complex128).forward(q.frame_probe)
    assert float((waves[-1] - once).abs().max() / once.abs().max()) < 1e-12
    assert float((waves[-1] - q.frame_probe).abs().max()) > 1e-3 * float(once.abs().max())  # it did propagate


def test_the_simulator_with_one_slab_is_its_projection_model_and_thick_data_differ():
    from ptytomo.simulate import SimulationConfig, simulate

    common = dict(size=12, n_angles=3, detector_size=15, probe_diameter=7, step=4, energy_kev=0.5, voxel_size_m=3e-9,
                  oversample=2, device="cpu", precision="float64", phantom="ellipsoids")
    thin = simulate(SimulationConfig(**common, propagation="projection"), progress=False)
    one = simulate(SimulationConfig(**common, propagation="multislice", slices=1), progress=False)
    thick = simulate(SimulationConfig(**common), progress=False)  # auto: 12 voxels of 3 nm at 500 eV, 1.9 depths
    assert np.array_equal(thin.intensities, one.intensities)
    assert thick.simulation["propagation"] == "multislice" and thick.simulation["slices"] == 36  # 2 hypot(12.5, 12.5): a fine voxel each
    difference = np.abs(thick.intensities - thin.intensities).sum() / np.abs(thin.intensities).sum()
    assert difference > 1e-3  # the propagation inside the sample shows in the frames
