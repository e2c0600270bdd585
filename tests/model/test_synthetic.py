"""The synthetic generator families, gap simulation and the mixture (numpy only)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from moecast.model.data import (
    GENERATORS,
    SensorSpec,
    SyntheticMixture,
    TrendSeasonalSpec,
    draw_kernel,
    draw_sensor_spec,
    draw_trend_seasonal_spec,
    drop_readings,
    irregular_sample,
    kernel_synth,
    render_sensor,
    render_trend_seasonal,
    sample_gp,
)
from moecast.model.data.kernel_synth import (
    RBF,
    Constant,
    Linear,
    Periodic,
    Product,
    Sum,
    WhiteNoise,
)
from moecast.model.data.sensor import INTERVALS_S
from moecast.model.data.trend_seasonal import (
    MAX_AR_ROOT,
    ExponentialTrend,
    PiecewiseLinearTrend,
    stable_ar_coefficients,
)

FAMILIES = sorted(GENERATORS)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _periodogram_peak(values: np.ndarray, min_bin: int = 4) -> int:
    """Frequency bin (cycles per series) with the most power, ignoring the lowest bins."""
    power = np.abs(np.fft.rfft(values - values.mean())) ** 2
    return min_bin + int(np.argmax(power[min_bin:]))


# --- every family ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [1, 7, 1024])
def test_generator_shape_dtype_finite(family: str, length: int) -> None:
    values = GENERATORS[family](_rng(), length)
    assert values.shape == (length,)
    assert values.dtype == np.float32
    assert np.isfinite(values).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_seeded(family: str) -> None:
    generate = GENERATORS[family]
    np.testing.assert_array_equal(generate(_rng(3), 256), generate(_rng(3), 256))
    assert not np.array_equal(generate(_rng(3), 256), generate(_rng(4), 256))


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_finite_and_varied_over_many_draws(family: str) -> None:
    rng = _rng(11)
    draws = [GENERATORS[family](rng, 300) for _ in range(150)]
    assert all(np.isfinite(d).all() for d in draws)
    # Random parameters, not one shape: the draws' spreads differ a lot.
    spreads = np.array([d.std() for d in draws])
    assert spreads.max() > 3 * np.median(spreads[spreads > 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_rejects_empty_length(family: str) -> None:
    with pytest.raises(ValueError, match="length"):
        GENERATORS[family](_rng(), 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_speed(family: str) -> None:
    rng = _rng(5)
    GENERATORS[family](rng, 1024)  # warm-up (imports, FFT plans)
    draws = 40
    start = time.perf_counter()
    for _ in range(draws):
        GENERATORS[family](rng, 1024)
    per_series_ms = (time.perf_counter() - start) / draws * 1e3
    assert per_series_ms < 50.0


# --- KernelSynth ----------------------------------------------------------------------------


def _periodic_cov(lags: np.ndarray, period: float) -> np.ndarray:
    return np.exp(-2.0 * np.sin(np.pi * lags / period) ** 2)


def test_gp_sample_has_the_kernel_covariance() -> None:
    n, draws = 8, 3000
    kernel = (
        Periodic(4.0) * RBF(0.3)
        + Linear(1.0) * WhiteNoise(0.5)
        + Periodic(3.0) * Periodic(5.0) * Linear(0.0)
        + Constant(1.0)
    )
    rng = _rng(1)
    samples = np.stack([sample_gp(kernel, rng, n) for _ in range(draws)]).astype(np.float64)
    t = np.arange(n)
    x = t / n
    lags = np.abs(t[:, None] - t[None, :])
    expected = (
        _periodic_cov(lags, 4.0) * np.exp(-0.5 * (lags / n / 0.3) ** 2)
        + (1.0 + np.outer(x, x)) * 0.5 * (lags == 0)
        + _periodic_cov(lags, 3.0) * _periodic_cov(lags, 5.0) * np.outer(x, x)
        + 1.0
    )
    # Standard error of a Gaussian sample covariance: sqrt((s_ii s_jj + s_ij^2) / N).
    diag = np.diag(expected)
    standard_error = np.sqrt((np.outer(diag, diag) + expected**2) / draws)
    deviation = np.abs(np.cov(samples.T) - expected) / standard_error
    assert deviation.max() < 5.0


@pytest.mark.parametrize("length", [240, 250, 1000])
def test_periodic_kernel_sample_repeats_exactly(length: int) -> None:
    values = sample_gp(Periodic(24.0), _rng(2), length)
    assert values.std() > 0.1
    np.testing.assert_allclose(values[24:], values[:-24], atol=1e-5)


def test_linear_kernel_sample_is_a_straight_line() -> None:
    values = sample_gp(Linear(1.0), _rng(3), 500).astype(np.float64)
    assert np.abs(np.diff(values, 2)).max() < 1e-5
    assert values.std() > 0


def test_white_noise_kernel_sample_is_uncorrelated() -> None:
    values = sample_gp(WhiteNoise(1.0), _rng(4), 8192).astype(np.float64)
    assert values.var() == pytest.approx(1.0, abs=0.08)
    assert abs(np.corrcoef(values[1:], values[:-1])[0, 1]) < 0.05


def test_drawn_kernels_combine_one_to_five_bank_kernels_with_plus_and_times() -> None:
    rng = _rng(6)
    kernels = [draw_kernel(rng) for _ in range(300)]

    def leaves(kernel: object) -> int:
        if isinstance(kernel, Sum | Product):
            return leaves(kernel.left) + leaves(kernel.right)
        return 1

    counts = [leaves(k) for k in kernels]
    assert min(counts) == 1
    assert max(counts) == 5
    assert any(isinstance(k, Sum) for k in kernels)
    assert any(isinstance(k, Product) for k in kernels)


def test_kernel_synth_1024_points_is_fast_on_average() -> None:
    rng = _rng(7)
    start = time.perf_counter()
    for _ in range(100):
        kernel_synth(rng, 1024)
    assert (time.perf_counter() - start) / 100 < 0.050


# --- trend + ARMA + seasonality -------------------------------------------------------------


def _flat_spec(**changes: object) -> TrendSeasonalSpec:
    spec = TrendSeasonalSpec(
        trend=PiecewiseLinearTrend((), (0.0,)),
        periods=(),
        amplitudes=(),
        phases=(),
        ar=(),
        ma=(),
        noise_std=0.0,
    )
    return dataclasses.replace(spec, **changes)


def test_seasonal_spectrum_peaks_at_its_period() -> None:
    length = 24 * 64
    spec = _flat_spec(
        trend=PiecewiseLinearTrend((0.4,), (2.0, -1.0)),
        periods=(24.0,),
        amplitudes=(1.0,),
        phases=(0.3,),
        ar=(0.5, -0.2),
        ma=(0.4,),
        noise_std=0.5,
    )
    values = render_trend_seasonal(spec, _rng(), length)
    assert _periodogram_peak(values) == length // 24


def test_two_seasonalities_are_the_two_strongest_lines() -> None:
    length = 168 * 12
    spec = _flat_spec(periods=(24.0, 168.0), amplitudes=(1.0, 0.8), phases=(0.0, 1.0))
    values = render_trend_seasonal(spec, _rng(), length)
    power = np.abs(np.fft.rfft(values)) ** 2
    assert set(np.argsort(power)[-2:].tolist()) == {length // 24, length // 168}


def test_ar1_noise_has_its_autocorrelation_and_scale() -> None:
    values = render_trend_seasonal(_flat_spec(ar=(0.8,), noise_std=2.0), _rng(), 20_000)
    values = values.astype(np.float64)
    assert values.std() == pytest.approx(2.0, rel=1e-3)  # scaled to noise_std exactly
    assert np.corrcoef(values[1:], values[:-1])[0, 1] == pytest.approx(0.8, abs=0.03)


def test_piecewise_linear_trend_joins_segments_with_the_given_slopes() -> None:
    trend = PiecewiseLinearTrend((0.5,), (1.0, -2.0)).render(1000)
    steps = np.diff(trend)
    np.testing.assert_allclose(steps[:499], 1.0 / 1000)
    np.testing.assert_allclose(steps[500:], -2.0 / 1000)
    assert trend[0] == 0.0


def test_exponential_trend_grows_by_its_rate() -> None:
    trend = ExponentialTrend(scale=1.0, rate=2.0).render(1000)
    assert trend[0] == 0.0
    np.testing.assert_allclose(trend[500], np.expm1(1.0))


def test_drawn_ar_coefficients_are_stationary() -> None:
    rng = _rng(8)
    for _ in range(300):
        ar = stable_ar_coefficients(rng, int(rng.integers(1, 3)))
        roots = np.roots([1.0, *(-a for a in ar)])
        assert np.abs(roots).max() < MAX_AR_ROOT + 1e-9


def test_drawn_trend_seasonal_specs_respect_the_recipe() -> None:
    rng = _rng(9)
    specs = [draw_trend_seasonal_spec(rng, 512) for _ in range(200)]
    assert all(len(s.ar) <= 2 and len(s.ma) <= 2 and len(s.periods) <= 3 for s in specs)
    assert all(p >= 2.5 for s in specs for p in s.periods)
    assert any(isinstance(s.trend, ExponentialTrend) for s in specs)
    assert any(
        len(s.trend.breakpoints) > 0 for s in specs if isinstance(s.trend, PiecewiseLinearTrend)
    )


# --- sensor-like ----------------------------------------------------------------------------


def _quiet_sensor(**changes: object) -> SensorSpec:
    """A 5-minute sensor with a pure daily cycle; tests switch on one effect at a time."""
    spec = SensorSpec(
        interval_s=300.0,
        start_s=0.0,
        daily_amplitude=1.0,
        daily_peak_hour=15.0,
        daily_second_harmonic=0.0,
        weekend_damping=0.0,
        weekend_offset=0.0,
        noise_std=0.05,
        drift_per_day=0.0,
        walk_std_per_day=0.0,
        step_rate=0.0,
        step_std=0.0,
        spike_rate=0.0,
        spike_scale=0.0,
        clip_low_fraction=0.0,
        clip_high_fraction=0.0,
        stuck_rate=0.0,
        max_stuck=1,
        resolution=0.0,
    )
    return dataclasses.replace(spec, **changes)


def test_sensor_daily_cycle_peaks_at_one_day() -> None:
    length = 288 * 8  # eight days of 5-minute readings
    values = render_sensor(_quiet_sensor(noise_std=0.3), _rng(), length)
    assert _periodogram_peak(values) == 8
    # The daily maximum sits at the requested hour (15:00 = step 180 of 288).
    daily_line = np.fft.rfft(values)[8]
    peak_step = (-np.angle(daily_line) / (2 * np.pi) * 288) % 288
    assert peak_step == pytest.approx(180, abs=3)


def test_sensor_weekend_damping_flattens_saturday_and_sunday() -> None:
    hourly = _quiet_sensor(interval_s=3600.0, weekend_damping=1.0, noise_std=0.01)
    days = render_sensor(hourly, _rng(), 24 * 7).reshape(7, 24)
    spreads = days.std(axis=1)
    assert spreads[:5].min() > 0.5  # Monday .. Friday
    assert spreads[5:].max() < 0.05  # Saturday, Sunday


def test_sensor_quantisation_puts_values_on_the_resolution_grid() -> None:
    values = render_sensor(_quiet_sensor(resolution=0.25), _rng(), 2000).astype(np.float64)
    np.testing.assert_allclose(values / 0.25, np.round(values / 0.25), atol=1e-4)
    assert np.unique(values).size > 4


def test_sensor_saturation_clips_at_both_range_limits() -> None:
    spec = _quiet_sensor(clip_low_fraction=0.05, clip_high_fraction=0.1)
    values = render_sensor(spec, _rng(), 5000)
    at_max = np.mean(values == values.max())
    at_min = np.mean(values == values.min())
    assert at_max == pytest.approx(0.1, abs=0.01)
    assert at_min == pytest.approx(0.05, abs=0.01)
    unclipped = render_sensor(_quiet_sensor(), _rng(), 5000)
    assert np.mean(unclipped == unclipped.max()) < 0.01


def test_sensor_stuck_at_holds_values() -> None:
    free = render_sensor(_quiet_sensor(), _rng(), 5000)
    stuck = render_sensor(_quiet_sensor(stuck_rate=0.01, max_stuck=30), _rng(), 5000)
    assert np.count_nonzero(np.diff(free) == 0) == 0
    assert np.count_nonzero(np.diff(stuck) == 0) > 100


def test_sensor_spikes_appear_at_their_rate() -> None:
    length = 20_000
    spec = _quiet_sensor(daily_amplitude=0.0, spike_rate=0.01, spike_scale=20.0)
    values = render_sensor(spec, _rng(), length)
    spikes = np.count_nonzero(np.abs(values) > 10.0)
    assert spikes == pytest.approx(0.01 * length, rel=0.2)


def test_sensor_level_steps_make_a_staircase() -> None:
    length = 10_000
    spec = _quiet_sensor(daily_amplitude=0.0, noise_std=0.0, step_rate=0.002, step_std=1.0)
    values = render_sensor(spec, _rng(), length)
    changes = np.count_nonzero(np.diff(values) != 0)
    assert 5 <= changes <= 40  # about 0.002 * 10 000 = 20 steps, nothing in between


def test_drawn_sensor_specs_are_plausible() -> None:
    rng = _rng(10)
    specs = [draw_sensor_spec(rng) for _ in range(300)]
    assert {s.interval_s for s in specs} <= set(INTERVALS_S)
    assert len({s.interval_s for s in specs}) == len(INTERVALS_S)
    assert any(s.resolution > 0 for s in specs)
    assert any(s.resolution == 0 for s in specs)
    assert any(s.clip_high_fraction > 0 for s in specs)
    assert any(s.stuck_rate > 0 for s in specs)


def test_sensor_spec_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="clip_high_fraction"):
        _quiet_sensor(clip_high_fraction=1.0)
    with pytest.raises(ValueError, match="interval_s"):
        _quiet_sensor(interval_s=0.0)


# --- gaps -----------------------------------------------------------------------------------


def test_drop_readings_respects_the_drop_rate_and_leaves_the_input_alone() -> None:
    series = np.arange(20_000, dtype=np.float32)
    dropped = drop_readings(series, _rng(), drop_rate=0.2)
    assert np.isnan(series).sum() == 0
    assert dropped.dtype == np.float32
    lost = np.isnan(dropped)
    assert lost.mean() == pytest.approx(0.2, abs=0.015)
    np.testing.assert_array_equal(dropped[~lost], series[~lost])


def test_drop_readings_gaps_are_contiguous_and_cover_the_expected_share() -> None:
    series = np.zeros(50_000)
    max_gap, gap_rate = 20, 0.005
    lost = np.isnan(
        drop_readings(series, _rng(1), drop_rate=0.0, gap_rate=gap_rate, max_gap=max_gap)
    )
    # P(covered) = 1 - prod_k (1 - rate * P(gap length > k)) for uniform 1..max_gap lengths.
    survive = np.prod([1 - gap_rate * (max_gap - k) / max_gap for k in range(max_gap)])
    assert lost.mean() == pytest.approx(1 - survive, abs=0.01)
    edges = np.diff(np.concatenate([[0], lost.astype(np.int8), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert runs.max() > 1
    assert np.median(runs) > 5


def test_drop_readings_dtype_and_validation() -> None:
    assert drop_readings(np.arange(10), _rng(), 0.5).dtype == np.float64
    assert drop_readings(np.zeros(10), _rng(), 0.5).dtype == np.float64
    assert np.isnan(drop_readings(np.zeros(10), _rng(), 0.0)).sum() == 0
    with pytest.raises(ValueError, match="drop_rate"):
        drop_readings(np.zeros(10), _rng(), 1.0)
    with pytest.raises(ValueError, match="max_gap"):
        drop_readings(np.zeros(10), _rng(), 0.1, gap_rate=0.1, max_gap=0)


def test_irregular_sample_without_jitter_is_the_regular_series() -> None:
    series = np.linspace(0.0, 10.0, 100, dtype=np.float32)
    timestamps, values = irregular_sample(series, _rng(), interval_s=60.0, start_s=1e9)
    np.testing.assert_array_equal(timestamps, 1e9 + 60.0 * np.arange(100))
    np.testing.assert_array_equal(values, series)
    assert timestamps.dtype == np.float64
    assert values.dtype == np.float32


def test_irregular_sample_jitters_drops_and_interpolates() -> None:
    n, interval, jitter = 10_000, 30.0, 0.6
    series = np.sin(np.arange(n) / 50.0)
    series[100:200] = np.nan  # an outage: nothing is sent
    timestamps, values = irregular_sample(series, _rng(), interval, jitter=jitter, drop_rate=0.1)
    assert np.all(np.diff(timestamps) > 0)
    position = timestamps / interval
    assert np.abs(position - np.round(position)).max() <= jitter / 2
    assert np.abs(position - np.round(position)).max() > 0.25
    assert not np.any((position > 99) & (position < 200))
    np.testing.assert_allclose(values, np.interp(position, np.arange(n), series), atol=1e-6)
    assert values.size / (n - 101) == pytest.approx(0.9, abs=0.015)


# --- mixture --------------------------------------------------------------------------------


def test_mixture_draws_families_in_proportion_to_weights() -> None:
    mixture = SyntheticMixture(
        {"kernel_synth": 0.6, "trend_seasonal": 0.0, "sensor": 0.4}, gap_probability=0.0
    )
    rng = _rng(12)
    families = [mixture.sample_with_family(rng, 16)[0] for _ in range(1000)]
    share = families.count("kernel_synth") / len(families)
    assert share == pytest.approx(0.6, abs=0.05)  # ~3 standard errors
    assert "trend_seasonal" not in families


def test_mixture_is_seeded_and_float32() -> None:
    mixture = SyntheticMixture()
    first = mixture.sample(_rng(13), 200)
    np.testing.assert_array_equal(first, mixture.sample(_rng(13), 200))
    assert not np.array_equal(first, mixture.sample(_rng(14), 200), equal_nan=True)
    assert first.shape == (200,)
    assert first.dtype == np.float32


def test_mixture_spans_raw_units() -> None:
    mixture = SyntheticMixture(gap_probability=0.0)
    rng = _rng(15)
    samples = [mixture.sample(rng, 128) for _ in range(300)]
    assert all(np.isfinite(s).all() for s in samples)
    spreads = np.array([s.std() for s in samples])
    levels = np.abs(np.array([s.mean() for s in samples]))
    assert spreads.max() / spreads[spreads > 0].min() > 1e4
    assert np.any(levels > 50 * spreads)  # offsets like 1013 hPa with a few hPa of variation


def test_mixture_gaps_are_nan_but_never_everything() -> None:
    rng = _rng(16)
    gapped = [SyntheticMixture(gap_probability=1.0).sample(rng, 512) for _ in range(100)]
    assert np.mean([np.isnan(s).any() for s in gapped]) > 0.9
    assert all(np.isfinite(s).any() for s in gapped)
    clean = [SyntheticMixture(gap_probability=0.0).sample(rng, 512) for _ in range(50)]
    assert not any(np.isnan(s).any() for s in clean)


def test_mixture_keeps_constant_series_constant() -> None:
    """A constant kernel's float32 rounding must not be standardised into unit noise."""
    mixture = SyntheticMixture(gap_probability=0.0)
    rng = _rng(17)
    flat = 0
    for _ in range(1500):
        family, values = mixture.sample_with_family(rng, 64)
        spread = np.ptp(values.astype(np.float64))
        if spread <= 1e-5 * max(1.0, float(np.abs(values).max())):
            flat += 1
            assert spread == 0.0, family
        else:
            assert spread > 1e-3 * float(np.abs(values).max()), family
    assert flat > 0  # KernelSynth's bank has a constant kernel, drawn alone now and then


