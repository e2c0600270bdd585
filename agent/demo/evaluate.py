"""Score the agent's forecasts against what the site really did next, and against a naive
forecast that repeats the last value the agent had.

Both are scored on the agent's own grid: the realised value of a step is the mean of
the readings in its bin, as published by the site. The naive forecast at an issue time is the
last non-empty bin at or before the forecast's `grid_end`, using only readings published before
the forecast was issued: the same information the model had. Only bins that ended before the
site stopped publishing are scored; empty bins (dropouts) are skipped for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from moecast.agent.demo.observer import ForecastRecord

COVERAGE_LEVELS = (0.1, 0.9)  # the 80 % interval


@dataclass(frozen=True, slots=True)
class Published:
    """One stream's readings as the site published them."""

    ts: np.ndarray  # unix event times
    values: np.ndarray
    sent_at: np.ndarray  # unix site time of publication, NaN if never published


@dataclass(slots=True)
class HeadScore:
    """Absolute errors of one horizon head, pooled over every forecast and scored step."""

    model: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        n = len(self.model)
        if n == 0:
            return {"steps": 0, "mae": None, "naive_mae": None, "relative_mae": None}
        mae, naive = float(np.mean(self.model)), float(np.mean(self.naive))
        return {
            "steps": n,
            "mae": _round(mae),
            "naive_mae": _round(naive),
            "relative_mae": _round(mae / naive) if naive > 0 else None,
            "coverage_80": round(float(np.mean(self.covered)), 3),
        }


def score_stream(
    published: Published, forecasts: Sequence[ForecastRecord], scored_until: float
) -> dict[int, HeadScore]:
    """Per horizon head, the errors of every forecast of one stream; `scored_until` is the
    unix site time up to which the site had published (later bins are incomplete)."""
    scores: dict[int, HeadScore] = {}
    if not forecasts:
        return scores
    interval = forecasts[0].interval_s
    sent = ~np.isnan(published.sent_at)
    truth = _bin_means(published.ts[sent], published.values[sent], interval)
    last_bin = math.floor(scored_until / interval)
    for forecast in forecasts:
        known = sent & (published.sent_at <= forecast.issued_at)
        known &= published.ts <= forecast.grid_end
        if not known.any():
            continue
        bins = np.ceil(published.ts[known] / interval)
        newest = bins.max()
        naive = float(published.values[known][bins == newest].mean())
        end_bin = round(forecast.grid_end / interval)
        for head, quantiles in forecast.heads.items():
            score = scores.setdefault(head, HeadScore())
            low = forecast.band(head, COVERAGE_LEVELS[0])
            high = forecast.band(head, COVERAGE_LEVELS[1])
            median = forecast.median(head)
            for step in range(quantiles.shape[0]):
                b = end_bin + step + 1
                if b > last_bin:
                    break
                actual = truth.get(b)
                if actual is None:
                    continue
                score.model.append(abs(median[step] - actual))
                score.naive.append(abs(naive - actual))
                score.covered.append(bool(low[step] <= actual <= high[step]))
    return scores


def summarise(per_stream: dict[str, dict[int, HeadScore]]) -> dict[str, object]:
    """Across streams, per head: the geometric mean of each stream's MAE / naive MAE (scale
    free, so a CO2 stream in ppm does not outweigh a temperature in °C), and how many streams
    the model beats."""
    heads = sorted({head for scores in per_stream.values() for head in scores})
    by_head = {}
    for head in heads:
        ratios = [
            scores[head].summary()["relative_mae"]
            for scores in per_stream.values()
            if head in scores
        ]
        ratios = [r for r in ratios if r is not None and r > 0]
        if not ratios:
            continue
        geomean = float(np.exp(np.mean(np.log(ratios))))
        by_head[str(head)] = {
            "streams": len(ratios),
            "relative_mae_geomean": round(geomean, 4),
            "streams_beating_naive": sum(r < 1 for r in ratios),
        }
    longest = by_head.get(str(heads[-1])) if heads else None
    return {
        "by_horizon": by_head,
        # The longest head covers every lead time from one step to its horizon.
        "headline_horizon": heads[-1] if heads else None,
        "relative_mae": longest["relative_mae_geomean"] if longest else None,
        "beats_naive": bool(longest and longest["relative_mae_geomean"] < 1),
    }


def _bin_means(ts: np.ndarray, values: np.ndarray, interval: float) -> dict[int, float]:
    """Bin number (label / interval) -> mean of its readings; bins are right-closed."""
    if ts.size == 0:
        return {}
    bins = np.ceil(ts / interval).astype(np.int64)
    numbers, inverse = np.unique(bins, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse)
    return dict(zip(numbers.tolist(), (sums / counts).tolist(), strict=True))


def bin_series(
    ts: np.ndarray, values: np.ndarray, interval: float
) -> tuple[np.ndarray, np.ndarray]:
    """(bin labels as unix time, means) of the non-empty bins, ascending: for plots."""
    means = _bin_means(ts, values, interval)
    numbers = np.array(sorted(means), dtype=np.float64)
    return numbers * interval, np.array([means[int(n)] for n in numbers])


def _round(value: float) -> float:
    return float(f"{value:.4g}")
