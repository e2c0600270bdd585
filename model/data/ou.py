"""Ornstein-Uhlenbeck series: noisy quantities pulled back towards a mean.

Many sensors read a quantity that wanders and is pulled back: a room temperature held by a
thermostat, a tank level under a controller, a line voltage, a pressure. The OU process is the
continuous-time AR(1) model of that: dx = theta (mu - x) dt + sigma dW. Its reversion rate
theta runs from slow (close to a random walk, where persistence forecasts best) to fast (close
to white noise around the mean, where the mean forecasts best); the mean itself is constant,
switches between a few levels at random times (a setpoint change, a machine changing mode) or
follows a slow sine.

Steps are the exact discretisation with unit time step,
  x_{t+1} = mu_t + (x_t - mu_t) e^{-theta} + sigma sqrt((1 - e^{-2 theta}) / (2 theta)) eps_t,
so any theta is exact, and the series starts in the stationary law around mu_0. Amplitudes are
relative; the mixture rescales to raw units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moecast.model.data._validation import require_length

try:  # scipy comes with the bench extras only; the Python recursion below gives the same values
    from scipy.signal import lfilter
except ImportError:  # pragma: no cover - depends on the environment
    lfilter = None

LOG10_THETA_RANGE = (-3.0, 0.3)  # reversion time 1/theta from ~1000 steps to half a step
LOG10_SINE_PERIOD_RANGE = (2.0, 3.3)  # 100 .. 2000 points: slow against most reversion times


@dataclass(frozen=True)
class ConstantMean:
    level: float

    def render(self, length: int) -> np.ndarray:
        return np.full(length, self.level)


@dataclass(frozen=True)
class SwitchingMean:
    breakpoints: tuple[float, ...]  # fractions of the series in (0, 1), increasing
    levels: tuple[float, ...]  # one per segment: one more than breakpoints

    def render(self, length: int) -> np.ndarray:
        u = np.arange(length) / length
        segment = np.searchsorted(np.array(self.breakpoints), u, side="right")
        return np.array(self.levels)[segment]


@dataclass(frozen=True)
class SineMean:
    amplitude: float
    period: float  # in points
    phase: float  # radians

    def render(self, length: int) -> np.ndarray:
        return self.amplitude * np.sin(2.0 * np.pi * np.arange(length) / self.period + self.phase)


@dataclass(frozen=True)
class OUSpec:
    theta: float  # reversion rate per step
    sigma: float  # diffusion: the stationary standard deviation is sigma / sqrt(2 theta)
    mean: ConstantMean | SwitchingMean | SineMean

    def __post_init__(self) -> None:
        if not (self.theta > 0 and self.sigma >= 0):
            raise ValueError(f"theta must be > 0 and sigma >= 0, got {self.theta}, {self.sigma}")

    @property
    def stationary_std(self) -> float:
        return self.sigma / np.sqrt(2.0 * self.theta)


def draw_ou_spec(rng: np.random.Generator) -> OUSpec:
    theta = float(10 ** rng.uniform(*LOG10_THETA_RANGE))
    sigma = float(10 ** rng.uniform(-1.0, 0.5))
    # Mean changes are sized against the process's own spread, so they show at any theta.
    spread = sigma / np.sqrt(2.0 * theta)
    kind = rng.random()
    if kind < 0.4:
        mean: ConstantMean | SwitchingMean | SineMean = ConstantMean(0.0)
    elif kind < 0.75:
        mean = _draw_switching_mean(rng, spread)
    else:
        mean = SineMean(
            amplitude=float(spread * rng.uniform(0.5, 3.0)),
            period=float(10 ** rng.uniform(*LOG10_SINE_PERIOD_RANGE)),
            phase=float(rng.uniform(0.0, 2.0 * np.pi)),
        )
    return OUSpec(theta=theta, sigma=sigma, mean=mean)


def render_ou(spec: OUSpec, rng: np.random.Generator, length: int) -> np.ndarray:
    require_length(length)
    mu = spec.mean.render(length)
    decay = np.exp(-spec.theta)
    step_std = spec.sigma * np.sqrt(-np.expm1(-2.0 * spec.theta) / (2.0 * spec.theta))
    eps = rng.standard_normal(length)
    # x_t = decay x_{t-1} + (1 - decay) mu_{t-1} + step_std eps_t: an AR(1) filter whose first
    # shock is the stationary start x_0.
    shocks = np.empty(length)
    shocks[0] = mu[0] + spec.stationary_std * eps[0]
    shocks[1:] = (1.0 - decay) * mu[:-1] + step_std * eps[1:]
    return ar1_filter(shocks, decay).astype(np.float32)


def ou_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """An Ornstein-Uhlenbeck series with freshly drawn parameters."""
    return render_ou(draw_ou_spec(rng), rng, length)


def ar1_filter(shocks: np.ndarray, coefficient: float) -> np.ndarray:
    """y_t = shocks_t + coefficient y_{t-1}, starting from y_{-1} = 0."""
    shocks = np.asarray(shocks, dtype=np.float64)
    if lfilter is not None:
        return lfilter([1.0], [1.0, -coefficient], shocks)
    # A recursion has no vectorised numpy form; on Python floats ~1k steps cost well under 1 ms.
    out: list[float] = []
    previous = 0.0
    for shock in shocks.tolist():
        previous = shock + coefficient * previous
        out.append(previous)
    return np.array(out)


def _draw_switching_mean(rng: np.random.Generator, spread: float) -> SwitchingMean:
    n_levels = int(rng.integers(2, 5))
    levels = rng.normal(0.0, spread * rng.uniform(1.0, 4.0), size=n_levels)
    n_switches = int(rng.integers(1, 7))
    breakpoints = np.sort(rng.uniform(0.05, 0.95, size=n_switches))
    # Each switch moves to a different level: a repeat would be no switch at all.
    state = [int(rng.integers(n_levels))]
    for shift in rng.integers(1, n_levels, size=n_switches).tolist():
        state.append((state[-1] + shift) % n_levels)
    return SwitchingMean(tuple(breakpoints.tolist()), tuple(levels[state].tolist()))
