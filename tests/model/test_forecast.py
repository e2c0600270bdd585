from __future__ import annotations

import numpy as np
import pytest
import torch
from moecast.model.forecast import Forecaster, as_batch, greedy_schedule


@pytest.fixture
def forecaster(nano) -> Forecaster:
    return Forecaster(nano)


def sine(length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return 10 * np.sin(t / 7) + rng.normal(size=length) + 50


@pytest.mark.parametrize(
    ("horizon", "steps"),
    [(1, [1]), (8, [8]), (64, [64]), (96, [64, 32]), (100, [64, 32, 1, 1, 1, 1]), (730, None)],
)
def test_greedy_schedule_takes_the_largest_head_that_fits(horizon, steps):
    got = greedy_schedule(horizon, (1, 8, 32, 64))
    assert sum(got) == horizon
    assert got == sorted(got, reverse=True)
    if steps is not None:
        assert got == steps


def test_the_96_step_forecast_is_64_then_32_fed_back(forecaster, nano):
    x = sine(128)
    fc = forecaster.predict(x, 96)
    assert fc.steps == (64, 32)
    assert fc.quantiles.shape == (1, 96, len(nano.config.quantiles))

    # Rebuild it by hand, in the same float64-standardised space the Forecaster uses.
    loc, scale = x.mean(), x.std()
    z = torch.tensor((x - loc) / scale, dtype=torch.float32)[None]
    first = nano.predict(z)[64]
    extended = torch.cat([z, first[..., nano.config.median_index]], dim=1)[:, -128:]
    second = nano.predict(extended)[32]
    manual = torch.cat([first, second], dim=1).double().numpy() * scale + loc
    np.testing.assert_allclose(fc.quantiles, manual, rtol=1e-5, atol=1e-4)


def test_forecast_is_affine_equivariant_even_at_large_offsets(forecaster):
    x = sine(200)
    base = forecaster.predict(x, 40).quantiles
    for a, b in [(2.0, 3.0), (1e-3, 1.7e9), (1e4, -5.0)]:
        moved = forecaster.predict(a * x + b, 40).quantiles
        # Within 1e-4 of the series' spread; float32 inside the network would give ~1e-1 at
        # (1e-3, 1.7e9), where the float64 standardisation earns its keep.
        np.testing.assert_allclose(moved, a * base + b, rtol=0, atol=1e-4 * a * x.std())


def test_nan_padded_short_series_equals_unpadded(forecaster):
    short = sine(45)
    padded = np.concatenate([np.full(300, np.nan), short])
    np.testing.assert_allclose(
        forecaster.predict(short, 70).quantiles, forecaster.predict(padded, 70).quantiles, atol=1e-5
    )


def test_series_of_different_lengths_in_one_batch(forecaster):
    rows = [sine(30), sine(500, seed=1), sine(129, seed=2)]
    together = forecaster.predict(rows, 16).quantiles
    for i, row in enumerate(rows):
        np.testing.assert_allclose(together[i], forecaster.predict(row, 16).quantiles[0], atol=1e-5)


def test_only_the_last_context_length_points_matter(forecaster, nano):
    x = sine(1000)
    tail = x[-nano.config.context_length :]
    np.testing.assert_allclose(
        forecaster.predict(x, 8).quantiles, forecaster.predict(tail, 8).quantiles, atol=1e-6
    )


def test_gaps_give_finite_forecasts_and_dead_series_give_nan(forecaster):
    holed = sine(128)
    holed[::2] = np.nan
    holed[60:100] = np.nan
    dead = np.full(128, np.nan)
    fc = forecaster.predict([holed, dead], 33)
    assert np.isfinite(fc.quantiles[0]).all()
    assert np.isnan(fc.quantiles[1]).all()


def test_constant_series_forecasts_its_level(forecaster):
    fc = forecaster.predict(np.full(64, 21.5), 8)
    np.testing.assert_allclose(fc.quantiles, 21.5, atol=1e-3)


def test_quantile_accessors(forecaster):
    fc = forecaster.predict(sine(64), 8)
    np.testing.assert_array_equal(fc.median, fc.quantiles[..., 4])
    assert (fc.quantile(0.1) <= fc.median).all()
    assert (fc.median <= fc.quantile(0.9)).all()
    with pytest.raises(ValueError, match="not among"):
        fc.quantile(0.25)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (np.zeros((2, 3, 4)), "1-D .* or 2-D"),
        (np.zeros((3, 0)), "series 0 is empty"),
        ([], "empty"),
        ([[1.0, 2.0], [1.0, np.inf]], "series 1 has infinite values .*position 1"),
        ([[1.0, 2.0], ["a", "b"]], "series 1 is not numeric"),
        ([np.zeros(3), np.zeros((2, 2))], "series 1 must be 1-D"),
        ("123", "array or a sequence"),
    ],
)
def test_bad_input_is_a_clear_value_error(forecaster, series, message):
    with pytest.raises(ValueError, match=message):
        forecaster.predict(series, 8)


@pytest.mark.parametrize("horizon", [0, -3, 2.5, True])
def test_bad_horizon_is_a_clear_value_error(forecaster, horizon):
    with pytest.raises(ValueError, match="horizon"):
        forecaster.predict(sine(32), horizon)


def test_as_batch_accepts_lists_tensors_and_single_series():
    assert len(as_batch([1.0, 2.0, 3.0])) == 1
    assert len(as_batch(torch.zeros(4, 9))) == 4
    assert [len(r) for r in as_batch([[1.0], [1.0, 2.0]])] == [1, 2]
