"""--tv auto (held-out frames), the Plateau rule against offset costs, the Poisson first step and
flat L-BFGS cost per iteration.  Tiny oversampled problems: 16^3, 24 angles, 15 px detector."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from interrupting import Interrupting
from ptytomo import SimulationConfig, simulate
from ptytomo.io import read_reconstruction, write_reconstruction
from ptytomo.diagnostics import assess, median_frame_counts
from ptytomo.reconstruct import ReconstructOptions, build_objective, reconstruct
from ptytomo.report import HELDOUT_NAME, write_report
from ptytomo.errors import PtytomoError
from ptytomo.solvers import Regularised, make_optimizer
from ptytomo.solvers.heldout import MIN_HELDOUT_FRAMES, holdout_frames
from ptytomo.solvers.optimizers import MAX_LINE_SEARCH
from ptytomo.solvers.run import Plateau

SMALL = dict(size=16, n_angles=24, detector_size=15, probe_diameter=7, step=3, oversample=2, device="cpu")
# Two data sets whose best fixed weights differ by ~10x.  Best relative RMSE (delta, beta) of the fixed
# weights 0.1 m (delta) and 0.01 m (beta, with the dose scaling), m in 9, 3, 1, 1/3, 1/9, 1/27, with the
# default loss (Poisson for the counts, amplitude for the noise-free frames), measured once (/tmp grid
# script, 2026-12-07, this code): photon noise wants strong TV (delta and beta best at m = 1), the
# noise-free focused probe a weak one (delta best at m = 1/3, beta at m = 1/9).
DATA_SETS = {
    "disc, 1e4 photons": (dict(probe="disc", photons=1e4, noise="poisson"), (0.3266, 0.6283)),
    "focused, noise-free": (dict(probe="focused", noise="none"), (0.2400, 0.5310)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the 2 shared cores are oversubscribed otherwise (10x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_errors(recon) -> tuple[float, float]:
    return recon.parameters["relative_rmse_delta"], recon.parameters["relative_rmse_beta"]


@pytest.fixture(scope="module")
def auto_runs():
    runs = {}
    for name, (kind, _) in DATA_SETS.items():
        data = simulate(SimulationConfig(**SMALL, **kind))
        runs[name] = reconstruct(data, ReconstructOptions(refine="none", device="cpu", tv="auto"), progress=False)
    return runs


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_auto_lands_within_20_percent_of_the_best_fixed_weight(auto_runs, name):
    best_delta, best_beta = DATA_SETS[name][1]
    delta, beta = relative_errors(auto_runs[name])
    assert delta <= 1.2 * best_delta, (name, delta)
    assert beta <= 1.2 * best_beta, (name, beta)
    p = auto_runs[name].parameters
    assert p["heldout_frames"] >= MIN_HELDOUT_FRAMES
    assert len(p["heldout_misfit"]) == len(p["heldout_tv_delta"]) == p["heldout_path_iterations"]
    # No truth is used: the chosen point's held-out misfit is within one standard error of the path's lowest.
    scored = [m for m, s in zip(p["heldout_misfit"], p["heldout_scored"]) if s]
    chosen = p["heldout_iteration"].index(p["heldout_chosen_iteration"])
    assert min(scored) <= p["heldout_misfit"][chosen] <= min(scored) + p["heldout_standard_error"]
    assert p["heldout_best_misfit"] == min(scored)
    assert (p["effective_tv_delta"], p["effective_tv_beta"]) == (p["heldout_tv_delta"][chosen],
                                                                  p["heldout_tv_beta"][chosen])


def test_weights_the_heldout_frames_cannot_tell_apart_go_to_the_fixed_ones():
    from ptytomo.solvers.heldout import Candidate, closest_within_one_standard_error

    def candidate(scale, misfit, spread=0.01):
        return Candidate((0.1 * scale, 0.01 * scale), misfit, spread, torch.zeros(1), 0)

    # Without noise the misfit keeps falling, by less than its standard error, as TV weakens.
    path = [candidate(3, 1.20), candidate(1, 1.008), candidate(1 / 3, 1.005), candidate(1 / 9, 1.000)]
    assert closest_within_one_standard_error(path, (0.1, 0.01)).weights == (0.1, 0.01)
    # A clear minimum wins, even far from the fixed weights.
    path[1].misfit = 1.2
    assert closest_within_one_standard_error(path, (0.1, 0.01)).weights == pytest.approx((0.1 / 3, 0.01 / 3))
    path[2].misfit = 1.1
    assert closest_within_one_standard_error(path, (0.1, 0.01)).weights == pytest.approx((0.1 / 9, 0.01 / 9))


def test_tv_auto_scores_its_path_against_the_refined_probe_and_positions():
    """A nominal disc in the file, a focused beam and positions 0.5 px off in the data, refinement on (the
    default): the path of weights must be scored with the refined probe and windows.  Scored with the
    file's (without the calibration run), every weight fails and the run returns delta 3.09, beta 41.9."""
    config = SimulationConfig(size=12, n_angles=16, detector_size=15, probe_diameter=7, step=3, oversample=2,
                              voxel_size_m=50e-9, probe="focused", file_probe="nominal", position_errors=0.5,
                              noise="poisson", photons=1e5, device="cpu")
    data = simulate(config, progress=False)
    recon = reconstruct(data, ReconstructOptions(iterations=80, device="cpu", tv="auto"), progress=False)
    # Measured: delta 0.371, beta 0.891 (the fixed weights: 0.434, 0.634; with --refine probe,positions,
    # without the shifts: 0.428, 0.743, the difference being the probe the coarse step refines, with
    # which the path chose a 3x stronger beta weight); 80 calibration iterations.
    delta, beta = relative_errors(recon)
    assert delta < 0.5 and beta < 1.0
    assert recon.parameters["heldout_calibration_iterations"] > 10
    assert recon.parameters["misfit_to_noise"] < 10


