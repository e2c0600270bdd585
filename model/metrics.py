"""Forecast error metrics, NaN-aware: missing targets are left out of every average."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mse(forecast: np.ndarray, target: np.ndarray) -> float:
    return float(np.nanmean(np.square(forecast - target)))


def mae(forecast: np.ndarray, target: np.ndarray) -> float:
    return float(np.nanmean(np.abs(forecast - target)))


def seasonal_scale(context: np.ndarray, period: int = 1) -> float:
    """MASE's denominator: the mean absolute `period`-step difference of the context (NaN
    pairs skipped). 0 or NaN when the context is flat or too short: the caller must skip."""
    context = np.asarray(context, dtype=np.float64)
    if context.size <= period:
        return float("nan")
    with np.errstate(all="ignore"):
        return float(np.nanmean(np.abs(context[period:] - context[:-period])))


def mase(forecast: np.ndarray, target: np.ndarray, context: np.ndarray, period: int = 1) -> float:
    """Mean absolute scaled error of one forecast against the naive (seasonal) in-sample error."""
    return mae(forecast, target) / seasonal_scale(context, period)


def weighted_quantile_loss(
    quantiles: np.ndarray, target: np.ndarray, levels: Sequence[float]
) -> float:
    """Chronos' WQL, a CRPS proxy: mean over levels of 2 * sum(pinball) / sum(|target|).

    `quantiles` is `[..., n_levels]` and `target` `[...]`.
    """
    levels_arr = np.asarray(levels, dtype=np.float64)
    observed = np.isfinite(target)
    y = np.where(observed, target, 0.0)[..., None]
    diff = y - quantiles
    pinball = np.maximum(levels_arr * diff, (levels_arr - 1.0) * diff) * observed[..., None]
    per_level = 2.0 * pinball.reshape(-1, levels_arr.size).sum(0) / np.abs(y).sum()
    return float(per_level.mean())


def geometric_mean(values: Sequence[float], floor: float = 0.0) -> float:
    """Geometric mean of the finite values, each raised to at least `floor`.

    With `floor > 0` an exact score (0) counts as `floor` instead of being left out: leaving
    it out would drop a model's best series from its own mean. Without a floor, values <= 0
    are left out (their logarithm is undefined).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    arr = np.maximum(arr, floor) if floor > 0 else arr[arr > 0]
    return float(np.exp(np.log(arr).mean())) if arr.size else float("nan")
