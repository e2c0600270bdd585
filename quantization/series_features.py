"""What kind of series a window is: trend, seasonality, period, noise and gaps.

Strengths follow Wang, Smith and Hyndman (2006) as in Hyndman and Athanasopoulos, FPP3 4.3:
the window (gaps linearly interpolated) is split into trend T, seasonal S and remainder R by a
classical decomposition at the dominant period, then

    trend strength    = max(0, 1 - var(R) / var(T + R))
    seasonal strength = max(0, 1 - var(R) / var(S + R))

The dominant period is the lag of the highest peak of the autocorrelation (computed with the
FFT) of the linearly detrended window, among lags that fit four times in the window (fewer
cycles let the seasonal means soak up noise and wander); a peak under `MIN_PEAK_ACF` is not a
period (0), and the window is then split into trend and remainder only.
Noise is the remainder's share of the spread, std(R) / std(window). Gaps are the share of
missing points after the first reading (left padding is a short history, not a gap).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Fewer observed points than this say nothing reliable about trend or seasonality.
MIN_POINTS = 16
MIN_PERIOD = 2
MIN_CYCLES = 4
MIN_PEAK_ACF = 0.2  # white noise over 512 points stays under 0.1 (2 / sqrt(n)) at 95 %


@dataclass(frozen=True)
class SeriesFeatures:
    trend_strength: float  # [0, 1], NaN when too short
    seasonal_strength: float  # [0, 1], NaN when too short
    period: int  # points; 0 = no seasonality found
    noise: float  # std of the remainder / std of the window, NaN when too short
    gap_share: float  # [0, 1]


@dataclass(frozen=True)
class FeatureBins:
    """A feature cut into labelled bins: value <= edge falls in that bin (the first that fits)."""

    name: str
    value: Callable[[SeriesFeatures], float]
    bins: tuple[tuple[str, float], ...]
    none_label: str | None = None  # label for value 0 (period: none found), if separate

    @property
    def labels(self) -> list[str]:
        return ([self.none_label] if self.none_label else []) + [label for label, _ in self.bins]

    def label(self, features: SeriesFeatures) -> str | None:
        """The bin of `features`, or None when the feature could not be measured."""
        value = self.value(features)
        if math.isnan(value):
            return None
        if self.none_label and value == 0:
            return self.none_label
        return next(label for label, edge in self.bins if value <= edge)


FEATURES: tuple[FeatureBins, ...] = (
    FeatureBins(
        "trend",
        lambda f: f.trend_strength,
        (("weak", 0.3), ("moderate", 0.7), ("strong", math.inf)),
    ),
    FeatureBins(
        "seasonality",
        lambda f: f.seasonal_strength,
        (("weak", 0.3), ("moderate", 0.7), ("strong", math.inf)),
    ),
    FeatureBins(
        "period",
        lambda f: float(f.period) if f.seasonal_strength >= 0.3 else 0.0,
        (("<=16", 16), ("17-64", 64), (">64", math.inf)),
        none_label="none",
    ),
    FeatureBins(
        "noise",
        lambda f: f.noise,
        (("low", 0.2), ("mid", 0.5), ("high", math.inf)),
    ),
    FeatureBins(
        "gaps",
        lambda f: f.gap_share,
        (("some", 0.1), ("many", math.inf)),
        none_label="none",
    ),
)


def series_features(window: np.ndarray) -> SeriesFeatures:
    """Features of one window (1-D, NaN = missing)."""
    values = np.asarray(window, dtype=np.float64)
    observed = np.flatnonzero(np.isfinite(values))
    if observed.size == 0:
        raise ValueError("a window with no observed value has no features")
    span = values[observed[0] :]
    gap_share = float(np.isnan(span).mean())
    if observed.size < MIN_POINTS or np.ptp(values[observed]) == 0:
        nan = float("nan")
        return SeriesFeatures(nan, nan, 0, nan, gap_share)

    t = np.arange(span.size)
    filled = np.interp(t, observed - observed[0], values[observed])
    period = dominant_period(filled)
    trend, seasonal, remainder, trimmed = decompose(filled, period)
    return SeriesFeatures(
        trend_strength=_strength(trend, remainder),
        seasonal_strength=_strength(seasonal, remainder) if period else 0.0,
        period=period,
        noise=float(remainder.std() / trimmed.std()) if trimmed.std() > 0 else 0.0,
        gap_share=gap_share,
    )


def dominant_period(values: np.ndarray) -> int:
    """Lag of the highest autocorrelation peak over `MIN_PEAK_ACF`, with `MIN_CYCLES` cycles in
    the window; 0 if there is none."""
    n = values.size
    t = np.arange(n)
    detrended = values - np.polyval(np.polyfit(t, values, 1), t)
    if not detrended.any():
        return 0
    spectrum = np.fft.rfft(detrended, 2 * n)  # zero-padded: a linear, not circular, ACF
    acf = np.fft.irfft(np.abs(spectrum) ** 2)[: n // 2 + 1]
    acf = acf / acf[0]
    lags = np.arange(MIN_PERIOD, n // MIN_CYCLES + 1)
    peaks = lags[
        (acf[lags] > acf[lags - 1]) & (acf[lags] >= acf[lags + 1]) & (acf[lags] >= MIN_PEAK_ACF)
    ]
    return int(peaks[np.argmax(acf[peaks])]) if peaks.size else 0


def decompose(
    values: np.ndarray, period: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classical additive decomposition: (trend, seasonal, remainder, values), all over the
    points where the centred moving average is defined. Without a period the trend is a moving
    average over a tenth of the window and there is no seasonal part."""
    width = period if period else max(3, values.size // 10)
    trend = np.convolve(values, np.ones(width) / width, mode="valid")
    offset = (width - 1) // 2
    trimmed = values[offset : offset + trend.size]
    detrended = trimmed - trend
    seasonal = np.zeros_like(trimmed)
    if period:
        phase = (np.arange(trimmed.size) + offset) % period
        means = np.bincount(phase, weights=detrended, minlength=period) / np.maximum(
            np.bincount(phase, minlength=period), 1
        )
        seasonal = (means - means.mean())[phase]
    return trend, seasonal, detrended - seasonal, trimmed


def _strength(component: np.ndarray, remainder: np.ndarray) -> float:
    total = np.var(component + remainder)
    return float(max(0.0, 1.0 - np.var(remainder) / total)) if total > 0 else 0.0
