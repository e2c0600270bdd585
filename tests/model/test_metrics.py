from __future__ import annotations

import math

import numpy as np
import pytest
from moecast.model.metrics import (
    geometric_mean,
    mae,
    mase,
    mse,
    seasonal_scale,
    weighted_quantile_loss,
)


def test_mse_and_mae_by_hand_skip_missing_targets():
    forecast = np.array([1.0, 2.0, 3.0, 4.0])
    target = np.array([2.0, 2.0, np.nan, 1.0])
    assert mse(forecast, target) == pytest.approx((1 + 0 + 9) / 3)
    assert mae(forecast, target) == pytest.approx((1 + 0 + 3) / 3)


def test_mase_by_hand():
    context = np.array([1.0, 3.0, 2.0, 6.0])  # |diffs| 2, 1, 4 -> scale 7/3
    forecast, target = np.array([5.0, 5.0]), np.array([6.0, 8.0])  # MAE 2
    assert mase(forecast, target, context) == pytest.approx(2 / (7 / 3))
    seasonal = np.array([1.0, 2.0, 4.0, 8.0])  # period 2: |4-1|, |8-2| -> 4.5
    assert seasonal_scale(seasonal, period=2) == pytest.approx(4.5)
    assert math.isnan(seasonal_scale(np.array([1.0, 2.0]), period=2))


def test_weighted_quantile_loss_by_hand():
    levels = [0.1, 0.5, 0.9]
    quantiles = np.array([[[1.0, 2.0, 3.0]], [[0.0, 1.0, 2.0]]])  # [2 series, 1 step, 3 levels]
    target = np.array([[2.5], [-1.0]])
    # series 1: diffs 1.5, .5, -.5 -> .15, .25, .05 ; series 2: diffs -1, -2, -3 -> .9, 1., .3
    per_level = 2 * np.array([0.15 + 0.9, 0.25 + 1.0, 0.05 + 0.3]) / (2.5 + 1.0)
    assert weighted_quantile_loss(quantiles, target, levels) == pytest.approx(per_level.mean())


def test_perfect_quantiles_score_zero():
    target = np.array([[1.0, 2.0]])
    quantiles = np.repeat(target[..., None], 3, axis=-1)
    assert weighted_quantile_loss(quantiles, target, [0.1, 0.5, 0.9]) == 0.0


def test_geometric_mean_ignores_non_positive_and_nan():
    assert geometric_mean([1.0, 4.0, np.nan, 0.0]) == pytest.approx(2.0)
    assert math.isnan(geometric_mean([np.nan]))


def test_geometric_mean_with_a_floor_counts_exact_scores_at_the_floor():
    assert geometric_mean([0.0, 1e-9, 4.0, np.nan], floor=0.01) == pytest.approx(
        (0.01 * 0.01 * 4.0) ** (1 / 3)
    )
