"""Anomalies: closed grid bins judged against the forecast that covered them; pure logic, no MQTT.

A bin is judged once, when it closes (when the skill book scores it), against the covering
step of the most recently issued forecast (shortest head on a tie), using the quantiles as
published, i.e. calibrated. Its *tail probability* is the one-sided probability of a value at
least that far out: inside the quantiles it interpolates the levels linearly (min(F, 1 - F));
beyond the outer quantiles it extrapolates an exponential tail fitted to the two outermost
quantiles of that side (for 0.8 and 0.9: P(Y > y) = 0.1 * 2 ** -((y - q0.9) / (q0.9 - q0.8))).

Debouncing: a stream raises when a bin's tail probability falls below `tail_probability`; while
raised, further extreme bins add nothing, and it clears after `clear_after` judged bins in a
row inside the outer quantiles. So one fault is one `raised` and one `cleared` event. A bin
without readings is not judged (missing is not anomalous); a forecast stream that falls silent
gets one `stale` event (which also ends a raised anomaly), and its next forecast re-arms it.
"""

from __future__ import annotations

import numpy as np
from moecast.agent.forecast.skill import Steps


def tail_probability(levels: np.ndarray, quantiles: np.ndarray, value: np.ndarray) -> np.ndarray:
    """One-sided tail probability of each `value[i]` under sorted `quantiles[i]` at `levels`."""
    levels = np.asarray(levels, np.float64)
    q = np.asarray(quantiles, np.float64)
    y = np.asarray(value, np.float64)
    last = levels.size - 1
    reached = (q <= y[:, None]).sum(axis=1)
    lo = np.clip(reached - 1, 0, last)
    hi = np.clip(reached, 0, last)
    rows = np.arange(y.size)
    q_lo, q_hi = q[rows, lo], q[rows, hi]
    span = q_hi - q_lo
    fraction = np.divide(y - q_lo, span, out=np.zeros_like(span), where=span > 0)
    cdf = levels[lo] + fraction * (levels[hi] - levels[lo])
    probability = np.minimum(cdf, 1.0 - cdf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        low_width = (q[:, 1] - q[:, 0]) / np.log(levels[1] / levels[0])
        below = levels[0] * np.exp(-(q[:, 0] - y) / low_width)
        high_width = (q[:, -1] - q[:, -2]) / np.log((1 - levels[-2]) / (1 - levels[-1]))
        above = (1 - levels[-1]) * np.exp(-(y - q[:, -1]) / high_width)
    probability = np.where(y < q[:, 0], np.nan_to_num(below, nan=0.0), probability)
    probability = np.where(y > q[:, -1], np.nan_to_num(above, nan=0.0), probability)
    return probability


def judged_bins(steps: Steps, values: np.ndarray) -> np.ndarray:
    """Index into `steps` (all closed, with realised `values`) of the one step per (slot, bin)
    that judges it: the latest issued, then the shortest head; ordered by slot, then time."""
    if len(steps) == 0:
        return np.empty(0, np.intp)
    order = np.lexsort((steps.head, -steps.issued_at, steps.bin_end, steps.slot))
    slot, end = steps.slot[order], steps.bin_end[order]
    first = np.ones(order.size, bool)
    first[1:] = (slot[1:] != slot[:-1]) | (end[1:] != end[:-1])
    return order[first]


class AnomalyStates:
    """Per slot: raised or not, judged bins inside the band since, stale reported or not."""

    def __init__(self, capacity: int = 0) -> None:
        self.raised = np.zeros(capacity, bool)
        self.inside_run = np.zeros(capacity, np.int32)
        self.stale = np.zeros(capacity, bool)

    def grow(self, capacity: int) -> None:
        for name in ("raised", "inside_run", "stale"):
            old = getattr(self, name)
            new = np.zeros(capacity, old.dtype)
            new[: old.size] = old
            setattr(self, name, new)

    def reset(self, slot: int) -> None:
        self.raised[slot] = False
        self.inside_run[slot] = 0
        self.stale[slot] = False

    def judge(
        self,
        levels: np.ndarray,
        steps: Steps,
        values: np.ndarray,
        threshold: float,
        clear_after: int,
    ) -> list[tuple[int, dict[str, object]]]:
        """(slot, event payload without the stream) for every state change these closed
        steps cause, in time order per stream."""
        chosen = judged_bins(steps, values)
        if chosen.size == 0:
            return []
        q = steps.quantiles[chosen]
        y = values[chosen]
        slots = steps.slot[chosen]
        p = tail_probability(levels, q, y)
        # Only streams with an extreme bin or an anomaly to clear need the per-bin walk.
        busy = (p < threshold) | self.raised[slots]
        if not busy.any():
            return []
        events: list[tuple[int, dict[str, object]]] = []
        inside = (q[:, 0] <= y) & (y <= q[:, -1])
        for i in np.flatnonzero(busy):
            slot = int(slots[i])
            if not self.raised[slot]:
                if p[i] < threshold:
                    self.raised[slot] = True
                    self.inside_run[slot] = 0
                    events.append((slot, _event("raised", steps, chosen[i], y[i], p[i], q[i])))
                continue
            if not inside[i]:
                self.inside_run[slot] = 0
                continue
            self.inside_run[slot] += 1
            if self.inside_run[slot] >= clear_after:
                self.raised[slot] = False
                self.inside_run[slot] = 0
                events.append((slot, _event("cleared", steps, chosen[i], y[i], p[i], q[i])))
        return events


def _event(
    state: str, steps: Steps, index: int, value: float, p: float, q: np.ndarray
) -> dict[str, object]:
    return {
        "state": state,
        "ts": float(steps.bin_end[index]),
        "value": float(value),
        "band": [float(q[0]), float(q[-1])],
        "tail_probability": float(f"{p:.4g}"),
        "issued_at": float(steps.issued_at[index]),
        "head": int(steps.head[index]),  # index into the horizons; the caller names it
    }
