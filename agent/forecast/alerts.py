"""Alert rules on probabilistic forecasts: pure logic, no MQTT.

A rule reads "the value goes above (or below) `threshold` within the next `within_steps` steps
with probability at least `probability`". The forecast gives, per step, values at a few
quantile levels (e.g. 0.1 ... 0.9); the probability that one step exceeds the threshold comes
from linearly interpolating the level between the two quantile values that bracket it. Outside
the outer quantiles nothing is known about the tails, so the probability is clamped: with levels
0.1 ... 0.9 it lies in [0.1, 0.9], and a rule's `probability` should lie inside that range.

The rule's probability is the largest per-step probability over the window: the chance that a
*particular* step crosses, a lower bound on the chance that *some* step does (the forecast has
marginals only, no joint distribution).

Hysteresis keeps an alert from flapping: a raised alert clears only once the probability falls
below `probability - hysteresis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from moecast.agent.ingest.readings import StreamId, name_problem
from pydantic import BaseModel, ConfigDict, Field, model_validator

Direction = Literal["above", "below"]
AlertState = Literal["raised", "cleared"]


class AlertRule(BaseModel):
    """One rule; exactly one of `above` and `below` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str  # names the alert in its messages
    above: float | None = None
    below: float | None = None
    within_steps: int = Field(gt=0)  # look this many grid steps ahead
    probability: float = Field(gt=0, lt=1)  # raise when P(crossing) reaches this
    hysteresis: float = Field(default=0.1, ge=0)  # clear below probability - hysteresis

    @model_validator(mode="after")
    def _check(self) -> AlertRule:
        problem = name_problem(self.name)
        if problem is not None:
            raise ValueError(f"name {self.name!r} {problem}")
        if (self.above is None) == (self.below is None):
            raise ValueError("set exactly one of 'above' and 'below'")
        if self.hysteresis >= self.probability:
            raise ValueError("hysteresis must be smaller than probability")
        return self

    @property
    def direction(self) -> Direction:
        return "above" if self.above is not None else "below"

    @property
    def threshold(self) -> float:
        threshold = self.above if self.above is not None else self.below
        assert threshold is not None  # the validator guarantees one is set
        return threshold


def exceedance_probability(
    levels: Sequence[float] | np.ndarray,
    quantiles: np.ndarray,
    threshold: float,
    direction: Direction,
) -> np.ndarray:
    """Per step, the probability of a value above (or below) `threshold`.

    `levels` are the ascending quantile levels, `quantiles` is `[steps, len(levels)]`. Each
    step's quantiles are sorted first, so crossed quantiles still describe a distribution. A
    step with a non-finite quantile gets NaN.
    """
    levels = np.asarray(levels, dtype=np.float64)
    values = np.sort(np.asarray(quantiles, dtype=np.float64), axis=-1)
    if values.ndim != 2 or values.shape[1] != levels.size:
        raise ValueError(f"quantiles {values.shape} do not match {levels.size} levels")
    last = levels.size - 1
    # Index of the first quantile value above the threshold ("above": P(X > t) = 1 - F(t)), or
    # at or above it ("below": P(X < t) = F(t-)); with ties both read the flat part correctly.
    reached = values <= threshold if direction == "above" else values < threshold
    upper = reached.sum(axis=1)
    lo = np.clip(upper - 1, 0, last)
    hi = np.clip(upper, 0, last)
    v_lo = np.take_along_axis(values, lo[:, None], axis=1)[:, 0]
    v_hi = np.take_along_axis(values, hi[:, None], axis=1)[:, 0]
    span = v_hi - v_lo
    fraction = np.divide(threshold - v_lo, span, out=np.zeros_like(span), where=span > 0)
    cdf = levels[lo] + fraction * (levels[hi] - levels[lo])
    probability = 1.0 - cdf if direction == "above" else cdf
    return np.where(np.isfinite(values).all(axis=1), probability, np.nan)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A rule changed state for a stream."""

    stream: StreamId
    rule: str
    state: AlertState
    probability: float
    threshold: float
    direction: Direction
    within_steps: int
    first_crossing_ts: float | None  # the first step whose probability reaches the rule's
    issued_at: float

    def payload(self) -> dict[str, object]:
        return {
            "stream": str(self.stream),
            "rule": self.rule,
            "state": self.state,
            "probability": round(self.probability, 4),
            "threshold": self.threshold,
            "direction": self.direction,
            "within_steps": self.within_steps,
            "first_crossing_ts": self.first_crossing_ts,
            "issued_at": self.issued_at,
        }


class AlertTracker:
    """Which (stream, rule) pairs are raised; turns each new forecast into raise/clear events.

    Not thread-safe: the forecasting thread owns it.
    """

    def __init__(self) -> None:
        self._raised: set[tuple[StreamId, str]] = set()

    def is_raised(self, stream: StreamId, rule: str) -> bool:
        return (stream, rule) in self._raised

    def evaluate(
        self,
        stream: StreamId,
        rules: Sequence[AlertRule],
        step_ts: Sequence[float] | np.ndarray,
        levels: Sequence[float] | np.ndarray,
        quantiles: np.ndarray,
        issued_at: float,
    ) -> list[AlertEvent]:
        """Events for one forecast of `stream`: `step_ts[i]` is the time of `quantiles[i]`.

        A rule whose window holds no usable step (too short a forecast, NaN quantiles) keeps
        its state: no forecast is no evidence either way.
        """
        events = []
        for rule in rules:
            steps = min(rule.within_steps, len(step_ts))
            if steps == 0:
                continue
            per_step = exceedance_probability(
                levels, quantiles[:steps], rule.threshold, rule.direction
            )
            if np.isnan(per_step).all():
                continue
            probability = float(np.nanmax(per_step))
            key = (stream, rule.name)
            raised = key in self._raised
            if not raised and probability >= rule.probability:
                self._raised.add(key)
                first = int(np.argmax(per_step >= rule.probability))
                crossing = float(step_ts[first])
                events.append(_event(stream, rule, "raised", probability, crossing, issued_at))
            elif raised and probability < rule.probability - rule.hysteresis:
                self._raised.discard(key)
                events.append(_event(stream, rule, "cleared", probability, None, issued_at))
        return events


def _event(
    stream: StreamId,
    rule: AlertRule,
    state: AlertState,
    probability: float,
    first_crossing_ts: float | None,
    issued_at: float,
) -> AlertEvent:
    return AlertEvent(
        stream=stream,
        rule=rule.name,
        state=state,
        probability=probability,
        threshold=rule.threshold,
        direction=rule.direction,
        within_steps=rule.within_steps,
        first_crossing_ts=first_crossing_ts,
        issued_at=issued_at,
    )
