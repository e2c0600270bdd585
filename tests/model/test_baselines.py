from __future__ import annotations

import numpy as np
import pytest
from moecast.model.baselines import StatsBaseline, fill_gaps


def test_fill_gaps_interpolates_inside_and_holds_the_ends():
    filled = fill_gaps(np.array([np.nan, 1.0, np.nan, 3.0, np.nan]))
    np.testing.assert_array_equal(filled, [1.0, 1.0, 2.0, 3.0, 3.0])
    assert np.isnan(fill_gaps(np.full(3, np.nan))).all()


class Linear:
    """A stand-in statsforecast model: mean = last value, intervals +-(level/100)."""

    def forecast(self, y, h, level):
        out = {"mean": np.full(h, y[-1])}
        for lv in level:
            out[f"lo-{lv}"] = out["mean"] - lv / 100
            out[f"hi-{lv}"] = out["mean"] + lv / 100
        return out


def test_interval_levels_map_onto_quantiles():
    baseline = StatsBaseline("stub", lambda m: Linear(), levels=(0.1, 0.25, 0.5, 0.75, 0.9))
    assert baseline.intervals == [50, 80]
    fc = baseline.predict([np.array([1.0, np.nan, 5.0])], horizon=2)
    np.testing.assert_allclose(fc.quantiles[0, 0], [4.2, 4.5, 5.0, 5.5, 5.8])
    assert fc.quantiles.shape == (1, 2, 5)


def test_real_statsforecast_models_give_ordered_quantiles():
    pytest.importorskip("statsforecast", reason="baselines need the 'bench' extra")
    from moecast.model.baselines import statsforecast_baselines

    t = np.arange(200)
    y = 10 + np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 0.1, 200)
    for baseline in statsforecast_baselines(season_length=24, context=200):
        fc = baseline.predict(y, 24)
        assert np.isfinite(fc.quantiles).all(), baseline.name
        assert (np.diff(fc.quantiles, axis=-1) >= 0).all(), baseline.name
