from __future__ import annotations

import numpy as np
import pytest
from moecast.model.data.corpus import default_data_root
from moecast.model.evaluation import Split, evaluate, split, windows
from moecast.model.forecast import Forecast

DATA = default_data_root()
needs_data = pytest.mark.skipif(
    not (DATA / "ett").is_dir(), reason=f"benchmark data not found at {DATA} (set MOECAST_DATA)"
)


@needs_data
def test_etth1_split_follows_the_12_4_4_month_protocol():
    data = split("ETTh1", DATA, context=512)
    assert data.train.shape == (12 * 30 * 24, 7)
    assert data.test.shape == (4 * 30 * 24 + 512, 7)
    np.testing.assert_allclose(data.train.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(data.train.std(0), 1, atol=1e-9)


@needs_data
def test_weather_split_is_70_10_20_with_sentinels_missing():
    data = split("Weather", DATA, context=512)
    n = 52696
    assert data.train.shape[0] == int(n * 0.7)
    assert data.test.shape == (int(n * 0.2) + 512, 21)
    assert np.isnan(data.test).any() or np.isnan(data.train).any()  # the -9999 cells


class LastValue:
    """A baseline with the Forecaster's `predict`: repeats the last point."""

    levels = (0.1, 0.5, 0.9)

    def predict(self, series, horizon):
        last = np.asarray(series)[:, -1]
        q = np.repeat(last[:, None, None], horizon, axis=1).repeat(3, axis=2)
        return Forecast(quantiles=q, levels=self.levels, steps=(horizon,))


def test_evaluate_matches_a_direct_computation():
    t = np.arange(700, dtype=np.float64)
    series = np.stack([np.sin(t / 5), np.cos(t / 7) * 3], axis=1)
    data = Split("toy", train=series[:100], test=series[100:], context=64)
    starts = list(windows(data, horizon=16, stride=10))
    assert len(starts) == 2 * len(range(0, 600 - 64 - 16 + 1, 10))

    errors = np.concatenate(
        [data.test[s + 64 : s + 80, c] - data.test[s + 63, c] for s, c in starts]
    )
    result = evaluate(LastValue(), data, horizon=16, stride=10, batch=7)
    assert result["mse"] == pytest.approx(np.mean(errors**2))
    assert result["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert result["windows"] == len(starts)
