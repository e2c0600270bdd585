"""Trend + ARMA + seasonality series, the TimesFM synthetic recipe (Das et al., 2024).

A series is trend + sum of sines + ARMA(p <= 2, q <= 2) noise. The trend is piecewise linear
(0 to 3 breakpoints) or exponential. AR coefficients are built from roots inside the unit
circle, so the noise is stationary. Amplitudes are relative: the model z-scores its input, and
the mixture rescales to raw units afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moecast.model.data._validation import require_length
from moecast.model.data.kernel_synth import PERIODS

MAX_AR_ROOT = 0.95  # keeps AR noise stationary but allows strongly persistent noise
BURN_IN = 100  # ARMA steps discarded so the kept noise starts in its stationary regime


@dataclass(frozen=True)
class PiecewiseLinearTrend:
    breakpoints: tuple[float, ...]  # fractions of the series in (0, 1), increasing
    slopes: tuple[float, ...]  # change per series length; one more than breakpoints

    def render(self, length: int) -> np.ndarray:
        u = np.arange(length) / length
        edges = np.array([0.0, *self.breakpoints])
        # The value is the integral of the slope, so segments join without jumps.
        spans = np.clip(u[:, None] - edges[None, :], 0.0, None)
        increments = np.diff(np.array([0.0, *self.slopes]))
        return spans @ increments


@dataclass(frozen=True)
class ExponentialTrend:
    scale: float
    rate: float  # e-folds per series length

    def render(self, length: int) -> np.ndarray:
        u = np.arange(length) / length
        return self.scale * np.expm1(self.rate * u)


@dataclass(frozen=True)
class TrendSeasonalSpec:
    trend: PiecewiseLinearTrend | ExponentialTrend
    periods: tuple[float, ...]  # in points
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]  # radians
    ar: tuple[float, ...]  # y_t = sum_i ar[i] y_{t-1-i} + e_t + sum_j ma[j] e_{t-1-j}
    ma: tuple[float, ...]
    noise_std: float  # standard deviation of the ARMA component


def draw_trend_seasonal_spec(rng: np.random.Generator, length: int) -> TrendSeasonalSpec:
    n_sines = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.4, 0.3, 0.2]))
    return TrendSeasonalSpec(
        trend=_draw_trend(rng),
        periods=tuple(_draw_period(rng, length) for _ in range(n_sines)),
        amplitudes=tuple(rng.uniform(0.3, 2.0, size=n_sines).tolist()),
        phases=tuple(rng.uniform(0.0, 2.0 * np.pi, size=n_sines).tolist()),
        ar=stable_ar_coefficients(rng, int(rng.integers(0, 3))),
        ma=tuple(rng.uniform(-0.9, 0.9, size=int(rng.integers(0, 3))).tolist()),
        noise_std=float(rng.uniform(0.05, 1.0)),
    )


def render_trend_seasonal(
    spec: TrendSeasonalSpec, rng: np.random.Generator, length: int
) -> np.ndarray:
    require_length(length)
    t = np.arange(length)
    values = spec.trend.render(length)
    for period, amplitude, phase in zip(spec.periods, spec.amplitudes, spec.phases, strict=True):
        values = values + amplitude * np.sin(2.0 * np.pi * t / period + phase)
    values = values + spec.noise_std * _unit_arma(rng, spec.ar, spec.ma, length)
    return values.astype(np.float32)


def trend_seasonal(rng: np.random.Generator, length: int) -> np.ndarray:
    """A trend + seasonality + ARMA series with freshly drawn parameters."""
    return render_trend_seasonal(draw_trend_seasonal_spec(rng, length), rng, length)


def stable_ar_coefficients(rng: np.random.Generator, order: int) -> tuple[float, ...]:
    """AR(order <= 2) coefficients whose characteristic roots lie inside |z| < MAX_AR_ROOT."""
    if order == 0:
        return ()
    if order == 1:
        return (float(rng.uniform(-MAX_AR_ROOT, MAX_AR_ROOT)),)
    if rng.random() < 0.5:  # complex pair r e^{+-i theta}: quasi-periodic noise
        radius = rng.uniform(0.3, MAX_AR_ROOT)
        angle = rng.uniform(0.0, np.pi)
        return (float(2.0 * radius * np.cos(angle)), float(-(radius**2)))
    r1, r2 = rng.uniform(-MAX_AR_ROOT, MAX_AR_ROOT, size=2)
    return (float(r1 + r2), float(-r1 * r2))


def _draw_trend(rng: np.random.Generator) -> PiecewiseLinearTrend | ExponentialTrend:
    if rng.random() < 0.25:
        return ExponentialTrend(scale=float(rng.uniform(0.2, 1.5)), rate=float(rng.uniform(-3, 3)))
    n_breaks = int(rng.integers(0, 4))
    breakpoints = np.sort(rng.uniform(0.1, 0.9, size=n_breaks))
    slopes = rng.normal(0.0, 1.5, size=n_breaks + 1)
    return PiecewiseLinearTrend(tuple(breakpoints.tolist()), tuple(slopes.tolist()))


def _draw_period(rng: np.random.Generator, length: int) -> float:
    # Mostly the calendar periods of common sampling rates, sometimes an arbitrary one.
    if rng.random() < 0.7:
        return float(rng.choice(PERIODS))
    return float(rng.uniform(2.5, max(3.0, length / 2)))


def _unit_arma(
    rng: np.random.Generator, ar: tuple[float, ...], ma: tuple[float, ...], length: int
) -> np.ndarray:
    """ARMA noise scaled to unit sample standard deviation (zeros if it is constant)."""
    innovations = rng.standard_normal(length + BURN_IN + len(ma))
    shocks = np.convolve(innovations, np.array([1.0, *ma]), mode="valid")
    values = _ar_filter(shocks, ar)[BURN_IN:]
    std = values.std()
    return values / std if std > 0 else np.zeros(length)


def _ar_filter(shocks: np.ndarray, ar: tuple[float, ...]) -> np.ndarray:
    """y_t = shocks_t + ar[0] y_{t-1} + ar[1] y_{t-2}, for order <= 2."""
    if not ar:
        return shocks
    a1, a2 = (*ar, 0.0)[:2]
    # A recursion has no vectorised numpy form; on Python floats ~1k steps cost well under 1 ms.
    out: list[float] = []
    previous, before_previous = 0.0, 0.0
    for shock in shocks.tolist():
        current = shock + a1 * previous + a2 * before_previous
        out.append(current)
        previous, before_previous = current, previous
    return np.array(out)
