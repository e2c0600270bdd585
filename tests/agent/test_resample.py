import numpy as np
import pytest
from moecast.agent.forecast.grid import detect_interval, to_grid

NAN = float("nan")


def same(actual: np.ndarray, expected: list[float]) -> bool:
    return np.array_equal(actual, np.array(expected, dtype=np.float32), equal_nan=True)


# --- interval detection ----------------------------------------------------------------------


def test_regular_interval() -> None:
    assert detect_interval(1_700_000_000 + np.arange(50) * 30.0) == 30.0


def test_jittered_interval_with_duplicates_and_dropouts_snaps_to_the_round_period() -> None:
    rng = np.random.default_rng(7)
    ts = 1_700_000_000 + np.arange(500) * 60.0 + rng.normal(0, 4, 500)
    ts = np.sort(np.concatenate([ts[rng.random(500) > 0.2], ts[:50]]))  # 20 % gone, dups
    assert detect_interval(ts) == 60.0


def test_jitter_does_not_change_the_detected_interval() -> None:
    rng = np.random.default_rng(3)
    detected = {
        detect_interval(np.sort(np.arange(300) * 10.0 + rng.uniform(-1, 1, 300))) for _ in range(20)
    }
    assert detected == {10.0}


@pytest.mark.parametrize(("period", "expected"), [(7.3, 7.3), (137.0, 140.0), (0.0137, 0.014)])
def test_unround_periods_keep_two_significant_digits(period: float, expected: float) -> None:
    assert detect_interval(np.arange(40) * period) == pytest.approx(expected)


@pytest.mark.parametrize(
    "ts", [[], [5.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 2.0, 2.0, 3.0]]
)
def test_too_few_distinct_points(ts: list[float]) -> None:
    assert detect_interval(np.array(ts)) is None


# --- binning ---------------------------------------------------------------------------------

TS = np.array([101.0, 105.0, 109.0, 110.0, 111.0, 125.0])
VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def test_hand_computed_bin_means() -> None:
    # Bins are (end - 10, end]: (100, 110] holds 1, 2, 3, 4; (110, 120] holds 5; (120, 130] 6.
    end, grid = to_grid(TS, VALUES, 10.0, 4)
    assert end == 130.0
    assert grid.dtype == np.float32
    assert same(grid, [NAN, 2.5, 5.0, 6.0])


def test_empty_bins_are_nan_and_short_history_is_left_padded() -> None:
    end, grid = to_grid(np.array([10.0, 40.0]), np.array([1.0, 4.0]), 10.0, 6)
    assert end == 40.0
    assert same(grid, [NAN, NAN, 1.0, NAN, NAN, 4.0])


def test_end_ts_positions_the_grid_and_excludes_later_readings() -> None:
    end, grid = to_grid(TS, VALUES, 10.0, 4, end_ts=150.0)
    assert end == 150.0
    assert same(grid, [5.0, 6.0, NAN, NAN])
    end, grid = to_grid(TS, VALUES, 10.0, 3, end_ts=120.0)
    assert end == 120.0
    assert same(grid, [NAN, 2.5, 5.0])


def test_grid_is_aligned_to_the_epoch_and_stable_across_ticks() -> None:
    ts = 1_700_000_000 + np.array([3.0, 61.0, 65.0, 130.0, 179.0])
    values = np.arange(5.0)
    grids = [to_grid(ts, values, 60.0, 5, end_ts=ts[-1] + lag) for lag in (0.0, 0.5, 1.0)]
    ends = {end for end, _ in grids}
    assert ends == {1_700_000_220.0}
    assert ends.pop() % 60.0 == 0.0
    for _, grid in grids[1:]:
        assert np.array_equal(grid, grids[0][1], equal_nan=True)
    assert same(grids[0][1], [NAN, 0.0, 1.5, 3.0, 4.0])


def test_a_reading_on_a_boundary_belongs_to_the_bin_it_labels() -> None:
    end, grid = to_grid(np.array([60.0, 120.0]), np.array([1.0, 2.0]), 60.0, 2)
    assert end == 120.0
    assert same(grid, [1.0, 2.0])
    end, grid = to_grid(np.array([60.0, 120.5]), np.array([1.0, 2.0]), 60.0, 2)
    assert end == 180.0
    assert same(grid, [NAN, 2.0])


