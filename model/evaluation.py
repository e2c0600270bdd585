"""The long-horizon zero-shot protocol of Time-MoE (and Informer, Autoformer before it).

ETTh1/ETTh2/ETTm1/ETTm2 split 12/4/4 months (30-day months), Weather 70/10/20; every channel is
a univariate series, z-scored with statistics of the train split; the test windows start at
every `stride`-th point of the test split, each with the `context` points before it (which may
reach back into validation). Errors are MSE and MAE on that normalised scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from moecast.model.forecast import Forecast
from moecast.model.metrics import mae, mse

LONG_HORIZON_DATASETS: dict[str, str] = {
    "ETTh1": "ett/ETTh1.csv",
    "ETTh2": "ett/ETTh2.csv",
    "ETTm1": "ett/ETTm1.csv.gz",
    "ETTm2": "ett/ETTm2.csv.gz",
    "Weather": "weather/weather.csv.gz",
}
LONG_HORIZONS = (96, 192, 336, 720)
# Time-MoE base (Shi et al., ICLR 2025, Table 3): zero-shot MSE averaged over the 4 horizons.
TIME_MOE_BASE_MSE = {
    "ETTh1": 0.400,
    "ETTh2": 0.366,
    "ETTm1": 0.394,
    "ETTm2": 0.317,
    "Weather": 0.265,
}
# Tiny Time Mixers (granite-timeseries-ttm-r2, context 512): zero-shot MSE averaged over the same
# 4 horizons, as published in IBM's granite-tsfm full_benchmarking results
# (combined_avg_results-granite-r2.csv).
TTM_R2_MSE = {
    "ETTh1": 0.407,
    "ETTh2": 0.356,
    "ETTm1": 0.392,
    "ETTm2": 0.288,
    "Weather": 0.230,
}


@dataclass(frozen=True)
class Split:
    """`test` is the test split preceded by `context` points; both normalised, [time, channel]."""

    name: str
    train: np.ndarray
    test: np.ndarray
    context: int


def split(name: str, data_root: Path, context: int = 512) -> Split:
    frame = pd.read_csv(data_root / LONG_HORIZON_DATASETS[name])
    values = frame.drop(columns=frame.columns[0]).to_numpy(dtype=np.float64)
    # Weather's -9999 sentinels are in the standard benchmark file too; every published number
    # keeps them. We treat them as missing readings (they are not measurements).
    values[values == -9999.0] = np.nan
    n = len(values)
    if name.startswith("ETTh"):
        train_end, test_start, test_end = 12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24
    elif name.startswith("ETTm"):
        train_end, test_start, test_end = 12 * 30 * 96, 16 * 30 * 96, 20 * 30 * 96
    else:
        train_end, test_start, test_end = int(n * 0.7), n - int(n * 0.2), n
    train = values[:train_end]
    mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    normalised = (values - mean) / np.where(std > 0, std, 1.0)
    return Split(name, normalised[:train_end], normalised[test_start - context : test_end], context)


def windows(split: Split, horizon: int, stride: int) -> Iterator[tuple[int, int]]:
    """(start, channel) of each test window: context at [start, start+context), then horizon."""
    last = len(split.test) - split.context - horizon
    for start in range(0, last + 1, stride):
        for channel in range(split.test.shape[1]):
            yield start, channel


class Predictor(Protocol):
    """What `evaluate` needs: the Forecaster, or a baseline with the same `predict`."""

    def predict(self, series: np.ndarray, horizon: int) -> Forecast: ...


def evaluate(
    forecaster: Predictor, split: Split, horizon: int, stride: int, batch: int = 512
) -> dict[str, float]:
    """MSE and MAE of the median forecast over every (stride-th) test window and channel."""
    todo = list(windows(split, horizon, stride))
    errors_sq, errors_abs, count = 0.0, 0.0, 0
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        contexts = np.stack([split.test[s : s + split.context, c] for s, c in chunk])
        targets = np.stack(
            [split.test[s + split.context : s + split.context + horizon, c] for s, c in chunk]
        )
        median = forecaster.predict(contexts, horizon).median
        observed = np.isfinite(targets) & np.isfinite(median)
        errors_sq += mse(median[observed], targets[observed]) * observed.sum()
        errors_abs += mae(median[observed], targets[observed]) * observed.sum()
        count += int(observed.sum())
    return {"mse": errors_sq / count, "mae": errors_abs / count, "windows": len(todo)}
