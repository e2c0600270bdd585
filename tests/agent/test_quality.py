"""Forecasts that check themselves (#16): live skill, calibrated intervals, anomalies, on the
Forecaster driven directly with a registry, a fake bundle and a recording link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moecast.agent.forecast.anomalies import tail_probability
from moecast.agent.forecast.quality_store import QUALITY_DB, QualityStore
from moecast.agent.forecast.skill import PendingSteps, Steps
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.homeassistant import config_topics
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext
from moecast.agent.settings import AgentSettings, load_settings

from tests.agent.quality_kit import HORIZONS, LEVELS, FakeBundle, Link, Z

START = 1_764_000_000.0  # a multiple of 60: readings sit on the grid labels
INTERVAL = 60.0


def settings_for(tmp_path: Path, **quality: Any) -> AgentSettings:
    return load_settings(
        None,
        storage_dir=tmp_path,
        streams=[{"pattern": "*", "interval_s": INTERVAL}],
        quality=quality,
    )


class Replay:
    """One reading per stream per grid step, then a tick just after it."""

    def __init__(self, fc: Forecaster) -> None:
        self.fc = fc
        self.registry = StreamRegistry()
        self.link = Link()
        self.metrics = AgentMetrics()
        self.k = 0

    def step(self, values: dict[StreamId, float]) -> None:
        ts = START + self.k * INTERVAL
        for stream, value in values.items():
            self.registry.insert(stream, [Reading(ts, value)], arrival_ts=ts)
        self.tick(ts + 1)
        self.k += 1

    def tick(self, now: float) -> None:
        context = TickContext(now, self.fc.settings, self.registry, self.link, self.metrics)
        self.fc(context)  # type: ignore[arg-type]


def test_skill_equals_the_hand_computed_scores_and_survives_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = 20 + rng.integers(-8, 9, size=40) / 4  # exact in float32, as the grid holds them
    offsets = np.linspace(-1, 1, 9)  # the outer quantiles lie 1 from the median
    bundle = FakeBundle(centre=lambda v: _last(v) + 0.5, offsets=offsets)
    settings = settings_for(tmp_path, calibrate=False, skill_window=5, save_interval_s=0.001)
    replay = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    stream = StreamId("boiler", "temp")
    for value in values:
        replay.step({stream: float(value)})

    # Head 1: the forecast issued after reading k (first with 8 bins, k = 7) is for bin k+1,
    # which closes (and is scored) once reading k+2 is in: origins 7 .. T-2.
    last = len(values) - 1
    decay, weight, abs_sum, naive_sum, inside_sum = 0.8, 0.0, 0.0, 0.0, 0.0
    for k in range(7, last - 1):
        error = abs(values[k + 1] - (values[k] + 0.5))
        weight = decay * weight + 1
        abs_sum = decay * abs_sum + error
        naive_sum = decay * naive_sum + abs(values[k + 1] - values[k])
        inside_sum = decay * inside_sum + (error <= 1.0)
    summary = replay.fc.quality.skill.summary()
    assert summary["n"][0, 0] == last - 1 - 7
    assert summary["mae"][0, 0] == pytest.approx(abs_sum / weight, rel=1e-12)
    assert summary["naive_mae"][0, 0] == pytest.approx(naive_sum / weight, rel=1e-12)
    assert summary["skill"][0, 0] == pytest.approx(1 - abs_sum / naive_sum, rel=1e-12)
    assert summary["coverage"][0, 0] == pytest.approx(inside_sum / weight, rel=1e-12)
    # Head 8: an origin every 4 bins (origins_per_head 2), each step scored once closed.
    origins = range(7, last + 1, 4)
    assert summary["n"][0, 1] == sum(max(0, min(8, last - 1 - k)) for k in origins)

    payload = replay.link.on("forecasts/boiler/temp")[-1]["payload"]
    skill = payload["skill"]
    assert set(skill) == {"horizons", "n", "mae", "naive_mae", "skill", "coverage"}
    assert skill["horizons"] == list(HORIZONS)  # every list is per head, in this order
    assert skill["n"][0] == last - 1 - 7
    assert skill["mae"][0] == pytest.approx(abs_sum / weight, rel=1e-3)
    assert skill["naive_mae"][0] == pytest.approx(naive_sum / weight, rel=1e-3)
    assert skill["skill"][0] == pytest.approx(1 - abs_sum / naive_sum, rel=1e-3)
    assert skill["coverage"][0] == pytest.approx(inside_sum / weight, rel=1e-3)
    assert skill["n"][3] == last - 1 - 7  # the 64-step head: one origin so far (k = 7)
    assert "calibration" not in payload
    assert "raw_quantiles" not in payload
    section = replay.metrics.snapshot()["quality"]
    assert section["per_stream"]["boiler/temp"]["1"]["n"] == last - 1 - 7
    assert section["scored_steps"] > 0
    pytest.importorskip("prometheus_client")
    from moecast.agent.ops.metrics import _Collector

    families = {family.name: family for family in _Collector(replay.metrics).collect()}
    [sample] = [
        s for s in families["moecast_agent_forecast_skill"].samples if s.labels["horizon"] == "1"
    ]
    assert sample.labels == {"stream": "boiler/temp", "horizon": "1"}
    assert sample.value == pytest.approx(1 - abs_sum / naive_sum, rel=1e-12)

    # A new agent run picks the summaries up from quality.db.
    restarted = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    restarted.registry, restarted.k = replay.registry, replay.k
    restarted.step({stream: 20.0})
    after = restarted.fc.quality.skill.summary()
    assert after["n"][0, 0] == last - 1 - 7  # restored; pending steps are not, so none new
    assert after["mae"][0, 0] == pytest.approx(abs_sum / weight, rel=1e-12)


@pytest.mark.parametrize("spread", [0.4, 2.5], ids=["too_narrow", "too_wide"])
def test_calibrated_intervals_converge_on_their_levels(tmp_path: Path, spread: float) -> None:
    """Gaussian noise (sd 1) around 20, a model that knows the mean but not the spread."""
    rng = np.random.default_rng(7)
    streams = [StreamId("site", f"s{i}") for i in range(8)]
    bundle = FakeBundle(centre=lambda v: np.full(len(v), 20.0), spread=spread)
    replay = Replay(Forecaster(bundle, settings_for(tmp_path)))  # type: ignore[arg-type]
    ticks, judged_from = 800, 400
    truth: dict[tuple[str, float], float] = {}
    bands: list[tuple[str, float, float, float]] = []
    for k in range(ticks):
        replay.link.clear()
        values = {s: float(20 + rng.normal()) for s in streams}
        ts = START + k * INTERVAL
        truth.update({(str(s), ts): v for s, v in values.items()})
        replay.step(values)
        if k < judged_from:
            continue
        for message in replay.link.on("forecasts/"):
            one = message["payload"]["horizons"]["1"]
            q = one["quantiles"]
            bands.append((message["payload"]["stream"], one["ts"][0], q["0.1"][0], q["0.9"][0]))
    inside, below = [], []
    for stream, ts, low, high in bands:
        value = truth.get((stream, ts))
        if value is not None:
            inside.append(low <= value <= high)
            below.append(value < low)
    raw = float(np.mean(np.abs(rng.normal(size=100_000)) <= 1.2816 * spread))
    assert abs(raw - 0.8) > 0.15  # the model's own intervals are badly off
    assert len(inside) > 3000
    assert np.mean(inside) == pytest.approx(0.8, abs=0.04)
    assert np.mean(below) == pytest.approx(0.1, abs=0.03)
    payload = replay.link.on("forecasts/site/s0")[-1]["payload"]
    factors = payload["calibration"][0]  # head 1, per level
    assert factors[4] == 1.0  # the median is never moved
    assert factors[-1] == pytest.approx(1 / spread, rel=0.35)
    for h in HORIZONS:  # still monotone after calibration
        q = np.array([payload["horizons"][str(h)]["quantiles"][str(level)] for level in LEVELS])
        assert (np.diff(q, axis=0) >= 0).all()
    # Bounded: at most origins_per_head + 1 origins of each head pending per stream.
    assert len(replay.fc.quality.pending) <= len(streams) * 3 * sum(HORIZONS)


def test_raw_quantiles_on_request(tmp_path: Path) -> None:
    bundle = FakeBundle(centre=lambda v: np.full(len(v), 20.0), spread=0.5)
    replay = Replay(Forecaster(bundle, settings_for(tmp_path, raw_quantiles=True)))  # type: ignore[arg-type]
    stream = StreamId("a", "b")
    for _ in range(10):
        replay.step({stream: 20.0})
    payload = replay.link.on("forecasts/a/b")[-1]["payload"]
    raw = payload["raw_quantiles"]["8"]["0.9"]
    assert raw == pytest.approx([20 + 0.5 * Z[-1]] * 8, rel=1e-5)


def test_a_spike_is_one_raised_and_one_cleared_anomaly_and_silence_one_stale(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(11)
    bundle = FakeBundle(centre=lambda v: np.full(len(v), 20.0), spread=0.1)
    replay = Replay(Forecaster(bundle, settings_for(tmp_path)))  # type: ignore[arg-type]
    stream = StreamId("pump", "pressure")
    for k in range(160):
        spike = 100 <= k < 103
        replay.step({stream: 30.0 if spike else float(20 + 0.1 * rng.normal())})
    events = [m for m in replay.link.on("anomalies/pump/pressure")]
    assert [e["payload"]["state"] for e in events] == ["raised", "cleared"]
    raised, cleared = (e["payload"] for e in events)
    assert all(e["qos"] == 1 and e["retain"] for e in events)
    assert raised["ts"] == START + 100 * INTERVAL
    assert raised["value"] == pytest.approx(30.0)
    assert raised["tail_probability"] < 0.001
    assert raised["band"][0] < 20 < raised["band"][1]
    assert raised["issued_at"] == START + 99 * INTERVAL + 1  # the tick after the reading before
    assert raised["horizon"] == 1
    assert set(raised) == {
        "stream", "state", "ts", "value", "band", "tail_probability", "issued_at", "horizon",
    }  # fmt: skip
    assert START + 103 * INTERVAL < cleared["ts"] < START + 120 * INTERVAL

    # Silence: one stale event, however many ticks follow.
    replay.link.clear()
    last = START + 159 * INTERVAL
    for minutes in (5, 20, 30, 60):
        replay.tick(last + minutes * 60)
    [stale] = replay.link.on("anomalies/")
    assert stale["payload"]["state"] == "stale"
    assert stale["payload"]["ts"] == last
    section = replay.metrics.snapshot()["quality"]
    assert section["anomalies"] == {"active": 0, "raised": 1, "cleared": 1, "stale": 1}


def test_missing_bins_are_not_scored_nor_anomalies(tmp_path: Path) -> None:
    bundle = FakeBundle(centre=lambda v: np.full(len(v), 20.0), spread=0.1)
    replay = Replay(Forecaster(bundle, settings_for(tmp_path)))  # type: ignore[arg-type]
    stream = StreamId("gappy", "level")
    for k in range(60):
        if k % 3 == 0 and k > 10:
            replay.k += 1  # a reading that never came
            continue
        replay.step({stream: 20.0})
    assert replay.link.on("anomalies/") == []
    assert replay.fc.quality.counters["missing"] > 0


def test_tail_probability_interpolates_inside_and_extrapolates_outside() -> None:
    levels = np.array(LEVELS)
    q = np.tile(np.arange(1.0, 10.0), (5, 1))  # quantile of level i/10 is i
    value = np.array([5.0, 2.5, 9.0, 10.0, 0.0])
    p = tail_probability(levels, q, value)
    assert p[:3] == pytest.approx([0.5, 0.25, 0.1])
    # One quantile spacing beyond the 0.9 quantile halves the tail (0.8 -> 0.9 did too).
    assert p[3] == pytest.approx(0.05)
    assert p[4] == pytest.approx(0.05)


def test_disabled_quality_adds_nothing(tmp_path: Path) -> None:
    bundle = FakeBundle(spread=0.5)
    settings = load_settings(None, storage_dir=tmp_path, quality={"enabled": False})
    replay = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    for _ in range(12):
        replay.step({StreamId("a", "b"): 20.0})
    payload = replay.link.on("forecasts/a/b")[-1]["payload"]
    assert "skill" not in payload
    assert "calibration" not in payload
    assert "quality" not in replay.metrics.snapshot()


def test_released_streams_leave_the_store(tmp_path: Path) -> None:
    bundle = FakeBundle(spread=0.5)
    settings = settings_for(tmp_path, save_interval_s=0.001)
    replay = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    for _ in range(12):
        replay.step({StreamId("a", "b"): 20.0, StreamId("a", "c"): 21.0})
    store = QualityStore(tmp_path / QUALITY_DB)
    assert set(store.load_states()) == {StreamId("a", "b"), StreamId("a", "c")}
    replay.registry = StreamRegistry()  # both evicted
    replay.step({StreamId("a", "b"): 20.0})
    assert set(store.load_states()) == {StreamId("a", "b")}
    store.close()


def _last(values: np.ndarray) -> np.ndarray:
    observed = ~np.isnan(values)
    last = values.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)
    return values[np.arange(len(values)), last].astype(np.float64)


def test_a_clean_stop_saves_what_the_last_ticks_scored(tmp_path: Path) -> None:
    bundle = FakeBundle(spread=0.5)
    settings = settings_for(tmp_path, save_interval_s=1e9)  # no save between ticks
    stream = StreamId("a", "b")
    replay = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    for k in range(20):
        replay.step({stream: 20.0 + k % 3})
    scored = int(replay.fc.quality.skill.summary()["n"][0, 0])
    assert scored > 0
    store = QualityStore(tmp_path / QUALITY_DB)
    assert store.load_states() == {}  # nothing saved yet
    replay.fc.close()
    [state] = store.load_states().values()
    store.close()
    # A stream forecast but not yet scored is saved too (it is known as forecast, for the
    # stale report after a restart).
    other = Replay(Forecaster(bundle, settings_for(tmp_path / "other", save_interval_s=1e9)))  # type: ignore[arg-type]
    for k in range(9):  # the first forecast comes with the 8th bin; nothing scored yet
        other.step({stream: 20.0 + k % 3})
    assert int(other.fc.quality.skill.summary()["n"][0, 0]) == 0
    other.fc.close()
    other_store = QualityStore(tmp_path / "other" / QUALITY_DB)
    [saved] = other_store.load_states().values()
    other_store.close()
    assert saved["forecast"] is True

    restarted = Forecaster(bundle, settings)  # type: ignore[arg-type]
    again = Replay(restarted)
    again.registry, again.k = replay.registry, replay.k
    again.step({stream: 20.0})
    assert int(restarted.quality.skill.summary()["n"][0, 0]) == scored
    assert state["interval"] == INTERVAL


def test_evicted_streams_lose_their_retained_anomaly_and_home_assistant_entities(
    tmp_path: Path,
) -> None:
    bundle = FakeBundle(spread=0.5)
    settings = settings_for(tmp_path, save_interval_s=0.001)
    settings = settings.model_copy(
        update={"homeassistant": settings.homeassistant.model_copy(update={"enabled": True})}
    )
    kept, evicted = StreamId("a", "b"), StreamId("a", "c")
    replay = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    for _ in range(12):
        replay.step({kept: 20.0, evicted: 21.0})
    configs = [m["topic"] for m in replay.link.on("homeassistant/") if m["payload"] is not None]
    assert len(configs) == 4  # a sensor and a binary_sensor per stream
    replay.link.clear()
    fresh = StreamRegistry()  # `evicted` is evicted: the registry holds `kept` only
    ts = START + replay.k * INTERVAL
    fresh.insert(kept, [Reading(ts, 20.0)], arrival_ts=ts)
    replay.registry = fresh
    replay.step({kept: 20.0})
    removed = {m["topic"] for m in replay.link.published if m["payload"] is None}
    assert removed == {*config_topics(settings, evicted), "anomalies/a/c"}
    assert all(m["retain"] for m in replay.link.published if m["payload"] is None)
    store = QualityStore(tmp_path / QUALITY_DB)
    assert store.discovery_topics() == set(config_topics(settings, kept))
    assert set(store.load_states()) == {kept}
    store.close()
    # A new run does not remove them again, nor touch the kept stream's entities.
    replay.link.clear()
    again = Replay(Forecaster(bundle, settings))  # type: ignore[arg-type]
    again.registry, again.k = replay.registry, replay.k
    again.step({kept: 20.0})
    assert [m for m in again.link.published if m["payload"] is None] == []


def test_long_heads_calibrate_by_rate_over_root_h_per_step() -> None:
    # A forecast's h steps are scored one by one but are not independent trials: each step of
    # the 64-step head moves its factor an eighth as far as a step of the 1-step head.
    from moecast.agent.forecast.calibration import Calibrator

    levels = np.array(LEVELS)
    calibrator = Calibrator((1, 64), levels, rate=0.05, capacity=1)
    quantiles = np.tile(np.asarray(Z), (2, 1))  # a value of 5 misses every upper level
    calibrator.update(np.array([0, 0]), np.array([0, 1]), quantiles, np.array([5.0, 5.0]))
    short, long = calibrator.log_scale[0]
    upper = levels > 0.5
    np.testing.assert_allclose(short[upper], 0.05 * levels[upper])  # miss - target = t
    np.testing.assert_allclose(long[upper], 0.05 / 8 * levels[upper])
    np.testing.assert_allclose(short[~upper & (levels < 0.5)], -0.05 * levels[levels < 0.5])


def _steps(slots: np.ndarray, issued_at: float) -> Steps:
    n = slots.size
    return Steps(
        slots.astype(np.int32),
        np.zeros(n, np.int8),
        np.arange(n, dtype=np.float64),
        np.zeros(n, np.float32),
        np.full(n, issued_at),
        np.zeros((n, 2), np.float32),
    )


def test_pending_steps_come_out_in_the_order_added_and_none_is_lost_by_merging() -> None:
    pending = PendingSteps(2)
    rng = np.random.default_rng(0)
    added = []
    for tick in range(3 * PendingSteps.MAX_CHUNKS):
        slots = rng.integers(0, 5, int(rng.integers(1, 20)))
        added.append(_steps(slots, float(tick)))
        pending.add(added[-1])
        # Each tick takes out one stream's steps: the chunks shrink unevenly.
        pending.remove(lambda steps, gone=tick % 5: steps.slot == gone)
        assert len(pending.chunks) <= PendingSteps.MAX_CHUNKS
    expected = Steps.concat(added)
    removed = np.zeros(len(expected), bool)
    for tick in range(len(added)):
        removed |= (expected.issued_at <= tick) & (expected.slot == tick % 5)
    expected = expected.take(~removed)
    assert len(pending) == len(expected)
    everything = pending.remove(lambda steps: np.ones(len(steps), bool))
    assert len(pending) == 0
    assert pending.nbytes == 0
    for name in Steps.__slots__:
        np.testing.assert_array_equal(getattr(everything, name), getattr(expected, name))


def test_pending_steps_are_held_in_small_chunks_of_their_own() -> None:
    pending = PendingSteps(2)
    big = _steps(np.arange(2 * PendingSteps.CHUNK_STEPS + 5) % 7, 0.0)
    pending.add(big, _steps(np.arange(3), 1.0))
    assert [len(c) for c in pending.chunks] == [PendingSteps.CHUNK_STEPS] * 2 + [8]
    # No chunk is a view: none keeps `big` alive once the caller lets it go.
    assert all(getattr(c, name).base is None for c in pending.chunks for name in Steps.__slots__)