def test_the_chosen_weights_differ_between_the_data_sets(auto_runs):
    """The two sets' best weights differ by ~10x, so must the chosen ones (by at least 3x in delta)."""
    noisy, clean = (auto_runs[name].parameters["effective_tv_delta"] for name in DATA_SETS)
    assert noisy >= 3 * clean


# Two rows of the table in docs/benchmarks/methods.md (benchmarks/heldout.py: 16^3 woven wires, 24 angles, oversample 2,
# 1e4 photons, --refine none, every other option at its default).  Measured delta, joint / Sequential:
# 14 % overlap, where per-angle ptychography breaks down: 0.486 / 1.115 (0.44x); 71 %, where both
# work: 0.306 / 0.303, a tie (over noise seeds 1-4 the difference is +0.001 +- 0.004).
@pytest.mark.parametrize("step, at_most", [(6, 0.5), (2, 1.05)], ids=["14% overlap", "71% overlap"])
def test_joint_against_sequential_both_with_their_defaults(step, at_most):
    data = simulate(SimulationConfig(size=16, n_angles=24, detector_size=15, step=step, oversample=2,
                                     probe="disc", probe_diameter=7.0, photons=1e4, noise="poisson", device="cpu"),
                    progress=False)
    delta = {method: reconstruct(data, ReconstructOptions(method=method, refine="none", device="cpu"),
                                 progress=False).parameters["relative_rmse_delta"]
             for method in ("joint", "sequential")}
    assert delta["joint"] <= at_most * delta["sequential"], delta


def test_heldout_record_survives_the_file_and_draws_a_figure(tmp_path):
    data = simulate(SimulationConfig(**SMALL, probe="disc", photons=1e4, noise="poisson"))
    recon = reconstruct(data, ReconstructOptions(refine="none", device="cpu", tv="auto", iterations=20), progress=False)
    write_reconstruction(tmp_path / "recon.h5", recon)
    back = read_reconstruction(tmp_path / "recon.h5")
    assert np.allclose(back.parameters["heldout_misfit"], recon.parameters["heldout_misfit"])
    paths = write_report(back, tmp_path / "figures")
    assert (tmp_path / "figures" / HELDOUT_NAME) in paths and (tmp_path / "figures" / HELDOUT_NAME).stat().st_size
    from ptytomo.cli import summary_line

    p = back.parameters  # the CLI's closing line names the chosen weights
    assert f"TV delta {p['effective_tv_delta']:.3g}, beta {p['effective_tv_beta']:.3g} chosen on" in summary_line(back)


