"""A site's series, cut for routing statistics and pruning.

    series = load_site_series("site-data/")            # model.data.corpus: CSV/Parquet files
    windows = context_windows(series, 512)               # [n, 512] float32, NaN = missing
    split = split_site(series, 512, horizon=32)          # calibration and held-out windows

A window is what a bundle is fed: the last `context_length` points before a forecast origin,
left-padded with NaN when the history is shorter. The held-out part of a series (its last
quarter by default) only ever supplies forecast targets, so pruning is judged on readings it
was not chosen on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from moecast.model.data.corpus import Series
from moecast.model.forecast import SeriesLike, as_batch
from moecast.model.metrics import geometric_mean, mase

HOLDOUT_FRACTION = 0.25
EVALUATION_WINDOWS_PER_SERIES = 4


def series_values(series: Sequence[Series] | SeriesLike) -> list[np.ndarray]:
    """Raw 1-D float64 arrays from loaded `Series` or anything `Forecaster.predict` accepts."""
    if isinstance(series, Sequence) and series and isinstance(series[0], Series):
        return [s.values.astype(np.float64) for s in series]
    return as_batch(series)


def context_windows(
    series: Sequence[Series] | SeriesLike, context_length: int, max_per_series: int | None = None
) -> np.ndarray:
    """`[n, context_length]` float32: each series cut into non-overlapping windows that end at
    its last point (at most `max_per_series`, the newest first); a shorter series becomes one
    window left-padded with NaN. Windows with no observed point are left out."""
    windows = []
    for values in series_values(series):
        ends = range(values.size, context_length - 1, -context_length) or [values.size]
        windows += [_left_padded(values[:end], context_length) for end in ends][:max_per_series]
    observed = [w for w in windows if np.isfinite(w).any()]
    if not observed:
        raise ValueError("no window has an observed value")
    return np.stack(observed).astype(np.float32)


@dataclass(frozen=True)
class SiteSplit:
    """Calibration windows `[n, context_length]`, and held-out forecast origins: their
    contexts `[m, context_length]` and the `horizon` points that followed `[m, horizon]`."""

    calibration: np.ndarray
    contexts: np.ndarray
    targets: np.ndarray

    def mase(self, median: np.ndarray) -> float:
        """Geometric mean over the held-out windows of the MASE (scaled by the naive one-step
        error of each context) of median forecasts `[m, horizon]`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # flat contexts: NaN, left out
            scores = [
                mase(f, y, c) for f, y, c in zip(median, self.targets, self.contexts, strict=True)
            ]
        return geometric_mean(scores)


def split_site(
    series: Sequence[Series] | SeriesLike,
    context_length: int,
    horizon: int,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    windows_per_series: int = EVALUATION_WINDOWS_PER_SERIES,
    max_calibration_per_series: int | None = None,
) -> SiteSplit:
    """Calibration windows from the first `1 - holdout_fraction` of each series; up to
    `windows_per_series` forecast origins spread over the rest, each with an observed context,
    observed targets and a context that is not flat (MASE needs its naive error)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    rows = series_values(series)
    calibration, contexts, targets = [], [], []
    for values in rows:
        cut = int(values.size * (1.0 - holdout_fraction))
        calibration.append(values[:cut])
        last = values.size - horizon
        origins = np.linspace(cut, last, windows_per_series).astype(int) if last >= cut else []
        for origin in sorted(set(origins)):
            context = _left_padded(values[:origin], context_length)
            target = values[origin : origin + horizon]
            if target.size == horizon and _scorable(context, target):
                contexts.append(context)
                targets.append(target)
    if not contexts:
        raise ValueError(
            f"no held-out window: the series need at least {horizon} points after their first "
            f"{1 - holdout_fraction:.0%}, with observed readings"
        )
    return SiteSplit(
        calibration=context_windows(
            [c for c in calibration if c.size], context_length, max_calibration_per_series
        ),
        contexts=np.stack(contexts).astype(np.float32),
        targets=np.stack(targets),
    )


def _scorable(context: np.ndarray, target: np.ndarray) -> bool:
    observed = context[np.isfinite(context)]
    return np.isfinite(target).any() and observed.size > 1 and np.ptp(observed) > 0


def _left_padded(values: np.ndarray, length: int) -> np.ndarray:
    out = np.full(length, np.nan)
    tail = values[-length:]
    out[length - tail.size :] = tail
    return out