def test_non_finite_values_are_ignored() -> None:
    _, grid = to_grid(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0]), 10.0, 1)
    assert same(grid, [2.0])


def test_no_readings_with_an_end_gives_all_nan() -> None:
    end, grid = to_grid(np.empty(0), np.empty(0), 5.0, 3, end_ts=12.0)
    assert end == 15.0
    assert np.isnan(grid).all()


@pytest.mark.parametrize(
    ("ts", "interval", "length", "message"),
    [
        (np.empty(0), 10.0, 3, "no readings"),
        (TS, 0.0, 3, "interval_s"),
        (TS, -1.0, 3, "interval_s"),
        (TS, float("nan"), 3, "interval_s"),
        (TS, 10.0, 0, "length"),
    ],
)
def test_invalid_arguments(ts: np.ndarray, interval: float, length: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_grid(ts, np.ones_like(ts), interval, length)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        to_grid(TS, VALUES[:-1], 10.0, 3)


def test_many_streams_gridded_at_once_equal_each_gridded_alone() -> None:
    from moecast.agent.forecast.grid import to_grids

    rng = np.random.default_rng(1)
    series, intervals, lengths = [], [], []
    for _ in range(40):
        n = int(rng.integers(1, 300))
        ts = np.sort(1.7e9 + np.cumsum(rng.exponential(rng.uniform(1, 100), n)))
        ts[rng.random(n) < 0.1] = ts[0]  # repeated timestamps
        values = rng.normal(size=n)
        values[rng.random(n) < 0.1] = np.nan
        series.append((np.sort(ts), values))
        intervals.append(float(rng.choice([0.5, 1.0, 37.0, 60.0])))
        lengths.append(int(rng.integers(1, 200)))
    ends, grids = to_grids(series, intervals, lengths)
    for (ts, values), interval, length, end, grid in zip(
        series, intervals, lengths, ends, grids, strict=True
    ):
        alone_end, alone = to_grid(ts, values, interval, length)
        assert end == alone_end
        assert grid.dtype == np.float32
        np.testing.assert_array_equal(grid, alone)  # NaN where NaN, bit for bit elsewhere
    assert to_grids([], [], []) == ([], [])
    with pytest.raises(ValueError, match="needs a reading"):
        to_grids([(np.empty(0), np.empty(0))], [60.0], [4])


def test_the_tick_grids_a_long_irregular_history_as_to_grid_does(tmp_path) -> None:
    # The tick keeps only the readings its bins hold (a buffer has up to 2048); the grid must
    # be the one to_grid makes from the whole history.
    from collections import Counter

    from moecast.agent.forecast.tick import Forecaster
    from moecast.agent.ingest.readings import Reading, StreamId
    from moecast.agent.ingest.streams import StreamRegistry
    from moecast.agent.ops.metrics import AgentMetrics
    from moecast.agent.runtime import TickContext
    from moecast.agent.settings import load_settings

    from tests.agent.quality_kit import FakeBundle

    rng = np.random.default_rng(2)
    settings = load_settings(
        None, storage_dir=tmp_path, streams=[{"pattern": "*", "interval_s": 7.0}]
    )
    fc = Forecaster(FakeBundle(), settings)  # type: ignore[arg-type]
    registry = StreamRegistry()
    histories = {}
    for k in range(5):
        ts = 1.7e9 + np.cumsum(rng.exponential(3.0, 1500))
        values = rng.normal(size=ts.size)
        stream = StreamId("dev", f"s{k}")
        registry.insert(stream, [Reading(t, v) for t, v in zip(ts, values, strict=True)], ts[-1])
        histories[stream] = registry.snapshot(stream)
    context = TickContext(ts[-1] + 1, settings, registry, None, AgentMetrics())  # type: ignore[arg-type]
    rows = fc._due_rows(context, 128, Counter())
    assert len(rows) == 5
    for row in rows:
        end, grid = to_grid(*histories[row.stream], 7.0, 128)
        assert row.grid_end == end
        np.testing.assert_array_equal(row.values, grid)