def test_default_mixture_draws_every_family_daily_cycles_most() -> None:
    from moecast.model.data.mixture import DEFAULT_WEIGHTS

    assert set(DEFAULT_WEIGHTS) == set(GENERATORS)
    assert sum(DEFAULT_WEIGHTS.values()) == pytest.approx(1.0)
    assert max(DEFAULT_WEIGHTS, key=DEFAULT_WEIGHTS.__getitem__) == "cycles"
    rng = _rng(18)
    mixture = SyntheticMixture(gap_probability=0.0)
    families = {mixture.sample_with_family(rng, 32)[0] for _ in range(300)}
    assert families == set(GENERATORS)


def test_mixture_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="unknown generator"):
        SyntheticMixture({"kernel_synth": 1.0, "chaos": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        SyntheticMixture({"kernel_synth": -1.0, "sensor": 2.0})
    with pytest.raises(ValueError, match="non-negative"):
        SyntheticMixture({"sensor": 0.0})


# --- piecewise-constant regimes -------------------------------------------------------------


def test_regime_series_hold_exact_values_for_long_runs_then_jump():
    from moecast.model.data.regimes import regime_series

    rng = _rng(21)
    draws = [regime_series(rng, 500) for _ in range(100)]
    held = np.array([np.mean(np.diff(d) == 0) for d in draws])
    # persistence is exact most of the time, and the series still move
    assert np.median(held) > 0.8
    assert sum(np.ptp(d) > 0 for d in draws) > 80
    distinct = np.array([np.unique(d).size for d in draws])
    assert np.median(distinct) < 60