def test_too_few_heldout_frames_is_one_line_and_keeps_the_fixed_weights(caplog):
    # 6 angles x 16 frames: 5 % is 1 frame per angle, 6 in all (< MIN_HELDOUT_FRAMES).
    data = simulate(SimulationConfig(**{**SMALL, "n_angles": 6, "step": 4}))
    with caplog.at_level(logging.WARNING, logger="ptytomo"):
        recon = reconstruct(data, ReconstructOptions(refine="none", device="cpu", tv="auto", iterations=5), progress=False)
    lines = [r.getMessage() for r in caplog.records if "--tv auto" in r.getMessage()]
    assert len(lines) == 1 and "keeping the fixed TV weights" in lines[0] and "\n" not in lines[0]
    assert lines[0] in recon.parameters["warnings"]
    assert recon.parameters["effective_tv_delta"] == 0.1


def test_a_path_without_a_finite_heldout_misfit_keeps_the_fixed_weights(monkeypatch):
    from ptytomo.solvers import heldout

    monkeypatch.setattr(heldout.HeldOutPath, "heldout_misfit", lambda self, u: float("nan"))
    data = simulate(SimulationConfig(**{**SMALL, "n_angles": 12}))
    recon = reconstruct(data, ReconstructOptions(refine="none", device="cpu", tv="auto", iterations=5), progress=False)
    assert any("never finite" in line for line in recon.parameters["warnings"])
    assert recon.parameters["effective_tv_delta"] == 0.1


def test_holdout_frames_are_seeded_per_angle_and_skip_padding():
    valid = np.ones((4, 40), dtype=bool)
    valid[1, 30:] = False
    held = holdout_frames(valid, fraction=0.05, seed=3)
    assert held.sum(axis=1).tolist() == [2, 2, 2, 2] and not np.any(held & ~valid)
    assert np.array_equal(held, holdout_frames(valid, fraction=0.05, seed=3))
    assert not np.array_equal(held, holdout_frames(valid, fraction=0.05, seed=4))


def test_ranks_hold_out_the_frames_one_rank_holds_out():
    """Each angle's draw is keyed by its index in the file, so a rank's share of the angles, told its first
    angle, holds out what the one-rank run holds out for those angles."""
    valid = np.ones((7, 40), dtype=bool)
    whole = holdout_frames(valid, seed=2)
    shares = [holdout_frames(valid[start:stop], seed=2, first_angle=start) for start, stop in ((0, 3), (3, 5), (5, 7))]
    assert np.array_equal(np.concatenate(shares), whole)
    assert not np.array_equal(holdout_frames(valid[3:5], seed=2), whole[3:5])  # the local index would differ


def test_tv_auto_is_the_default_where_there_is_a_tv_prior_and_refused_by_hand_elsewhere():
    from ptytomo.cli import build_parser, options_from_args

    assert ReconstructOptions().tv == "auto" and ReconstructOptions().chooses_tv()
    assert not ReconstructOptions(method="ptycho").chooses_tv()  # the default: nothing to choose, no refusal
    assert not ReconstructOptions(method="sequential", tomography="fbp").chooses_tv()
    parse = lambda *flags: options_from_args(build_parser().parse_args(["reconstruct", "d.h5", "-o", "r.h5", *flags]))
    assert parse().tv == "auto" and parse("--method", "ptycho").tv == "auto"
    fixed = parse("--tv-delta", "0.05")  # a weight given by hand is used as given
    assert (fixed.tv, fixed.tv_delta, fixed.tv_beta) == ("fixed", 0.05, ReconstructOptions().tv_beta)
    assert parse("--tv-beta", "0.002", "--tv", "auto").tv == "auto"  # unless auto is asked for: then it scales
    with pytest.raises(PtytomoError, match="--method ptycho has no TV prior"):
        parse("--method", "ptycho", "--tv", "auto")
    with pytest.raises(PtytomoError, match="--tomography fbp has no TV prior"):
        parse("--method", "sequential", "--tomography", "fbp", "--tv", "auto")
    with pytest.raises(PtytomoError, match="--tv 'sometimes'"):
        ReconstructOptions(refine="none", tv="sometimes").check()


