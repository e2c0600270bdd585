"""The Ornstein-Uhlenbeck family: exact discretisation, mean reversion and moving means."""

from __future__ import annotations

import numpy as np
import pytest
from moecast.model.data import ou
from moecast.model.data.ou import (
    ConstantMean,
    OUSpec,
    SineMean,
    SwitchingMean,
    ar1_filter,
    draw_ou_spec,
    render_ou,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _lag1(values: np.ndarray) -> float:
    values = values.astype(np.float64)
    return float(np.corrcoef(values[1:], values[:-1])[0, 1])


@pytest.mark.parametrize("theta", [0.05, 0.5, 2.0])
def test_ou_has_the_exact_autocorrelation_and_stationary_spread(theta: float) -> None:
    spec = OUSpec(theta=theta, sigma=0.7, mean=ConstantMean(3.0))
    values = render_ou(spec, _rng(), 40_000).astype(np.float64)
    assert _lag1(values) == pytest.approx(np.exp(-theta), abs=0.02)
    assert values.std() == pytest.approx(spec.stationary_std, rel=0.1)
    assert values.mean() == pytest.approx(3.0, abs=0.2 * spec.stationary_std)


def test_fast_reversion_forgets_faster_than_slow() -> None:
    slow = render_ou(OUSpec(theta=0.005, sigma=1.0, mean=ConstantMean(0.0)), _rng(1), 576)
    fast = render_ou(OUSpec(theta=1.0, sigma=1.0, mean=ConstantMean(0.0)), _rng(1), 576)
    assert _lag1(slow) > 0.9
    assert _lag1(fast) < 0.6


def test_switching_mean_levels_show_in_the_series() -> None:
    mean = SwitchingMean(breakpoints=(0.4, 0.7), levels=(0.0, 10.0, -5.0))
    values = render_ou(OUSpec(theta=0.5, sigma=1.0, mean=mean), _rng(2), 1000)
    # Skip a few reversion times after each switch.
    assert values[20:400].mean() == pytest.approx(0.0, abs=0.5)
    assert values[420:700].mean() == pytest.approx(10.0, abs=0.5)
    assert values[720:].mean() == pytest.approx(-5.0, abs=0.5)


def test_sine_mean_is_followed() -> None:
    mean = SineMean(amplitude=5.0, period=200.0, phase=0.0)
    values = render_ou(OUSpec(theta=1.0, sigma=1.0, mean=mean), _rng(3), 1000)
    assert np.corrcoef(values, mean.render(1000))[0, 1] > 0.9


def test_drawn_ou_specs_span_slow_to_fast_and_every_mean() -> None:
    rng = _rng(4)
    specs = [draw_ou_spec(rng) for _ in range(500)]
    thetas = np.array([s.theta for s in specs])
    assert thetas.min() < 0.003
    assert thetas.max() > 1.0
    assert {type(s.mean) for s in specs} == {ConstantMean, SwitchingMean, SineMean}
    for s in specs:
        if isinstance(s.mean, SwitchingMean):
            assert len(set(s.mean.levels)) >= 2
            assert all(a != b for a, b in zip(s.mean.levels, s.mean.levels[1:], strict=False))


def test_ar1_filter_without_scipy_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    shocks = _rng(5).standard_normal(600)
    with_default = ar1_filter(shocks, 0.9)
    monkeypatch.setattr(ou, "lfilter", None)
    np.testing.assert_allclose(ar1_filter(shocks, 0.9), with_default, rtol=1e-12, atol=1e-12)
    assert ar1_filter(np.array([1.0, 0.0, 0.0]), 0.5).tolist() == [1.0, 0.5, 0.25]


def test_ou_spec_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="theta"):
        OUSpec(theta=0.0, sigma=1.0, mean=ConstantMean(0.0))
