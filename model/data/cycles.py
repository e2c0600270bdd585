"""Repeated daily profiles: solar power, air temperature, loads with business hours.

Real sensors with a strong daily cycle repeat one profile day after day: irradiance and solar
power are zero at night and a bell by day, an office's power or a call centre's volume is low
at night and a plateau in business hours, household load and traffic peak in the morning and
evening, temperature follows a smooth skewed wave. Seasonal naive is hard to beat there, and
the other families (sums of sines, GP kernels) rarely make such non-sinusoidal shapes, so this
family makes them on purpose.

One period's shape is repeated with what varies from day to day: an amplitude multiplier per
cycle (cloudy days; from identical cycles to strongly varying, i.i.d. or persistent), an
optional weekly pattern (weekends damped or offset), a small phase jitter, slow level drift
and additive white or AR(1) noise from nearly none (seasonal naive is nearly perfect) to
noisy. Shapes that rest on a floor (solar) stay exactly on it at night. Amplitudes are
relative; the mixture rescales to raw units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moecast.model.data._validation import require_fraction, require_length
from moecast.model.data.ou import ar1_filter

# Points per day of hourly, 30-, 15-, 10-minute, ~8.6-minute and 5-minute readings. The context
# is 512 points, so a period of 288 shows under two cycles: it stays, but rarely.
PERIODS: tuple[int, ...] = (24, 48, 96, 144, 168, 288)
PERIOD_WEIGHTS: tuple[float, ...] = (0.3, 0.25, 0.2, 0.1, 0.1, 0.05)
OTHER_PERIOD_PROBABILITY = 0.1  # any period in OTHER_PERIOD_RANGE instead
OTHER_PERIOD_RANGE = (12, 192)
WEEK = 7
WEEKEND = (5, 6)  # cycle indices in the week, 0 = Monday
# A weekly pattern is learnable only when a week fits in the context with room to spare.
MAX_WEEKLY_PERIOD = 48


@dataclass(frozen=True)
class FourierProfile:
    """A smooth wave: harmonics 1 .. K of the period with decaying amplitudes (temperature)."""

    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]  # radians

    floored = False
    quiet_at_midnight = False

    def render(self, u: np.ndarray) -> np.ndarray:
        k = np.arange(1, len(self.amplitudes) + 1)
        angles = 2.0 * np.pi * u[:, None] * k + np.array(self.phases)
        return np.cos(angles) @ np.array(self.amplitudes)


@dataclass(frozen=True)
class SolarProfile:
    """Zero at night, sin^p of the time since sunrise by day (p = 1: a half sine)."""

    sunrise: float  # phase in the period, in [0, 1)
    day_fraction: float
    exponent: float

    floored = True
    quiet_at_midnight = True

    def render(self, u: np.ndarray) -> np.ndarray:
        x = ((u - self.sunrise) % 1.0) / self.day_fraction
        return np.where(x < 1.0, np.sin(np.pi * np.minimum(x, 1.0)) ** self.exponent, 0.0)


@dataclass(frozen=True)
class BusinessProfile:
    """Low at night, raised-cosine ramps around business hours, a flat or peaked day."""

    opening: float  # phase in the period
    open_fraction: float  # opening to closing, ramps included
    ramp_fraction: float  # each ramp's share of the period
    day_peak: float  # extra height at midday, relative to the plateau

    floored = False
    quiet_at_midnight = True

    def render(self, u: np.ndarray) -> np.ndarray:
        since_open = (u - self.opening) % 1.0
        up = np.clip(since_open / self.ramp_fraction, 0.0, 1.0)
        down = np.clip((self.open_fraction - since_open) / self.ramp_fraction, 0.0, 1.0)
        gate = 0.25 * (1.0 - np.cos(np.pi * up)) * (1.0 - np.cos(np.pi * down))
        inside = np.clip(since_open / self.open_fraction, 0.0, 1.0)
        return gate * (1.0 + self.day_peak * np.sin(np.pi * inside)) / (1.0 + self.day_peak)


@dataclass(frozen=True)
class DoublePeakProfile:
    """A morning and an evening peak over a base (household load, traffic)."""

    centres: tuple[float, float]  # phases in the period
    widths: tuple[float, float]  # standard deviations, in periods
    heights: tuple[float, float]
    midday: float  # a broad daytime bump between the peaks

    floored = False
    quiet_at_midnight = False  # an evening peak may reach past midnight

    def render(self, u: np.ndarray) -> np.ndarray:
        # Wrapped distance to each centre, so a peak near midnight continues into the next day.
        d = (u[:, None] - np.array(self.centres) + 0.5) % 1.0 - 0.5
        peaks = np.exp(-0.5 * (d / np.array(self.widths)) ** 2) @ np.array(self.heights)
        noon = (u - np.mean(self.centres) + 0.5) % 1.0 - 0.5
        return peaks + self.midday * np.exp(-0.5 * (noon / 0.15) ** 2)


Profile = FourierProfile | SolarProfile | BusinessProfile | DoublePeakProfile


@dataclass(frozen=True)
class CyclesSpec:
    period: int  # in points
    profile: Profile
    start_phase: float  # phase of the first point, in periods
    first_weekday: int  # weekday the series starts in, 0 = Monday
    amplitude: float
    cycle_log_std: float  # spread of the per-cycle log amplitude multipliers; 0 = identical
    cycle_persistence: float  # AR(1) coefficient of the log multipliers from cycle to cycle
    weekend_damping: float  # share of the cycle lost at weekends
    weekend_offset: float  # level change at weekends
    phase_jitter: float  # standard deviation of each cycle's phase shift, in periods
    drift_per_cycle: float
    walk_std_per_cycle: float  # random-walk level drift: its standard deviation after a cycle
    noise_std: float
    noise_persistence: float  # AR(1) coefficient of the noise; 0 = white
    night_noise: bool  # floored profiles: noise (clipped at the floor) shows at night too

    def __post_init__(self) -> None:
        require_fraction("weekend_damping", self.weekend_damping, upper_inclusive=True)
        require_fraction("cycle_persistence", self.cycle_persistence)
        require_fraction("noise_persistence", self.noise_persistence)
        if self.period < 2 or min(self.amplitude, self.noise_std, self.cycle_log_std) < 0:
            raise ValueError("period must be >= 2; amplitude, noise_std, cycle_log_std >= 0")


def draw_cycles_spec(rng: np.random.Generator) -> CyclesSpec:
    if rng.random() < OTHER_PERIOD_PROBABILITY:
        period = int(rng.integers(*OTHER_PERIOD_RANGE, endpoint=True))
    else:
        period = int(rng.choice(PERIODS, p=PERIOD_WEIGHTS))
    profile = _draw_profile(rng)
    amplitude = float(rng.uniform(0.2, 2.0))
    weekly = period <= MAX_WEEKLY_PERIOD and not profile.floored and rng.random() < 0.5
    # The sun keeps no weekends and solar power has no level drift: its floor is 0 W.
    drifts = not profile.floored
    return CyclesSpec(
        period=period,
        profile=profile,
        start_phase=float(rng.uniform(0.0, 1.0)),
        first_weekday=int(rng.integers(WEEK)),
        amplitude=amplitude,
        cycle_log_std=float(rng.uniform(0.02, 0.6)) if rng.random() < 0.7 else 0.0,
        cycle_persistence=float(rng.uniform(0.0, 0.9)),
        weekend_damping=float(rng.uniform(0.2, 1.0)) if weekly else 0.0,
        weekend_offset=float(rng.normal(0.0, 0.3 * amplitude)) if weekly else 0.0,
        phase_jitter=float(rng.uniform(0.0, 0.02)) if rng.random() < 0.3 else 0.0,
        drift_per_cycle=float(rng.normal(0.0, 0.02 * amplitude)) if drifts else 0.0,
        walk_std_per_cycle=float(rng.uniform(0.0, 0.05 * amplitude)) if drifts else 0.0,
        # Signal-to-noise from ~3000 (seasonal naive is all but exact) down to ~5.
        noise_std=float(amplitude * 10 ** rng.uniform(-3.5, -0.7)),
        noise_persistence=float(rng.uniform(0.3, 0.9)) if rng.random() < 0.4 else 0.0,
        night_noise=bool(rng.random() < 0.3),
    )


def render_cycles(spec: CyclesSpec, rng: np.random.Generator, length: int) -> np.ndarray:
    require_length(length)
    t = np.arange(length)
    # Phases start one cycle in, so a backward jitter never reaches before cycle 0.
    phase = 1.0 + spec.start_phase + t / spec.period
    n_cycles = int(np.ceil(phase[-1])) + 2
    cycle_pos = np.arange(n_cycles)
    if spec.phase_jitter:
        # The shift wanders linearly between cycles, so the series never jumps.
        jitter = rng.normal(0.0, spec.phase_jitter, size=n_cycles)
        phase = phase + np.interp(phase, cycle_pos, jitter)
    cycle = np.clip(np.floor(phase).astype(np.int64), 0, n_cycles - 1)
    shape = spec.profile.render(phase - cycle)

    log_scale = spec.cycle_log_std * _unit_ar1(rng, n_cycles, spec.cycle_persistence)
    # Clouds only take light away: a clear day is the solar profile's maximum.
    scale = np.exp(-np.abs(log_scale)) if spec.profile.floored else np.exp(log_scale)
    weekend = np.isin((spec.first_weekday - 1 + cycle_pos) % WEEK, WEEKEND)  # series in cycle 1
    scale = scale * (1.0 - spec.weekend_damping * weekend)
    offset = spec.weekend_offset * weekend
    if spec.profile.quiet_at_midnight:
        # Each cycle (a day's weather, a weekday) has its own scale; it changes at midnight,
        # where the profile rests at zero, so the change makes no jump.
        values = spec.amplitude * scale[cycle] * shape + offset[cycle]
    else:
        # Elsewhere a step at midnight would be a jump: the scale changes linearly from one
        # cycle's middle to the next instead.
        values = spec.amplitude * np.interp(phase - 0.5, cycle_pos, scale) * shape
        values = values + np.interp(phase - 0.5, cycle_pos, offset)

    cycles_elapsed = t / spec.period
    values = values + spec.drift_per_cycle * cycles_elapsed
    if spec.walk_std_per_cycle:
        step_std = spec.walk_std_per_cycle / np.sqrt(spec.period)
        values = values + np.cumsum(rng.normal(0.0, step_std, size=length))
    noise = spec.noise_std * _unit_ar1(rng, length, spec.noise_persistence)
    if spec.profile.floored:
        night = shape == 0.0
        if not spec.night_noise:
            noise[night] = 0.0
        values = np.maximum(values + noise, 0.0)
        if not spec.night_noise:
            values[night] = 0.0  # exactly the floor, whatever drift the spec asked for
    else:
        values = values + noise
    return values.astype(np.float32)


def cycles(rng: np.random.Generator, length: int) -> np.ndarray:
    """A repeated daily profile with freshly drawn parameters."""
    return render_cycles(draw_cycles_spec(rng), rng, length)


def _draw_profile(rng: np.random.Generator) -> Profile:
    kind = rng.choice(4, p=[0.3, 0.25, 0.25, 0.2])
    if kind == 0:
        n_harmonics = int(rng.integers(1, 7))
        decay = rng.uniform(0.3, 0.8)
        amplitudes = decay ** np.arange(n_harmonics) * rng.uniform(0.5, 1.0, size=n_harmonics)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=n_harmonics)
        return FourierProfile(tuple(amplitudes.tolist()), tuple(phases.tolist()))
    if kind == 1:
        day_fraction = float(rng.uniform(0.3, 0.7))
        noon = float(rng.uniform(0.4, 0.6))
        exponent = 1.0 if rng.random() < 0.3 else float(rng.uniform(1.2, 3.0))
        return SolarProfile(noon - day_fraction / 2, day_fraction, exponent)
    if kind == 2:
        return BusinessProfile(
            opening=float(rng.uniform(0.2, 0.4)),
            open_fraction=float(rng.uniform(0.3, 0.55)),
            ramp_fraction=float(rng.uniform(0.02, 0.1)),
            day_peak=float(rng.uniform(0.0, 0.4)) if rng.random() < 0.5 else 0.0,
        )
    heights = rng.uniform(0.4, 1.0, size=2)
    return DoublePeakProfile(
        centres=(float(rng.uniform(0.25, 0.38)), float(rng.uniform(0.7, 0.85))),
        widths=(float(rng.uniform(0.02, 0.07)), float(rng.uniform(0.03, 0.08))),
        heights=(float(heights[0]), float(heights[1])),
        midday=float(rng.uniform(0.0, 0.4)),
    )


def _unit_ar1(rng: np.random.Generator, length: int, persistence: float) -> np.ndarray:
    """Stationary AR(1) noise with unit marginal standard deviation."""
    eps = rng.standard_normal(length)
    if persistence == 0.0:
        return eps
    # The first shock carries the stationary spread; later ones the innovation spread.
    eps[1:] *= np.sqrt(1.0 - persistence**2)
    return ar1_filter(eps, persistence)
