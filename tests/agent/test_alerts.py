"""Alert rules on forecast quantiles, checked against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from moecast.agent.forecast.alerts import AlertRule, AlertTracker, exceedance_probability
from moecast.agent.ingest.readings import StreamId
from pydantic import ValidationError

LEVELS = [0.1, 0.5, 0.9]
STREAM = StreamId("boiler", "temp")


def one_step(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float64)


@pytest.mark.parametrize(
    ("threshold", "above", "below"),
    [
        (25.0, 0.3, 0.7),  # between q50=20 and q90=30: F = 0.5 + 0.5 * 0.4 = 0.7
        (15.0, 0.7, 0.3),  # between q10=10 and q50=20: F = 0.1 + 0.5 * 0.4 = 0.3
        (20.0, 0.5, 0.5),  # exactly the median
        (12.0, 0.82, 0.18),  # F = 0.1 + 0.2 * 0.4
        (5.0, 0.9, 0.1),  # below every quantile: clamped at the outer levels
        (35.0, 0.1, 0.9),  # above every quantile: clamped
    ],
)
def test_exceedance_probability_interpolates_between_levels(
    threshold: float, above: float, below: float
) -> None:
    quantiles = one_step(10.0, 20.0, 30.0)
    assert exceedance_probability(LEVELS, quantiles, threshold, "above")[0] == pytest.approx(above)
    assert exceedance_probability(LEVELS, quantiles, threshold, "below")[0] == pytest.approx(below)


def test_flat_quantiles_and_ties() -> None:
    # q10 = q50 = 20: the distribution has an atom at 20.
    quantiles = one_step(20.0, 20.0, 30.0)
    assert exceedance_probability(LEVELS, quantiles, 20.0, "above")[0] == pytest.approx(0.5)
    assert exceedance_probability(LEVELS, quantiles, 20.0, "below")[0] == pytest.approx(0.1)
    assert exceedance_probability(LEVELS, quantiles, 25.0, "above")[0] == pytest.approx(0.3)


def test_crossed_quantiles_are_sorted_and_nan_steps_stay_nan() -> None:
    quantiles = np.array([[30.0, 20.0, 10.0], [10.0, np.nan, 30.0]])
    probability = exceedance_probability(LEVELS, quantiles, 25.0, "above")
    assert probability[0] == pytest.approx(0.3)
    assert np.isnan(probability[1])


def rule(**fields: object) -> AlertRule:
    return AlertRule.model_validate(
        {"name": "hot", "within_steps": 3, "probability": 0.6, "hysteresis": 0.2, **fields}
    )


def forecast(*steps: tuple[float, float, float]) -> np.ndarray:
    return np.array(steps, dtype=np.float64)


def test_raise_then_hold_within_hysteresis_then_clear() -> None:
    tracker = AlertTracker()
    hot = rule(above=25.0)
    ts = [100.0, 200.0, 300.0, 400.0]
    # Step probabilities of exceeding 25: 0.1 (clamped), 0.3, 0.7 (q10=20 -> F=0.1+0.4*0.5),
    # and a fourth step of 0.9 that lies beyond within_steps=3.
    rising = forecast((0, 10, 20), (10, 20, 30), (20, 30, 40), (30, 40, 50))
    events = tracker.evaluate(STREAM, [hot], ts, LEVELS, rising, issued_at=50.0)
    assert len(events) == 1
    event = events[0]
    assert (event.state, event.rule, event.threshold, event.direction) == (
        "raised",
        "hot",
        25.0,
        "above",
    )
    assert event.probability == pytest.approx(0.7)
    assert event.first_crossing_ts == 300.0  # the first step at or above p = 0.6
    assert event.payload() == {
        "stream": "boiler/temp",
        "rule": "hot",
        "state": "raised",
        "probability": 0.7,
        "threshold": 25.0,
        "direction": "above",
        "within_steps": 3,
        "first_crossing_ts": 300.0,
        "issued_at": 50.0,
    }
    assert tracker.is_raised(STREAM, "hot")

    # Still raised: nothing new to say.
    assert tracker.evaluate(STREAM, [hot], ts, LEVELS, rising, issued_at=60.0) == []
    # 0.5 is below p = 0.6 but not below p - hysteresis = 0.4: the alert holds.
    holding = forecast((0, 10, 20), (15, 25, 35), (0, 10, 20))
    assert tracker.evaluate(STREAM, [hot], ts[:3], LEVELS, holding, issued_at=70.0) == []
    # 0.3 < 0.4: cleared.
    falling = forecast((0, 10, 20), (10, 20, 30), (0, 10, 20))
    events = tracker.evaluate(STREAM, [hot], ts[:3], LEVELS, falling, issued_at=80.0)
    assert [(e.state, e.first_crossing_ts) for e in events] == [("cleared", None)]
    assert events[0].probability == pytest.approx(0.3)
    assert not tracker.is_raised(STREAM, "hot")


def test_below_rules_streams_and_rules_are_tracked_apart() -> None:
    tracker = AlertTracker()
    cold = rule(name="cold", below=5.0, within_steps=1, probability=0.5, hysteresis=0.1)
    hot = rule(above=100.0)
    other = StreamId("kitchen", "temp")
    chilly = forecast((0, 4, 8))  # 5 lies between q50=4 and q90=8: F = 0.5 + 0.4 * 1 / 4
    events = tracker.evaluate(STREAM, [cold, hot], [10.0], LEVELS, chilly, issued_at=0.0)
    assert [(e.rule, e.state) for e in events] == [("cold", "raised")]
    assert events[0].probability == pytest.approx(0.5 + 0.4 * (5 - 4) / 4)
    assert tracker.is_raised(STREAM, "cold")
    assert not tracker.is_raised(other, "cold")
    assert not tracker.is_raised(STREAM, "hot")


def test_no_usable_forecast_keeps_the_state() -> None:
    tracker = AlertTracker()
    hot = rule(above=25.0, within_steps=1)
    tracker.evaluate(STREAM, [hot], [1.0], LEVELS, forecast((30, 40, 50)), issued_at=0.0)
    assert tracker.is_raised(STREAM, "hot")
    blank = forecast((np.nan, np.nan, np.nan))
    assert tracker.evaluate(STREAM, [hot], [2.0], LEVELS, blank, issued_at=1.0) == []
    assert tracker.evaluate(STREAM, [hot], [], LEVELS, blank[:0], issued_at=1.0) == []
    assert tracker.is_raised(STREAM, "hot")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"above": 1.0, "below": 0.0}, "exactly one of"),
        ({}, "exactly one of"),
        ({"above": 1.0, "hysteresis": 0.7}, "hysteresis must be smaller"),
        ({"above": 1.0, "probability": 1.0}, "less than 1"),
        ({"above": float("nan")}, "finite number"),
        ({"above": 1.0, "name": "no spaces"}, "A-Za-z0-9"),
    ],
)
def test_invalid_rules(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(**fields)
