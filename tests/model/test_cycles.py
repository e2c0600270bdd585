"""The daily-profile family: shapes, what varies from cycle to cycle, and the drawn mix."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from moecast.model.data.cycles import (
    MAX_WEEKLY_PERIOD,
    PERIODS,
    BusinessProfile,
    CyclesSpec,
    DoublePeakProfile,
    FourierProfile,
    SolarProfile,
    cycles,
    draw_cycles_spec,
    render_cycles,
)

PROFILES = {
    "fourier": FourierProfile((1.0, 0.5, 0.2), (0.3, 1.0, 2.0)),
    "solar": SolarProfile(sunrise=0.25, day_fraction=0.5, exponent=1.5),
    "business": BusinessProfile(opening=0.3, open_fraction=0.4, ramp_fraction=0.05, day_peak=0.2),
    "double_peak": DoublePeakProfile((0.3, 0.8), (0.04, 0.05), (0.7, 1.0), midday=0.2),
}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _clean(profile: str = "fourier", **changes: object) -> CyclesSpec:
    """Identical noiseless cycles of 24 points; tests switch on one effect at a time."""
    spec = CyclesSpec(
        period=24,
        profile=PROFILES[profile],
        start_phase=0.0,
        first_weekday=0,
        amplitude=1.0,
        cycle_log_std=0.0,
        cycle_persistence=0.0,
        weekend_damping=0.0,
        weekend_offset=0.0,
        phase_jitter=0.0,
        drift_per_cycle=0.0,
        walk_std_per_cycle=0.0,
        noise_std=0.0,
        noise_persistence=0.0,
        night_noise=False,
    )
    return dataclasses.replace(spec, **changes)


def _mae_ratio(values: np.ndarray, period: int) -> float:
    """Seasonal-naive error over naive error, forecasting 1 .. `period` steps ahead."""
    values = values.astype(np.float64)
    seasonal = np.abs(values[period:] - values[:-period]).mean()
    naive = np.mean([np.abs(values[h:] - values[:-h]).mean() for h in range(1, period + 1)])
    return seasonal / naive


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_clean_cycles_repeat_exactly_and_are_not_flat(profile: str) -> None:
    values = render_cycles(_clean(profile, start_phase=0.37), _rng(), 576)
    assert values.shape == (576,)
    assert values.dtype == np.float32
    assert np.isfinite(values).all()
    assert np.ptp(values) > 0.5
    assert _mae_ratio(values, 24) < 1e-4


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_varying_cycles_still_beat_naive_at_their_period(profile: str) -> None:
    spec = _clean(
        profile,
        period=48,
        cycle_log_std=0.1,
        cycle_persistence=0.5,
        phase_jitter=0.005,
        drift_per_cycle=0.01,
        walk_std_per_cycle=0.02,
        noise_std=0.01,
        noise_persistence=0.5,
    )
    values = render_cycles(spec, _rng(1), 576)
    assert 1e-3 < _mae_ratio(values, 48) < 0.5  # the variation is there, the cycle dominates


def test_drawn_cycles_beat_naive_at_their_drawn_period() -> None:
    rng = _rng(2)
    ratios = []
    for _ in range(300):
        spec = draw_cycles_spec(rng)
        if spec.period <= 192:  # at least two cycles in 576 points
            ratios.append(_mae_ratio(render_cycles(spec, rng, 576), spec.period))
    ratios = np.array(ratios)
    assert np.median(ratios) < 0.35
    assert np.mean(ratios < 0.05) > 0.05  # the nearly clean case, where seasonal naive is all
    assert ratios.max() > 0.5  # and noisy, varying cycles too


def test_solar_nights_sit_exactly_on_the_floor() -> None:
    spec = _clean("solar", cycle_log_std=0.5, noise_std=0.1, noise_persistence=0.5)
    values = render_cycles(spec, _rng(3), 24 * 10)
    hour = np.arange(values.size) % 24
    night = (hour < 6) | (hour > 18)  # sunrise 06:00, sunset 18:00
    assert np.all(values[night] == 0.0)
    assert np.all(values >= 0.0)
    assert values[hour == 12].min() > 0.1
    # Clouds only take light away: no day is brighter than the clear-sky profile plus noise.
    assert values.max() < 1.0 + 4 * 0.1


def test_solar_night_noise_is_clipped_at_the_floor() -> None:
    spec = _clean("solar", noise_std=0.1, night_noise=True)
    values = render_cycles(spec, _rng(4), 24 * 10)
    night = (np.arange(values.size) % 24) < 6
    assert values.min() == 0.0
    assert 0.2 < np.mean(values[night] == 0.0) < 0.8  # about half the noise is below the floor


def test_drawn_solar_series_rest_on_their_floor() -> None:
    rng = _rng(5)
    solar = 0
    for _ in range(200):
        spec = draw_cycles_spec(rng)
        values = render_cycles(spec, rng, 576)
        if isinstance(spec.profile, SolarProfile):
            solar += 1
            assert values.min() == 0.0
            assert np.mean(values == 0.0) > 0.15
    assert solar > 20


def test_weekend_damping_empties_saturday_and_sunday() -> None:
    spec = _clean("business", weekend_damping=1.0, noise_std=0.01, night_noise=False)
    days = render_cycles(spec, _rng(), 24 * 7).reshape(7, 24)
    spreads = days.std(axis=1)
    assert spreads[:5].min() > 0.3  # Monday .. Friday
    assert spreads[5:].max() < 0.03


def test_cycle_multipliers_vary_the_daily_amplitude() -> None:
    def daily_peaks(spec: CyclesSpec) -> np.ndarray:
        return render_cycles(spec, _rng(6), 24 * 20).reshape(20, 24).max(axis=1)

    steady = daily_peaks(_clean("solar"))
    cloudy = daily_peaks(_clean("solar", cycle_log_std=0.5))
    assert np.ptp(steady) < 1e-6
    assert np.ptp(cloudy) > 0.2
    assert cloudy.max() <= steady.max() + 1e-6


def test_fourier_cycle_multipliers_change_without_jumps() -> None:
    smooth = _clean("fourier", period=96, cycle_log_std=0.8)
    values = render_cycles(smooth, _rng(7), 96 * 6).astype(np.float64)
    clean = render_cycles(_clean("fourier", period=96), _rng(7), 96 * 6).astype(np.float64)
    # Steps no larger than the clean wave's own steps scaled by the largest multiplier.
    assert np.abs(np.diff(values)).max() < 5 * np.abs(np.diff(clean)).max()
    assert not np.allclose(values, clean)


def test_drawn_specs_favour_short_periods_and_weekly_only_where_a_week_fits() -> None:
    rng = _rng(8)
    specs = [draw_cycles_spec(rng) for _ in range(2000)]
    periods = np.array([s.period for s in specs])
    assert np.mean(periods == 24) > 2 * np.mean(periods == 288) > 0
    assert np.mean(np.isin(periods, PERIODS)) > 0.8
    weekly = [s for s in specs if s.weekend_damping > 0]
    assert weekly
    assert all(s.period <= MAX_WEEKLY_PERIOD for s in weekly)
    assert not any(isinstance(s.profile, SolarProfile) for s in weekly)
    kinds = {type(s.profile) for s in specs}
    assert kinds == {FourierProfile, SolarProfile, BusinessProfile, DoublePeakProfile}
    assert any(s.cycle_log_std == 0 for s in specs)
    assert any(s.cycle_log_std > 0.3 for s in specs)


def test_cycles_spec_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="weekend_damping"):
        _clean(weekend_damping=1.5)
    with pytest.raises(ValueError, match="period"):
        _clean(period=1)


def test_cycles_576_points_is_cheap() -> None:
    rng = _rng(9)
    cycles(rng, 576)
    start = time.perf_counter()
    for _ in range(200):
        cycles(rng, 576)
    assert (time.perf_counter() - start) / 200 < 0.002  # ~0.2 ms measured; slack for CI
