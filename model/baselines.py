"""Statistical baselines behind the Forecaster's interface: `predict(series, horizon) -> Forecast`.

Each wraps a statsforecast model, fitted per series on the same context the foundation model
sees. statsforecast needs complete series, so missing readings are filled by linear
interpolation first (what an edge user without moecast would do). Quantiles come from the
models' prediction intervals: level L gives the (1-L)/2 and (1+L)/2 quantiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from moecast.model.config import DEFAULT_QUANTILES
from moecast.model.forecast import Forecast, as_batch


def fill_gaps(series: np.ndarray) -> np.ndarray:
    """Linear interpolation inside, nearest value at the ends; all-NaN stays all-NaN."""
    observed = np.isfinite(series)
    if observed.all() or not observed.any():
        return series
    index = np.arange(series.size)
    return np.interp(index, index[observed], series[observed])


class StatsBaseline:
    """A statsforecast model as a probabilistic forecaster over the last `context` points."""

    def __init__(
        self,
        name: str,
        make_model: Callable[[int], object],
        season_length: int = 1,
        context: int = 512,
        levels: Sequence[float] = DEFAULT_QUANTILES,
    ) -> None:
        self.name, self.make_model = name, make_model
        self.season_length, self.context = season_length, context
        self.levels = tuple(levels)
        # Symmetric quantile pairs <-> interval levels (0.1 & 0.9 <-> 80 %).
        self.intervals = sorted({round(abs(1 - 2 * q) * 100) for q in self.levels} - {0})

    def predict(self, series, horizon: int) -> Forecast:
        rows = [fill_gaps(row[-self.context :]) for row in as_batch(series)]
        out = np.full((len(rows), horizon, len(self.levels)), np.nan)
        for i, row in enumerate(rows):
            if np.isfinite(row).all():
                out[i] = self._one(row, horizon)
        return Forecast(quantiles=out, levels=self.levels, steps=(horizon,))

    def _one(self, y: np.ndarray, horizon: int) -> np.ndarray:
        model = self.make_model(self.season_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = model.forecast(y=y.astype(np.float64), h=horizon, level=self.intervals)
        columns = []
        for q in self.levels:
            level = round(abs(1 - 2 * q) * 100)
            key = "mean" if level == 0 else f"{'lo' if q < 0.5 else 'hi'}-{level}"
            columns.append(np.asarray(fc[key], dtype=np.float64))
        # Some models return intervals that cross when they degenerate; keep quantiles ordered.
        return np.sort(np.stack(columns, axis=-1), axis=-1)


def statsforecast_baselines(season_length: int, context: int = 512) -> list[StatsBaseline]:
    """Naive, SeasonalNaive, AutoETS and AutoTheta (statsforecast is the `bench` extra)."""
    from statsforecast.models import AutoETS, AutoTheta, Naive, SeasonalNaive

    # ETS and Theta are not defined for seasons longer than the data can identify; beyond 24
    # statsforecast's ETS falls back to non-seasonal fits anyway.
    ets_season = season_length if season_length <= 24 else 1
    return [
        StatsBaseline("Naive", lambda m: Naive(), 1, context),
        StatsBaseline(
            "SeasonalNaive", lambda m: SeasonalNaive(season_length=m), season_length, context
        ),
        StatsBaseline("AutoETS", lambda m: AutoETS(season_length=m), ets_season, context),
        StatsBaseline("AutoTheta", lambda m: AutoTheta(season_length=m), ets_season, context),
    ]