def test_a_resumed_tv_auto_run_keeps_its_weights_and_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    """The weights chosen before the loop travel in the checkpoint: a resumed run does not run the path
    again (it could choose otherwise: a joint run with refinement scores it after a calibration run)."""
    from ptytomo.solvers import heldout
    from ptytomo.solvers.methods import Method
    from ptytomo.solvers.run import load_checkpoint

    data = simulate(SimulationConfig(**SMALL, photons=1e5, noise="poisson"))
    # the amplitude cost, on which the path moves off the fixed weight here (Poisson keeps it: nothing to test)
    options = dict(refine="none", device="cpu", tv="auto", iterations=30, tolerance=0, loss="amplitude")
    straight = reconstruct(data, ReconstructOptions(**options), progress=False)
    limit = straight.parameters["iterations_limit"]
    assert limit == 5 and straight.parameters["effective_tv_delta"] != 0.1  # a finish of 5 from a chosen weight

    stepper = Method.stepper
    monkeypatch.setattr(Method, "stepper", lambda *a, **k: Interrupting(stepper(*a, **k), at=3))
    checkpoint = tmp_path / "run.ckpt"
    reconstruct(data, ReconstructOptions(**options, checkpoint=str(checkpoint)), progress=False)
    saved = load_checkpoint(checkpoint)
    assert saved["iteration"] == 2 and saved["extra"]["tv_delta"] == straight.parameters["effective_tv_delta"]
    monkeypatch.setattr(Method, "stepper", stepper)
    monkeypatch.setattr(heldout.HeldOutPath, "run", lambda *a: pytest.fail("the path ran again on resume"))
    resumed = reconstruct(data, ReconstructOptions(**options, resume=str(checkpoint)), progress=False)
    np.testing.assert_array_equal(resumed.volume, straight.volume)
    assert resumed.parameters["effective_tv_beta"] == straight.parameters["effective_tv_beta"]
    assert resumed.parameters["iterations_limit"] == limit


def test_plateau_measures_the_change_against_the_decrease_so_far():
    """A cost with a large offset (a likelihood at low dose) still falling by 5 per iteration: the
    cost-relative rule (change / cost = 5e-6 < 1e-5) stopped it at the 4th iteration."""
    costs = [1e6 - 5.0 * k for k in range(40)]
    old_rule_stop = next(k + 1 for k in range(3, 40)
                         if all(abs(costs[j - 1] - costs[j]) / costs[j] < 1e-5 for j in range(k - 2, k + 1)))
    assert old_rule_stop == 4
    plateau = Plateau(1e-5)
    assert not any(plateau.reached(c) for c in costs)
    flat = Plateau(1e-5)  # a settled run still stops
    assert any(flat.reached(c) for c in [10.0, 5.0, 4.0, 3.9999999, 3.9999999, 3.9999999, 3.9999999])


def test_poisson_on_a_focused_low_overlap_low_dose_case_moves_off_the_empty_volume():
    """Without the capped first step this case stops after 4 iterations with the empty volume
    (relative RMSE 1.0): the 1/L step of the Poisson gradient at u = 0 is hundreds of radians."""
    data = simulate(SimulationConfig(**{**SMALL, "probe_diameter": 15, "step": 6}, probe="focused", photons=1e5,
                                     noise="poisson"))
    recon = reconstruct(data, ReconstructOptions(refine="none", device="cpu", loss="poisson"), progress=False)
    assert len(recon.history["cost"]) > 4
    assert recon.parameters["relative_rmse_delta"] < 0.6


def test_assess_prints_no_negative_overlap_for_a_focused_probe():
    for step in (4, 8, 12):
        data = simulate(SimulationConfig(size=16, n_angles=4, detector_size=15, step=step, probe="focused", device="cpu"))
        notes = " ".join(assess(data, median_frame_counts(data)))
        assert "~-" not in notes
        if step == 12:  # the 90 %-power diameter is ~11 px
            assert "no probe overlap" in notes


