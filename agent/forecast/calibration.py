"""Calibrated intervals: adaptive conformal inference (Gibbs & Candes 2021) per stream, head and
quantile level, on a multiplicative scale of each quantile's distance from the median.

Published quantile at level t: `m + s_t * (q_t - m)`, `m` the model's median, `q_t` its raw
quantile. Each scored step of an h-step head moves `log s_t` by `rate / sqrt(h) * (miss -
target)`, where a miss is a value below the published quantile for t < 0.5 (target t) or above
it for t > 0.5 (target 1 - t). The 1 / sqrt(h): the h steps of one forecast are scored one by
one as their bins close, but they are far from independent trials; counted as such, a level
shift that every in-flight 64-step forecast misses pushed that head's factors up by up to 64
times the rate (x18) within one horizon, and they took hundreds of bins to come back (replayed
on the sensor benchmark's series, `benchmarks/quality_replay.py`: the 64-step head's weighted
quantile loss went 21 % worse than the model's own; with 1 / sqrt(h), 2 % better). The
update only stops drifting where the miss rate equals its target, so each level's coverage
converges on its nominal level whatever the model's own widths were; on the log scale the
factor stays positive, and a miss (rare, for outer levels) moves it more than a hit. The
median itself is never moved. After scaling, a running maximum over each step's levels keeps
them monotone even when neighbouring levels learnt different factors (skipped where the factors
grow outwards from the median, which keeps sorted quantiles sorted anyway).

A model whose quantiles collapse onto the median (zero width) cannot be widened by a factor:
such a stream keeps its zero-width interval (its coverage says so).
"""

from __future__ import annotations

import numpy as np

# Factors stay within [1/20, 20]: enough to repair any plausible model, and a stream that
# briefly does something absurd cannot push its factor to where it takes ages to come back.
MAX_LOG_SCALE = float(np.log(20.0))


class Calibrator:
    """Log scale factors per (slot, head, level); not thread-safe (the tick thread owns it)."""

    def __init__(
        self,
        horizons: tuple[int, ...],
        levels: np.ndarray,
        rate: float,
        capacity: int = 0,
    ) -> None:
        self.heads = heads = len(horizons)
        self.levels = np.asarray(levels, np.float64)
        self.rate = rate
        self._head_rate = rate / np.sqrt(np.asarray(horizons, np.float64))  # see the docstring
        self.log_scale = np.zeros((capacity, heads, self.levels.size))
        below = self.levels < 0.5
        above = self.levels > 0.5
        # Per level: +1 where a value below the quantile misses, -1 where one above does.
        self._side = np.where(below, 1, np.where(above, -1, 0))
        self._target = np.where(below, self.levels, np.where(above, 1.0 - self.levels, 0.0))

    def grow(self, capacity: int) -> None:
        new = np.zeros((capacity, self.heads, self.levels.size))
        new[: len(self.log_scale)] = self.log_scale
        self.log_scale = new

    def reset(self, slot: int) -> None:
        self.log_scale[slot] = 0.0

    def update(
        self, slot: np.ndarray, head: np.ndarray, quantiles: np.ndarray, value: np.ndarray
    ) -> None:
        """Fold in scored steps: the published `quantiles` `[n, levels]` and realised `value`."""
        if slot.size == 0:
            return
        below = value[:, None] < quantiles
        above = value[:, None] > quantiles
        miss = np.where(self._side > 0, below, np.where(self._side < 0, above, False))
        step = self._head_rate[head][:, None] * (miss - self._target) * (self._side != 0)
        key = slot.astype(np.intp) * self.heads + head
        flat = self.log_scale.reshape(-1, self.levels.size)
        np.add.at(flat, key, step)
        np.clip(flat, -MAX_LOG_SCALE, MAX_LOG_SCALE, out=flat)

    def factors(self, slot: int) -> np.ndarray:
        """`[heads, levels]` scale factors of one stream."""
        return np.exp(self.log_scale[slot])


def keeps_order(scales: np.ndarray, median_index: int | None) -> bool:
    """Whether factors `[..., levels]` keep any sorted quantiles sorted: they grow outwards
    from the median's level (an outer distance, at least as long, scaled at least as much)."""
    if median_index is None:
        return False
    inner_to_low = np.diff(scales[..., : median_index + 1], axis=-1) <= 0
    inner_to_high = np.diff(scales[..., median_index:], axis=-1) >= 0
    return bool(inner_to_low.all() and inner_to_high.all())


def calibrated(
    quantiles: np.ndarray, median: np.ndarray, scales: np.ndarray, ordered: bool = False
) -> np.ndarray:
    """Published quantiles from sorted model `quantiles` `[rows, steps, levels]`, their
    `median` `[rows, steps, 1]` and the `scales` `[rows, steps, levels]`, monotone per step;
    `ordered`: the scales are known to keep the order (`keeps_order`)."""
    out = quantiles - median
    out *= scales
    out += median
    if not ordered:
        # A running maximum over the levels, as a loop over the few levels: numpy's
        # accumulate along a short last axis is several times slower.
        for i in range(1, out.shape[-1]):
            np.maximum(out[..., i - 1], out[..., i], out=out[..., i])
    return out
