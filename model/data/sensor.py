"""Sensor-like series: what building, plant and environment sensors actually report.

A reading every `interval_s` seconds (1 min .. 1 h). The signal is a daily cycle (two
harmonics, so it can be skewed) that may weaken or shift at weekends, plus slow drift (linear and
random walk), level steps (recalibration, a setpoint change) and noise. The instrument then
adds spikes, saturation at its range limits, stuck-at runs and quantisation to its resolution,
in that order: a range limit clips spikes too, and the ADC rounds whatever it is given.
Amplitudes are relative; the mixture rescales to raw units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from moecast.model.data._validation import require_fraction, require_length

DAY_S = 86_400.0
WEEK_DAYS = 7
INTERVALS_S: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class SensorSpec:
    interval_s: float
    start_s: float  # time of the first reading; t = 0 is Monday 00:00
    daily_amplitude: float
    daily_peak_hour: float
    daily_second_harmonic: float  # relative amplitude of the 12 h harmonic
    weekend_damping: float  # share of the daily cycle lost on Saturday and Sunday
    weekend_offset: float  # level change on Saturday and Sunday
    noise_std: float
    drift_per_day: float
    walk_std_per_day: float  # random-walk drift: its standard deviation after one day
    step_rate: float  # level steps per reading
    step_std: float
    spike_rate: float  # spikes per reading
    spike_scale: float
    clip_low_fraction: float  # share of readings pinned at the lower range limit
    clip_high_fraction: float
    stuck_rate: float  # stuck-at runs starting per reading
    max_stuck: int  # longest stuck-at run, in readings
    resolution: float  # quantisation step; 0 = none

    def __post_init__(self) -> None:
        for name in ("weekend_damping", "step_rate", "spike_rate", "stuck_rate"):
            require_fraction(name, getattr(self, name), upper_inclusive=True)
        require_fraction("clip_low_fraction", self.clip_low_fraction)
        require_fraction("clip_high_fraction", self.clip_high_fraction)
        if self.interval_s <= 0 or self.resolution < 0 or self.max_stuck < 1:
            raise ValueError("interval_s must be > 0, resolution >= 0 and max_stuck >= 1")


def draw_sensor_spec(rng: np.random.Generator) -> SensorSpec:
    amplitude = float(rng.uniform(0.2, 2.0))
    return SensorSpec(
        interval_s=float(rng.choice(INTERVALS_S)),
        start_s=float(rng.uniform(0.0, WEEK_DAYS * DAY_S)),
        daily_amplitude=amplitude,
        daily_peak_hour=float(rng.uniform(0.0, 24.0)),
        daily_second_harmonic=float(rng.uniform(0.0, 0.5)),
        weekend_damping=_maybe(rng, 0.5, lambda: rng.uniform(0.3, 1.0)),
        weekend_offset=_maybe(rng, 0.4, lambda: rng.normal(0.0, 0.5 * amplitude)),
        noise_std=float(amplitude * rng.uniform(0.01, 0.3)),
        drift_per_day=_maybe(rng, 0.5, lambda: rng.normal(0.0, 0.05 * amplitude)),
        walk_std_per_day=_maybe(rng, 0.5, lambda: rng.uniform(0.0, 0.3 * amplitude)),
        step_rate=_maybe(rng, 0.4, lambda: 10 ** rng.uniform(-3.5, -2.5)),
        step_std=float(amplitude * rng.uniform(0.2, 1.5)),
        spike_rate=_maybe(rng, 0.5, lambda: 10 ** rng.uniform(-3.5, -2.0)),
        spike_scale=float(amplitude * rng.uniform(1.0, 5.0)),
        clip_low_fraction=_maybe(rng, 0.15, lambda: rng.uniform(0.01, 0.15)),
        clip_high_fraction=_maybe(rng, 0.15, lambda: rng.uniform(0.01, 0.15)),
        stuck_rate=_maybe(rng, 0.3, lambda: 10 ** rng.uniform(-3.5, -2.5)),
        max_stuck=int(rng.integers(5, 100)),
        resolution=_maybe(rng, 0.5, lambda: amplitude * 10 ** rng.uniform(-2.5, -0.7)),
    )


def render_sensor(spec: SensorSpec, rng: np.random.Generator, length: int) -> np.ndarray:
    require_length(length)
    t = spec.start_s + spec.interval_s * np.arange(length)
    values = _calendar_signal(spec, t) + _drift(spec, rng, t) + _level_steps(spec, rng, length)
    values = values + rng.normal(0.0, spec.noise_std, size=length)
    values = _add_spikes(spec, rng, values)
    values = _saturate(values, spec.clip_low_fraction, spec.clip_high_fraction)
    values = _stick(spec, rng, values)
    if spec.resolution > 0:
        values = np.round(values / spec.resolution) * spec.resolution
    return values.astype(np.float32)


def sensor_like(rng: np.random.Generator, length: int) -> np.ndarray:
    """A sensor-like series with freshly drawn parameters."""
    return render_sensor(draw_sensor_spec(rng), rng, length)


def _maybe(rng: np.random.Generator, probability: float, draw: Callable[[], float]) -> float:
    """draw() with the given probability, else 0 (the effect is absent)."""
    return float(draw()) if rng.random() < probability else 0.0


def _calendar_signal(spec: SensorSpec, t: np.ndarray) -> np.ndarray:
    day_phase = 2.0 * np.pi * (t / DAY_S - spec.daily_peak_hour / 24.0)
    daily = np.cos(day_phase) + spec.daily_second_harmonic * np.cos(2.0 * day_phase)
    weekend = (np.floor(t / DAY_S) % WEEK_DAYS) >= 5
    damping = 1.0 - spec.weekend_damping * weekend
    return spec.daily_amplitude * daily * damping + spec.weekend_offset * weekend


def _drift(spec: SensorSpec, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    days = (t - t[0]) / DAY_S
    walk_step_std = spec.walk_std_per_day * np.sqrt(spec.interval_s / DAY_S)
    walk = np.cumsum(rng.normal(0.0, walk_step_std, size=t.size))
    return spec.drift_per_day * days + walk


def _level_steps(spec: SensorSpec, rng: np.random.Generator, length: int) -> np.ndarray:
    at_step = rng.random(length) < spec.step_rate
    return np.cumsum(np.where(at_step, rng.normal(0.0, spec.step_std, size=length), 0.0))


def _add_spikes(spec: SensorSpec, rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    at_spike = rng.random(values.size) < spec.spike_rate
    sizes = spec.spike_scale * (1.0 + rng.exponential(size=values.size))
    signs = rng.choice([-1.0, 1.0], size=values.size)
    return values + np.where(at_spike, signs * sizes, 0.0)


def _saturate(values: np.ndarray, low_fraction: float, high_fraction: float) -> np.ndarray:
    # The range limits are placed so that the requested shares of readings hit them.
    low = np.quantile(values, low_fraction) if low_fraction > 0 else -np.inf
    high = np.quantile(values, 1.0 - high_fraction) if high_fraction > 0 else np.inf
    return np.clip(values, low, high)


def _stick(spec: SensorSpec, rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    starts = np.flatnonzero(rng.random(values.size) < spec.stuck_rate)
    runs = rng.integers(1, spec.max_stuck + 1, size=starts.size)
    out = values.copy()
    for start, run in zip(starts.tolist(), runs.tolist(), strict=True):
        out[start : start + run] = out[start]
    return out