def test_lbfgs_evaluations_per_iteration_stay_bounded_late_in_a_run():
    """Past convergence a float32 line search finds no decrease; without the stationary rule it tries 12
    evaluations every iteration from then on (measured: 12.0 per iteration over iterations 50-300 of this
    problem), or accepts steps cut 10 times (10-12 evaluations each for 15 iterations)."""
    torch.manual_seed(0)
    data = simulate(SimulationConfig(**SMALL, photons=1e4, noise="poisson"))
    objective = build_objective(data, ReconstructOptions(refine="none", device="cpu"))
    optimizer = make_optimizer("lbfgs", Regularised(objective, 0.01, 0.001, True))
    u = torch.zeros(objective.model.volume_shape, dtype=objective.model.complex_dtype)
    counts = []
    for _ in range(120):
        before = objective.evaluations
        u, _ = optimizer.step(u)
        counts.append(objective.evaluations - before)
        assert counts[-1] == optimizer.diagnostics["evaluations"]
    assert max(counts) <= MAX_LINE_SEARCH + 1
    assert np.mean(counts[60:]) <= 1.5


def test_sequential_runs_its_own_path_through_its_tomography():
    """Sequential's weights come from its own ptychography (on the training frames) and tomography, not
    the joint method's path: the curve is of tomography iterates, the chosen point lies on it."""
    from ptytomo.solvers import heldout

    calls = []
    run = heldout.HeldOutPath.run
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(heldout.HeldOutPath, "run", lambda self, *a: calls.append(self.training) or run(self, *a))
    data = simulate(SimulationConfig(**{**SMALL, "n_angles": 12}, photons=1e4, noise="poisson"))
    options = dict(device="cpu", method="sequential", ptycho_iterations=20, iterations=20, loss="amplitude")
    try:
        recon = reconstruct(data, ReconstructOptions(tv="auto", **options), progress=False)
    finally:
        monkeypatch.undo()
    p = recon.parameters
    assert len(calls) == 1 and calls[0] is nullcontext  # the tomography's steps see no frame weights
    chosen = p["heldout_iteration"].index(p["heldout_chosen_iteration"])
    assert (p["effective_tv_delta"], p["effective_tv_beta"]) == (p["heldout_tv_delta"][chosen],
                                                                  p["heldout_tv_beta"][chosen])
    assert np.isfinite(p["relative_rmse_delta"]) and p["iterations_limit"] == 20
    fixed = reconstruct(data, ReconstructOptions(tv="fixed", **options), progress=False)
    # Measured: delta 0.472 -> 0.442, beta 1.52 -> 0.82 (1e4 photons: the path chose stronger TV).
    assert p["relative_rmse_beta"] < 0.7 * fixed.parameters["relative_rmse_beta"]
    assert p["relative_rmse_delta"] < 1.05 * fixed.parameters["relative_rmse_delta"]


def test_admm_runs_its_own_path_and_finishes_from_the_chosen_point():
    """ADMM's path steps ADMM itself on the training frames (its split-off psi warm-started from each
    point), and the run finishes from the chosen volume, not from zero."""
    from ptytomo.solvers import heldout
    from ptytomo.solvers.baselines import Admm

    steppers = []
    run = heldout.HeldOutPath.run
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(heldout.HeldOutPath, "run",
                        lambda self, *a: steppers.append(self.new_optimizer()) or run(self, *a))
    data = simulate(SimulationConfig(**{**SMALL, "n_angles": 12}, photons=1e4, noise="poisson"))
    options = dict(device="cpu", method="admm", iterations=20, loss="amplitude")
    try:
        recon = reconstruct(data, ReconstructOptions(tv="auto", **options), progress=False)
    finally:
        monkeypatch.undo()
    assert len(steppers) == 1 and isinstance(steppers[0], Admm)
    p = recon.parameters
    assert p["iterations_limit"] == 5 and p["heldout_path_iterations"] > 5
    fixed = reconstruct(data, ReconstructOptions(tv="fixed", **options), progress=False)
    # Measured: delta 0.776 -> 0.587, beta 2.86 -> 1.13 (1e4 photons: the path chose stronger TV).
    assert p["relative_rmse_beta"] < 0.5 * fixed.parameters["relative_rmse_beta"]
    assert p["relative_rmse_delta"] < 0.85 * fixed.parameters["relative_rmse_delta"]


def test_evaluations_are_a_history_column():
    data = simulate(SimulationConfig(**{**SMALL, "n_angles": 8}))
    recon = reconstruct(data, ReconstructOptions(refine="none", device="cpu", iterations=5, tolerance=0), progress=False)
    assert len(recon.history["evaluations"]) == 5 and np.all(recon.history["evaluations"] >= 1)
