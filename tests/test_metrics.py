"""Error metrics: RMSE and SSIM."""

import numpy as np
import pytest

from ptytomo.metrics import relative_rmse, ssim


def test_ssim_is_one_for_equal_volumes_and_falls_with_noise_and_bias():
    rng = np.random.default_rng(0)
    truth = np.zeros((24, 24, 24))
    truth[6:18, 8:16, 4:20] = 1.0
    assert ssim(truth, truth) == pytest.approx(1.0, abs=1e-12)
    noisy = [ssim(truth + level * rng.standard_normal(truth.shape), truth) for level in (0.05, 0.2, 0.8)]
    assert 0.99 > noisy[0] > noisy[1] > noisy[2] > 0
    assert ssim(0.5 * truth, truth) < 0.9  # a scaled volume is not called similar
    assert abs(ssim(np.zeros_like(truth), truth)) < 0.05


def test_relative_rmse_of_a_scaled_volume():
    truth = np.arange(1.0, 28.0).reshape(3, 3, 3)
    assert relative_rmse(0.9 * truth, truth) == pytest.approx(0.1)
