"""The Sequential and ADMM-GD baselines and the halves they share (METHOD.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptytomo import SimulationConfig, simulate
from ptytomo.cli import main
from ptytomo.io import read_reconstruction, write_data
from ptytomo.metrics import relative_rmse
from ptytomo.reconstruct import ReconstructOptions, build_objective, reconstruct
from ptytomo.solvers import load_checkpoint
from ptytomo.solvers.subproblems import PtychographyRetrieval, TomographyObjective, unwrap_phase


@pytest.fixture(scope="module")
def small():
    """Noise-free 16^3 wires, 32 angles, 56 % overlap: every method can fit it."""
    return simulate(SimulationConfig(size=16, n_angles=32, step=4, detector_size=15, probe_diameter=9,
                                     device="cpu"), progress=False)


def true_projections(data, objective):
    tomography = TomographyObjective(objective.model, torch.ones(1))
    u = torch.from_numpy(data.truth).to(objective.model.complex_dtype) * objective.scaling.to_u
    return torch.cat([tomography.project(u, b) for b in range(len(objective.model.batches))])


def test_unwrap_phase_restores_a_phase_beyond_pi():
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    phase = 9.0 * torch.exp(-((y - 20) ** 2 + (x - 24) ** 2) / 90.0)  # 0 at the border, 9 rad at the centre
    wrapped = torch.angle(torch.exp(1j * phase))
    batch = torch.stack([wrapped, 0.5 * phase])  # the second image never wraps
    unwrapped = unwrap_phase(batch)
    assert torch.allclose(unwrapped[0], phase, atol=1e-4)
    assert torch.equal(unwrapped[1], 0.5 * phase)


def test_ptychographic_retrieval_recovers_the_projections(small):
    objective = build_objective(small, ReconstructOptions(refine="none", device="cpu", precision="float64"))
    retrieval = PtychographyRetrieval(objective)
    psi = retrieval.initial()
    costs = [retrieval.sweep(psi) for _ in range(150)]
    assert costs[-1] < 1e-8 * costs[0]
    error = (retrieval.projections(psi) - true_projections(small, objective)) * retrieval.lit
    assert float(error.abs().max()) < 1e-4


def test_tomography_gradient_matches_autograd(small):
    objective = build_objective(small, ReconstructOptions(refine="none", device="cpu", precision="float64"))
    weight = (torch.rand(objective.model.n_angles, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.2)
    tomography = TomographyObjective(objective.model, weight)
    tomography.target = true_projections(small, objective) * 0.7
    g = torch.Generator().manual_seed(1)
    u = torch.complex(torch.rand(16, 16, 16, generator=g, dtype=torch.float64),
                      torch.rand(16, 16, 16, generator=g, dtype=torch.float64)) * 0.01
    cost, grad = tomography.value_and_grad(u)
    w = u.clone().requires_grad_(True)
    total = sum(torch.sum((tomography.weight[bt] * (tomography.project(w, b) - tomography.target[bt])).abs() ** 2)
                for b, bt in enumerate(objective.model.batches))
    (auto,) = torch.autograd.grad(total * tomography.scaling.cost, w)
    assert cost == pytest.approx(float(total.detach()) * tomography.scaling.cost, rel=1e-12)
    assert torch.allclose(grad, auto, rtol=1e-9, atol=1e-12 * float(auto.abs().max()))


def test_tomography_is_scaled_to_the_joint_lipschitz_constant(small):
    objective = build_objective(small, ReconstructOptions(refine="none", device="cpu", precision="float64"))
    tomography = TomographyObjective(objective.model, torch.ones(objective.model.n_angles, 16, 16))
    assert tomography.lipschitz() * tomography.scaling.cost == pytest.approx(100.0, rel=1e-6)


def test_filtered_back_projection_inverts_the_projector():
    data = simulate(SimulationConfig(size=32, n_angles=100, step=8, detector_size=15, probe_diameter=9,
                                     phantom="ellipsoids", device="cpu"), progress=False)
    objective = build_objective(data, ReconstructOptions(refine="none", device="cpu"))
    tomography = TomographyObjective(objective.model, torch.ones(100, 32, 32))
    tomography.target = true_projections(data, objective)
    x = (tomography.filtered_back_projection() / objective.scaling.to_u).numpy()
    assert relative_rmse(x.real, data.truth.real) < 0.25
    assert x.real.sum() / data.truth.real.sum() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "options, bound_delta, bound_beta",
    [
        (dict(method="sequential"), 0.06, 0.10),  # measured 0.046, 0.079
        (dict(method="sequential", tomography="fbp"), 0.35, 0.35),  # 0.28, 0.30: 32 angles for 16 px
        (dict(method="admm", iterations=25), 0.04, 0.07),  # 0.023, 0.048
        # from a penalty 10x too small, so that the primal residual outgrows the dual one by the 10x that
        # residual balancing acts on (from the default 0.5 the ratio stays near 7-9x here, machine-dependent)
        (dict(method="admm", iterations=25, rho_update="balance", rho=0.05), 0.05, 0.08),  # 0.022, 0.045
    ],
)
def test_baselines_reconstruct_noise_free_data(small, options, bound_delta, bound_beta):
    recon = reconstruct(small, ReconstructOptions(tv="fixed", device="cpu", refine="none", tv_delta=1e-3, tv_beta=1e-3, **options),
                        progress=False)
    p = recon.parameters
    assert p["relative_rmse_delta"] < bound_delta and p["relative_rmse_beta"] < bound_beta, p
    assert recon.method == options["method"]
    assert set(recon.history) >= {"iteration", "cost", "time_s", "rmse_delta", "rmse_beta"}
    if options["method"] == "admm":
        rho = recon.history["rho"]
        assert (len(set(rho)) > 1) == (options.get("rho_update") == "balance")


def test_admm_with_rho_near_zero_reproduces_sequential(small):
    """One outer iteration with a negligible penalty is ptychography to convergence, then tomography."""
    common = dict(device="cpu", precision="float64", tv="fixed", tv_delta=0, tv_beta=0, ptycho_iterations=150, tolerance=0,
                  refine="none")
    sequential = reconstruct(small, ReconstructOptions(method="sequential", iterations=30, **common), progress=False)
    admm = reconstruct(small, ReconstructOptions(method="admm", iterations=1, rho=1e-9, tomo_iterations=30, **common),
                       progress=False)
    difference = np.linalg.norm(admm.volume - sequential.volume) / np.linalg.norm(sequential.volume)
    assert difference < 1e-5
    assert sequential.parameters["relative_rmse_delta"] < 0.1  # and both are a reconstruction, not zeros


@pytest.mark.parametrize("method", ["sequential", "admm"])
def test_baselines_resume_to_the_uninterrupted_result(small, tmp_path, method):
    common = dict(method=method, device="cpu", tolerance=0, ptycho_iterations=40 if method == "sequential" else 2,
                  tomo_iterations=2, tv="fixed")  # --tv auto: test_heldout.py
    whole = reconstruct(small, ReconstructOptions(iterations=6, **common), progress=False)
    path = tmp_path / "run.pt"
    reconstruct(small, ReconstructOptions(iterations=3, checkpoint=str(path), **common), progress=False)
    assert load_checkpoint(path)["iteration"] == 3
    resumed = reconstruct(small, ReconstructOptions(iterations=6, resume=str(path), **common), progress=False)
    np.testing.assert_array_equal(resumed.volume, whole.volume)
    np.testing.assert_array_equal(resumed.history["cost"], whole.history["cost"])


def test_cli_runs_the_baselines_and_rejects_bad_options(small, tmp_path, capsys):
    data_path = tmp_path / "data.h5"
    write_data(data_path, small)
    out = tmp_path / "recon.h5"
    assert main(["reconstruct", str(data_path), "-o", str(out), "--method", "admm", "--iterations", "2",
                 "--rho-update", "balance", "--quiet"]) == 0
    recon = read_reconstruction(out)
    assert recon.method == "admm" and recon.parameters["rho_update"] == "balance"
    assert len(recon.history["primal_residual"]) == 2
    checkpoint = tmp_path / "joint.ckpt"
    assert main(["reconstruct", str(data_path), "-o", str(tmp_path / "j.h5"), "--iterations", "1", "--quiet",
                 "--checkpoint", str(checkpoint)]) == 0
    for bad, name in ((["--rho-update", "sometimes"], "--rho-update"), (["--tomography", "art"], "--tomography"),
                      (["--method", "sequential", "--loss", "intensity"], "--loss"), (["--rho", "0"], "--rho"),
                      (["--rho", "nan"], "--rho"), (["--method", "admm", "--tomography", "fbp"], "--tomography"),
                      (["--method", "admm", "--resume", str(checkpoint)], "--resume")):
        assert main(["reconstruct", str(data_path), "-o", str(tmp_path / "x.h5"), "--quiet", *bad]) == 2
        assert name in capsys.readouterr().err
