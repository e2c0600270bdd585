"""The forecasting tick: grids, one batched model run, forecast and alert messages, and the
CLI's bundle choice. Uses a real (untrained, seeded) nano bundle built once per module."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from moecast.agent import cli
from moecast.agent.forecast import tick as forecaster
from moecast.agent.forecast.encoding import PayloadEncoder
from moecast.agent.forecast.encoding import median_weights as _median_weights
from moecast.agent.forecast.encoding import round_significant as _round_significant
from moecast.agent.forecast.grid import to_grid
from moecast.agent.forecast.tick import STALE_INTERVALS, STALE_MIN_S, Forecaster, GridRow
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import Agent, TickContext
from moecast.agent.settings import AgentSettings, load_settings

from moecast.bundle.format import DEV_PUBLIC_KEY, Bundle, load_bundle
from tests.agent.conftest import AgentProcess, Broker, Client, wait_for

HORIZONS = (1, 8, 32, 64)
NOW = 1_764_000_000.0


def build_nano_bundle(out: Path, seed: int, model_version: int) -> Path:
    torch = pytest.importorskip("torch", reason="building the test bundle needs torch")
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel
    from moecast.quantization.bundle import DEV_PRIVATE_KEY, build_bundle, load_private_key

    torch.manual_seed(seed)
    model = MoecastModel(preset("nano"))
    key = load_private_key(DEV_PRIVATE_KEY)
    return build_bundle(model, out, key, model_version=model_version)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nano_bundle(tmp_path_factory.mktemp("bundle") / "nano", 0, 1)


@pytest.fixture(scope="module")
def bundle_v2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nano_bundle(tmp_path_factory.mktemp("bundle") / "nano-v2", 1, 2)


@pytest.fixture
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir, [DEV_PUBLIC_KEY])


@pytest.fixture
def bundle_v2(bundle_v2_dir: Path) -> Bundle:
    return load_bundle(bundle_v2_dir, [DEV_PUBLIC_KEY])


@pytest.fixture
def runs(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every batch the bundle is run on."""
    batches: list[np.ndarray] = []
    real_run = bundle.run

    def spy(values: np.ndarray) -> dict[str, np.ndarray]:
        batches.append(values)
        return real_run(values)

    monkeypatch.setattr(bundle, "run", spy)
    return batches


class RecordingLink:
    """Stands in for MqttLink: keeps what would have been published."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(
        self, topic: str, payload: str, qos: int, retain: bool = False, expiry_s: int | None = None
    ) -> None:
        message = {"topic": topic, "payload": json.loads(payload), "qos": qos, "retain": retain}
        self.published.append({**message, "expiry_s": expiry_s})

    def on(self, prefix: str) -> list[dict[str, Any]]:
        return [m for m in self.published if m["topic"].startswith(prefix)]


def settings_with(tmp_path: Path, **overrides: Any) -> AgentSettings:
    return load_settings(None, storage_dir=tmp_path, **overrides)


def tick(
    fc: Forecaster, registry: StreamRegistry, now: float = NOW
) -> tuple[RecordingLink, AgentMetrics]:
    link, metrics = RecordingLink(), AgentMetrics()
    fc(TickContext(now, fc.settings, registry, link, metrics))  # type: ignore[arg-type]
    return link, metrics


def regular(n: int, level: float = 20.0, interval: float = 60.0, seed: int = 0) -> list[Reading]:
    rng = np.random.default_rng(seed)
    start = NOW - n * interval
    return [Reading(start + i * interval, level + float(rng.normal())) for i in range(n)]


def test_many_streams_share_model_runs(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path
) -> None:
    registry = StreamRegistry()
    for i in range(50):
        registry.insert(StreamId(f"dev{i}", "temp"), regular(200, level=i, seed=i))
    settings = settings_with(tmp_path)
    link, metrics = tick(Forecaster(bundle, settings), registry)

    full, rest = divmod(50, forecaster.MAX_BATCH)
    last = [(rest, 128)] if rest else []
    assert [batch.shape for batch in runs] == [(forecaster.MAX_BATCH, 128)] * full + last
    forecasts = link.on("forecasts/")
    assert sorted(m["topic"] for m in forecasts) == sorted(
        f"forecasts/dev{i}/temp" for i in range(50)
    )
    assert all(m["qos"] == 1 and m["retain"] and m["expiry_s"] == 900 for m in forecasts)
    snapshot = metrics.snapshot()
    assert snapshot["streams_forecast"] == 50
    assert snapshot["forecast_tick_s"]["count"] == snapshot["forecast_inference_s"]["count"] == 1


def test_forecast_steps_follow_the_grid_and_quantiles_are_ordered(
    bundle: Bundle, tmp_path: Path
) -> None:
    registry = StreamRegistry()
    stream = StreamId("boiler", "temp")
    registry.insert(stream, regular(300))
    link, _ = tick(Forecaster(bundle, settings_with(tmp_path)), registry)

    [message] = link.on("forecasts/boiler/temp")
    payload = message["payload"]
    levels = bundle.manifest.quantiles
    assert payload["stream"] == "boiler/temp"
    assert payload["model_version"] == bundle.manifest.model_version
    assert payload["issued_at"] == NOW
    assert payload["interval_s"] == 60.0  # detected
    assert payload["grid_end"] == NOW - 60.0  # the newest reading's bin
    assert payload["quantile_levels"] == levels
    assert sorted(map(int, payload["horizons"])) == list(HORIZONS)
    for h in HORIZONS:
        forecast = payload["horizons"][str(h)]
        assert forecast["ts"] == [payload["grid_end"] + step * 60.0 for step in range(1, h + 1)]
        quantiles = np.array([forecast["quantiles"][str(level)] for level in levels]).T
        assert quantiles.shape == (h, len(levels))
        assert (np.diff(quantiles, axis=1) >= 0).all()
        assert forecast["median"] == forecast["quantiles"]["0.5"]
        assert 10 < np.median(quantiles) < 30  # on the scale of the data


def test_rows_are_the_streams_grids_left_padded(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    ts = NOW - 3000 + np.cumsum(rng.uniform(2, 18, size=200))  # irregular, ~10 s apart
    values = np.sin(ts / 300)
    registry = StreamRegistry()
    readings = [Reading(t, v) for t, v in zip(ts, values, strict=True)]
    registry.insert(StreamId("site", "irregular"), readings)
    registry.insert(StreamId("site", "short"), regular(20))
    rules = [
        {"pattern": "site/irregular", "interval_s": 30, "context_points": 64},
        {"pattern": "site/short", "interval_s": 60},
    ]
    fc = Forecaster(bundle, settings_with(tmp_path, streams=rules))
    link, _ = tick(fc, registry, now=float(ts[-1]) + 30)  # while both streams are fresh

    [batch] = runs
    order = [StreamId("site", "irregular"), StreamId("site", "short")]
    assert registry.streams() == order
    # The registry holds values in float32, the model's precision.
    grid_end, grid = to_grid(ts, values.astype(np.float32), 30.0, 64)
    assert np.isnan(batch[0, :64]).all()
    np.testing.assert_array_equal(batch[0, 64:], grid)
    assert np.isnan(batch[1, :108]).all()
    assert not np.isnan(batch[1, 108:]).any()
    [irregular] = link.on("forecasts/site/irregular")
    assert irregular["payload"]["interval_s"] == 30.0
    assert irregular["payload"]["grid_end"] == grid_end


def test_a_detected_interval_grids_the_same_from_the_whole_buffer_and_from_its_tail(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path
) -> None:
    # The first tick detects the interval on the whole buffer; later ones copy only the
    # readings their grid covers. Both must give the grid of the whole buffer.
    rng = np.random.default_rng(2)
    ts = NOW - 12_000 + np.cumsum(rng.uniform(9.5, 10.5, size=1000))  # irregular, ~10 s apart
    # float32 values, as the registry holds them
    values = (np.cos(ts / 500) + rng.normal(0, 0.1, ts.size)).astype(np.float32)
    stream = StreamId("site", "jittery")
    registry = StreamRegistry()
    registry.insert(stream, [Reading(t, v) for t, v in zip(ts, values, strict=True)])
    context = bundle.manifest.context_length
    fc = Forecaster(bundle, settings_with(tmp_path, forecast={"publish": "every_tick"}))
    tick(fc, registry, now=float(ts[-1]) + 5)
    late = [Reading(float(ts[-1]) + 7.0, 9.0), Reading(float(ts[-1]) + 19.0, -9.0)]
    registry.insert(stream, late)
    tick(fc, registry, now=float(ts[-1]) + 20)
    first, second = runs
    _, grid = to_grid(ts, values, 10.0, context)
    np.testing.assert_array_equal(first[0], grid)
    every_ts = np.append(ts, [r.ts for r in late])
    every_value = np.append(values, [r.value for r in late])
    _, grid = to_grid(every_ts, every_value, 10.0, context)
    np.testing.assert_array_equal(second[0], grid)
    assert not np.array_equal(first[0], second[0])


def test_streams_with_too_little_data_are_skipped_and_counted(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path
) -> None:
    registry = StreamRegistry()
    registry.insert(StreamId("a", "two_readings"), regular(2))  # no interval to detect
    registry.insert(StreamId("a", "five_bins"), regular(5))
    registry.insert(StreamId("a", "enough"), regular(8))
    settings = settings_with(tmp_path, streams=[{"pattern": "a/five_bins", "interval_s": 60}])
    link, metrics = tick(Forecaster(bundle, settings), registry)

    assert [batch.shape[0] for batch in runs] == [1]
    assert [m["topic"] for m in link.published] == ["forecasts/a/enough"]
    snapshot = metrics.snapshot()
    assert snapshot["forecast_skipped"] == {"no_interval": 1, "too_few_points": 1}
    assert snapshot["streams_forecast"] == 1

    runs.clear()
    nothing_due = StreamRegistry()
    nothing_due.insert(StreamId("a", "five_bins"), regular(5))
    link, _ = tick(Forecaster(bundle, settings), nothing_due)
    assert runs == []
    assert link.published == []


def test_huge_batches_are_chunked(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forecaster, "MAX_BATCH", 16)
    registry = StreamRegistry()
    for i in range(40):
        registry.insert(StreamId("dev", f"s{i}"), regular(30, seed=i))
    link, _ = tick(Forecaster(bundle, settings_with(tmp_path)), registry)
    assert [batch.shape[0] for batch in runs] == [16, 16, 8]
    assert len(link.published) == 40


def test_alerts_are_raised_and_cleared(bundle: Bundle, tmp_path: Path) -> None:
    stream = StreamId("tank", "level")
    rule = {"name": "overflow", "above": 50, "within_steps": 8, "probability": 0.5}
    settings = settings_with(
        tmp_path,
        streams=[{"pattern": "tank/*", "interval_s": 60, "context_points": 16, "alerts": [rule]}],
    )
    fc = Forecaster(bundle, settings)
    registry = StreamRegistry()
    registry.insert(stream, regular(16, level=100.0))
    link, _ = tick(fc, registry)
    [raised] = link.on("alerts/tank/level")
    assert raised["qos"] == 1
    assert not raised["retain"]
    assert raised["payload"]["state"] == "raised"
    assert raised["payload"]["rule"] == "overflow"
    assert raised["payload"]["first_crossing_ts"] == NOW  # grid_end + one step

    link, _ = tick(fc, registry, NOW + 60)
    assert link.on("alerts/") == []  # still raised: no new event

    registry.insert(stream, [Reading(NOW + i * 60.0, 0.0 + i % 2) for i in range(16)])
    link, _ = tick(fc, registry, NOW + 1000)
    [cleared] = link.on("alerts/tank/level")
    assert cleared["payload"]["state"] == "cleared"


def test_rounding_keeps_six_significant_digits() -> None:
    values = np.array([123.456789, -0.000123456789, 98765432.1, 0.0, 1.0, 20.1234549])
    assert _round_significant(values).tolist() == [
        123.457,
        -0.000123457,
        98765400.0,
        0.0,
        1.0,
        20.1235,
    ]


def test_rounding_small_values_the_fast_way_equals_the_general_way() -> None:
    # Below 10**6 every value takes the table path; one value above sends the whole array
    # down the general path, which must give the same digits.
    rng = np.random.default_rng(0)
    for scale in (1e-30, 1e-3, 1.0, 1e5):
        values = rng.normal(size=200) * scale
        general = _round_significant(np.append(values, 1e12))[:-1]
        np.testing.assert_array_equal(_round_significant(values), general)
    assert _round_significant(np.float64(3.14159265)) == 3.14159


def test_the_median_is_the_middle_level_or_interpolated() -> None:
    assert _median_weights(np.array([0.1, 0.5, 0.9])).tolist() == [0.0, 1.0, 0.0]
    assert _median_weights(np.array([0.1, 0.4, 0.6, 0.9])) == pytest.approx([0, 0.5, 0.5, 0])
    assert _median_weights(np.array([0.6, 0.9])).tolist() == [1.0, 0.0]  # outside: the nearest


# Payload text: orjson writes the numbers; a dict of rounded values through json is the
# reference.

POSITIONAL_EDGES = [
    0.0,
    -0.0,
    1e-4,
    -0.000100000049,
    0.00099999951,  # rounds up to 0.001: the exponent moves
    9.999995,
    999999.5,  # rounds up to 1000000.0
    123456789.0,
    9.99999e15,
    -98765432.1,
    20.1234549,
    1 / 3,
    100.0,
    1234.5,
    0.5,
    10_000.000001,
    -3e-7,  # written with an exponent
    2.5e17,
]

decimal_like = st.builds(
    lambda digits, exponent: digits * 10.0**exponent,
    st.integers(-(10**7), 10**7),
    st.integers(-12, 16),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e300, 1e300, allow_nan=False) | decimal_like, min_size=1))
@example(POSITIONAL_EDGES)
def test_numbers_are_written_rounded_and_read_back_exactly(values: list[float]) -> None:
    array = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = _round_significant(array)
    rounded = rounded[np.isfinite(rounded)]  # subnormals overflow the power of ten
    if rounded.size == 0:
        return
    text = orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY)
    assert json.loads(text) == rounded.tolist()
    # At most six significant digits survive: a forecast of float32 noise stays compact (in
    # the range where the powers of ten involved are exact floats).
    assert all(
        len(repr(v).split("e")[0].replace("-", "").replace(".", "").strip("0")) <= 6
        for v in rounded.tolist()
        if 1e-4 <= abs(v) < 1e16
    )


def reference_payload(
    row: GridRow, quantiles: dict[int, np.ndarray], levels: list[float], version: int
) -> str:
    """The payload the way the contract reads: a dict, rounded values, one json.dumps."""
    weights = _median_weights(np.array(levels))
    horizons = {}
    for h, q in quantiles.items():
        steps = row.grid_end + row.interval_s * np.arange(1, h + 1)
        horizons[str(h)] = {
            "ts": np.round(steps, 6).tolist(),
            "median": _round_significant(q @ weights).tolist(),
            "quantiles": {
                str(level): column
                for level, column in zip(levels, _round_significant(q).T.tolist(), strict=True)
            },
        }
    payload = {
        "stream": str(row.stream),
        "model_version": version,
        "issued_at": round(NOW + 0.1234, 3),
        "interval_s": row.interval_s,
        "grid_end": row.grid_end,
        "quantile_levels": levels,
        "horizons": horizons,
    }
    return json.dumps(payload)


@pytest.mark.parametrize(
    "levels", [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], [0.05, 0.25, 0.75, 0.95]]
)
def test_payloads_hold_the_rounded_values_the_contract_states(levels: list[float]) -> None:
    rng = np.random.default_rng(3)
    n = 40
    # Each stream on its own scale, from 1e-3 to 1e9; float32 like the model's outputs.
    scale = 10.0 ** rng.integers(-3, 10, size=(n, 1, 1))
    quantiles = {
        h: np.sort(
            (rng.normal(size=(n, h, len(levels))) * scale).astype(np.float32).astype(np.float64),
            axis=-1,
        )
        for h in HORIZONS
    }
    quantiles[8][1] = 0.0  # all zeros
    quantiles[32][2, 5] = np.sort(rng.choice(POSITIONAL_EDGES, len(levels)) + 0.0)
    quantiles[1][3, 0, 0] = -3e-7  # repr writes an exponent: this stream goes through json
    quantiles[64][4, -1, -1] = 2.5e17  # and so does this one
    rows = [
        GridRow(
            StreamId(f"dev{i}", "temp"),
            [60.0, 0.25, 7.3, 3600.0][i % 4],
            NOW - 60.0 * (i % 3) + [0.0, 0.75][i % 2],
            np.zeros(1, dtype=np.float32),
            [],
        )
        for i in range(n)
    ]
    encoder = PayloadEncoder(HORIZONS, levels)
    payloads = encoder.encode(rows, quantiles, NOW + 0.1234, 7)
    for i, (row, payload) in enumerate(zip(rows, payloads, strict=True)):
        mine = {h: q[i] for h, q in quantiles.items()}
        assert orjson.loads(payload) == json.loads(reference_payload(row, mine, levels, 7)), i


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("with_extras", [False, True])
def test_spliced_payloads_are_the_bytes_orjson_writes_for_the_payload_dict(
    compact: bool, with_extras: bool
) -> None:
    """The encoder splices each payload from a block's pieces; the oracle is the payload's
    dict written by orjson in one call, as the encoder did before splicing."""
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    rng = np.random.default_rng(5)
    n = 7
    scale = 10.0 ** rng.integers(-4, 8, size=(n, 1, 1))
    quantiles = {
        h: np.sort(rng.normal(size=(n, h, len(levels))) * scale, axis=-1) for h in HORIZONS
    }
    rows = [
        GridRow(
            StreamId(f"dev-{i}.x", "t_emp"),
            [60.0, 0.25, 7.3][i % 3],
            NOW - 60.0 * (i % 2),
            np.zeros(1, dtype=np.float32),
            [],
        )
        for i in range(n)
    ]
    extras = None
    if with_extras:
        extras = [
            {"skill": {"n": i, "mae": np.array([0.5, np.nan])}} if i % 3 else {} for i in range(n)
        ]
    encoder = PayloadEncoder(HORIZONS, levels, compact)
    payloads = encoder.encode(rows, quantiles, NOW + 0.1234, 7, extras)

    keep = [0, 8] if compact else list(range(len(levels)))
    digits = 4 if compact else 6
    weights = _median_weights(np.array(levels))
    for i, row in enumerate(rows):
        horizons = {}
        for h in HORIZONS:
            q = quantiles[h][i]
            head: dict[str, Any] = {}
            if not compact:
                head["ts"] = np.round(row.grid_end + row.interval_s * np.arange(1.0, h + 1), 6)
            head["median"] = _round_significant(q @ weights, digits)
            columns = np.ascontiguousarray(_round_significant(q[:, keep], digits).T)
            head["quantiles"] = {str(levels[k]): c for k, c in zip(keep, columns, strict=True)}
            horizons[str(h)] = head
        payload = {
            "stream": str(row.stream),
            "model_version": 7,
            "issued_at": round(NOW + 0.1234, 3),
            "interval_s": row.interval_s,
            "grid_end": row.grid_end,
            "quantile_levels": [levels[k] for k in keep],
            "horizons": horizons,
            **(extras[i] if extras else {}),
        }
        assert payloads[i] == orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), i
    assert encoder.encode([], {h: q[:0] for h, q in quantiles.items()}, NOW, 7) == []


# Staleness.


def test_streams_nothing_arrived_for_are_skipped_as_stale_and_logged_once(
    bundle: Bundle, runs: list[np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = StreamRegistry()
    registry.insert(StreamId("a", "fresh"), regular(100), arrival_ts=NOW - 60)
    silent_s = STALE_INTERVALS * 60.0 + 10  # past "auto" for a 60 s stream (16 intervals)
    registry.insert(StreamId("a", "silent"), regular(100), arrival_ts=NOW - silent_s)
    # A 1 s stream silent for 5 minutes: 300 intervals, but within the auto floor of 600 s.
    fast = [Reading(NOW - 300 - 100 + i, 1.0 * i) for i in range(100)]
    registry.insert(StreamId("a", "fast"), fast, arrival_ts=NOW - 300)
    assert STALE_INTERVALS * 60.0 > STALE_MIN_S > 300

    fc = Forecaster(bundle, settings_with(tmp_path))
    with caplog.at_level(logging.INFO, logger=forecaster.__name__):
        link, metrics = tick(fc, registry)
        tick(fc, registry, NOW + 1)
    assert sorted(m["topic"] for m in link.on("forecasts/")) == [
        "forecasts/a/fast",
        "forecasts/a/fresh",
    ]
    assert metrics.snapshot()["forecast_skipped"] == {"stale": 1}
    assert [batch.shape[0] for batch in runs] == [2]
    # Logged once, naming the setting, however many ticks it stays silent.
    stale_lines = [r.getMessage() for r in caplog.records if "a/silent" in r.getMessage()]
    assert len(stale_lines) == 1
    assert "forecast.stale_after_s" in stale_lines[0]

    # The stream is forecast again as soon as readings arrive, whatever their event time.
    registry.insert(StreamId("a", "silent"), [Reading(NOW - 30, 20.0)], arrival_ts=NOW)
    link, metrics = tick(fc, registry, NOW + 2)
    assert [m["topic"] for m in link.on("forecasts/")] == ["forecasts/a/silent"]
    assert metrics.snapshot()["forecast_skipped"] == {"unchanged": 2}

    # A configured cutoff applies to every stream, whatever its interval.
    strict = Forecaster(bundle, settings_with(tmp_path, forecast={"stale_after_s": 120}))
    link, metrics = tick(strict, registry)
    assert sorted(m["topic"] for m in link.on("forecasts/")) == [
        "forecasts/a/fresh",
        "forecasts/a/silent",
    ]
    assert metrics.snapshot()["forecast_skipped"] == {"stale": 1}  # the fast one, 300 s ago


def test_replayed_history_is_forecast_from_its_last_reading(bundle: Bundle, tmp_path: Path) -> None:
    """A month of hourly readings stamped weeks ago, arriving now: judged by arrival, the
    stream is live, and its forecast starts after its last reading."""
    registry = StreamRegistry()
    month_ago = NOW - 60 * 86_400
    history = [Reading(month_ago + 3600.0 * i, 20 + np.sin(i / 4)) for i in range(24 * 30)]
    registry.insert(StreamId("hall", "temp"), history, arrival_ts=NOW - 5)
    link, metrics = tick(Forecaster(bundle, settings_with(tmp_path)), registry)
    [forecast] = link.on("forecasts/hall/temp")
    assert forecast["payload"]["grid_end"] == history[-1].ts
    assert forecast["payload"]["interval_s"] == 3600.0
    assert metrics.snapshot()["forecast_skipped"] == {}


def test_an_unchanged_stream_is_not_republished(bundle: Bundle, tmp_path: Path) -> None:
    registry = StreamRegistry()
    stream = StreamId("boiler", "temp")
    registry.insert(stream, regular(100), arrival_ts=NOW)
    fc = Forecaster(bundle, settings_with(tmp_path))
    assert len(tick(fc, registry)[0].on("forecasts/")) == 1
    link, metrics = tick(fc, registry, NOW + 60)
    assert link.published == []
    assert metrics.snapshot()["forecast_skipped"] == {"unchanged": 1}
    # A reading in a new bin moves the origin: published again.
    registry.insert(stream, [Reading(NOW + 30, 21.0)], arrival_ts=NOW + 30)
    assert len(tick(fc, registry, NOW + 60)[0].on("forecasts/")) == 1
    # Half way to its expiry the retained forecast is renewed, origin unchanged or not.
    assert len(tick(fc, registry, NOW + 60 + 450)[0].on("forecasts/")) == 1
    # "every_tick" restores the old behaviour.
    every = Forecaster(bundle, settings_with(tmp_path, forecast={"publish": "every_tick"}))
    assert [len(tick(every, registry, NOW + 60 + i)[0].published) for i in range(2)] == [1, 1]


def test_a_model_on_trial_runs_on_unchanged_streams_without_republishing(
    bundle: Bundle, bundle_v2: Bundle, tmp_path: Path
) -> None:
    """A trial counts ticks that ran the model: after a swap, unchanged streams still go
    through it for updates.trial_ticks ticks, but only the first (new version) is published."""
    registry = StreamRegistry()
    registry.insert(StreamId("boiler", "temp"), regular(100), arrival_ts=NOW)
    settings = settings_with(tmp_path, updates={"trial_ticks": 2})
    fc = Forecaster(bundle, settings)
    tick(fc, registry)
    assert fc(TickContext(NOW + 1, settings, registry, RecordingLink(), AgentMetrics())).runs == 0
    fc.use_bundle(bundle_v2)
    outcomes, links = [], []
    for i in range(4):
        link = RecordingLink()
        context = TickContext(NOW + 2 + i, settings, registry, link, AgentMetrics())
        outcomes.append(fc(context))  # type: ignore[arg-type]
        links.append(len(link.published))
    assert [o.runs for o in outcomes] == [1, 1, 0, 0]
    assert links == [1, 0, 0, 0]
    skipped = [dict(o.skipped) for o in outcomes]
    assert skipped == [{}, *[{"unchanged": 1}] * 3]


def test_stream_bounds_clip_medians_and_quantiles(bundle: Bundle, tmp_path: Path) -> None:
    registry = StreamRegistry()
    rng = np.random.default_rng(3)
    # A vibration amplitude near zero: an unclipped 80 % interval dips below it.
    noisy = [Reading(t, abs(float(rng.normal(0, 1)))) for t, _ in regular(200)]
    registry.insert(StreamId("fan", "vibration"), noisy, arrival_ts=NOW)
    registry.insert(StreamId("fan", "rpm"), noisy, arrival_ts=NOW)
    rules = [{"pattern": "*/vibration", "min": 0.0, "max": 1.5}]
    link, _ = tick(Forecaster(bundle, settings_with(tmp_path, streams=rules)), registry)
    by_topic = {m["topic"]: m["payload"] for m in link.on("forecasts/")}

    def values(payload: dict[str, Any]) -> np.ndarray:
        found = []
        for steps in payload["horizons"].values():
            found += steps["median"]
            for column in steps["quantiles"].values():
                found += column
        return np.array(found)

    unclipped = values(by_topic["forecasts/fan/rpm"])
    assert unclipped.min() < 0 or unclipped.max() > 1.5  # the rule has something to clip
    clipped = values(by_topic["forecasts/fan/vibration"])
    assert clipped.min() >= 0
    assert clipped.max() <= 1.5
    with pytest.raises(ValueError, match="must be below max"):
        settings_with(tmp_path, streams=[{"pattern": "*", "min": 2, "max": 1}])


def test_compact_payloads_keep_the_median_and_the_80_percent_interval(
    bundle: Bundle, tmp_path: Path
) -> None:
    registry = StreamRegistry()
    registry.insert(StreamId("boiler", "temp"), regular(200), arrival_ts=NOW)
    full_fc = Forecaster(bundle, settings_with(tmp_path))
    compact_fc = Forecaster(bundle, settings_with(tmp_path, forecast={"payload": "compact"}))
    [full] = tick(full_fc, registry)[0].on("forecasts/")
    [compact] = tick(compact_fc, registry)[0].on("forecasts/")
    full_p, compact_p = full["payload"], compact["payload"]
    assert compact_p["quantile_levels"] == [0.1, 0.9]
    assert set(compact_p) == set(full_p)
    for h in HORIZONS:
        steps, reference = compact_p["horizons"][str(h)], full_p["horizons"][str(h)]
        assert set(steps) == {"median", "quantiles"}
        assert list(steps["quantiles"]) == ["0.1", "0.9"]
        np.testing.assert_allclose(steps["median"], reference["median"], rtol=1e-3)
        np.testing.assert_allclose(
            steps["quantiles"]["0.9"], reference["quantiles"]["0.9"], rtol=1e-3
        )
    full_bytes = len(orjson.dumps(full_p))
    assert len(orjson.dumps(compact_p)) < full_bytes / 3


# Swapping the model.


def test_use_bundle_swaps_the_model_from_the_next_tick(
    bundle: Bundle, bundle_v2: Bundle, tmp_path: Path
) -> None:
    registry = StreamRegistry()
    registry.insert(StreamId("boiler", "temp"), regular(200))
    fc = Forecaster(bundle, settings_with(tmp_path))
    [before] = tick(fc, registry)[0].on("forecasts/")
    fc.use_bundle(bundle_v2)
    assert (fc.bundle, fc.model_version) == (bundle_v2, 2)
    [after] = tick(fc, registry)[0].on("forecasts/")
    assert (before["payload"]["model_version"], after["payload"]["model_version"]) == (1, 2)
    # A different model (another seed), so different numbers: the new bundle really ran.
    assert before["payload"]["horizons"] != after["payload"]["horizons"]

    fc.bundle = bundle  # plain assignment swaps everything too
    [again] = tick(fc, registry)[0].on("forecasts/")
    assert again["payload"] == {**before["payload"]}


# End to end: a real broker, the agent with its forecaster ticking twice a second.


@pytest.fixture
def forecasting_agent(start_agent: Callable[..., Agent], bundle: Bundle) -> Callable[..., Agent]:
    def start(**overrides: Any) -> Agent:
        return start_agent(
            on_tick_for=lambda settings: Forecaster(bundle, settings),
            model_version=str(bundle.manifest.model_version),
            **overrides,
        )

    return start


def payloads(client: Client, topic: str) -> list[dict[str, Any]]:
    return [json.loads(payload) for payload in client.messages_on(topic)]


def test_readings_in_forecasts_and_alerts_out(
    forecasting_agent: Callable[..., Agent], client_factory: Callable[[str], Client]
) -> None:
    rule = {"name": "hot", "above": 50, "within_steps": 4, "probability": 0.5}
    forecasting_agent(
        # The readings below lie up to an hour back: not stale for this test.
        forecast={"cadence_s": 0.5, "stale_after_s": 86_400},
        streams=[{"pattern": "boiler/*", "interval_s": 10, "context_points": 16, "alerts": [rule]}],
    )
    watcher = client_factory("watcher")
    watcher.subscribe("forecasts/#")
    watcher.subscribe("alerts/#")
    publisher = client_factory("publisher")
    rng = np.random.default_rng(2)
    start = float(int(time.time() / 10) * 10 - 3000)
    times = start + np.cumsum(rng.uniform(3, 17, size=40))  # irregular, ~10 s apart
    publisher.wait_acked(
        {publisher.publish_reading("sensors/boiler/temp", t, 100 + rng.normal()) for t in times}
    )

    raised = wait_for(lambda: payloads(watcher, "alerts/boiler/temp"), what="a raised alert")
    assert raised[0]["state"] == "raised"
    assert raised[0]["rule"] == "hot"
    grid_end = float(np.ceil(times[-1] / 10) * 10)

    def forecasts_of_all_readings() -> list[dict[str, Any]]:
        forecasts = payloads(watcher, "forecasts/boiler/temp")
        return [f for f in forecasts if f["grid_end"] == grid_end]

    forecast = wait_for(forecasts_of_all_readings, what="a forecast of every reading")[-1]
    levels = forecast["quantile_levels"]
    assert levels == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert forecast["interval_s"] == 10.0
    assert forecast["model_version"] == 1
    for h in HORIZONS:
        steps = forecast["horizons"][str(h)]
        assert steps["ts"] == [forecast["grid_end"] + 10.0 * i for i in range(1, h + 1)]
        assert sorted(steps["quantiles"], key=float) == [str(level) for level in levels]
        assert all(len(column) == h for column in steps["quantiles"].values())

    late = client_factory("late")
    late.subscribe("forecasts/boiler/temp")
    wait_for(lambda: late.received, what="the retained forecast")
    assert late.received[0][2]  # retain flag

    later = times[-1] + np.cumsum(rng.uniform(3, 17, size=30))
    publisher.wait_acked(
        {publisher.publish_reading("sensors/boiler/temp", t, rng.normal()) for t in later}
    )
    wait_for(
        lambda: payloads(watcher, "alerts/boiler/temp")[-1]["state"] == "cleared",
        what="the alert to clear",
    )


def test_a_new_model_version_is_republished_on_the_status_topic(
    start_agent: Callable[..., Agent],
    bundle: Bundle,
    bundle_v2: Bundle,
    client_factory: Callable[[str], Client],
) -> None:
    status_topic = "moecast/agents/test-agent/status"
    watcher = client_factory("watcher")
    watcher.subscribe(status_topic)
    watcher.subscribe("forecasts/#")
    made: list[Forecaster] = []

    def make(settings: AgentSettings) -> Forecaster:
        made.append(Forecaster(bundle, settings))
        return made[-1]

    agent = start_agent(on_tick_for=make, model_version=1, forecast={"cadence_s": 0.5})
    [fc] = made

    def statuses() -> list[tuple[str, int | None]]:
        return [(s["state"], s["model_version"]) for s in payloads(watcher, status_topic)]

    wait_for(lambda: statuses() == [("online", 1)], what="the first status")
    publisher = client_factory("publisher")
    start = float(int(time.time()) - 200)
    publisher.wait_acked(
        {publisher.publish_reading("sensors/pump/rpm", start + 10 * i, i % 7) for i in range(20)}
    )

    def forecast_versions() -> list[int]:
        return [f["model_version"] for f in payloads(watcher, "forecasts/pump/rpm")]

    wait_for(lambda: 1 in forecast_versions(), what="a forecast of version 1")

    fc.use_bundle(bundle_v2)
    agent.link.set_model_version(fc.model_version)
    wait_for(lambda: statuses()[-1] == ("online", 2), what="the status of version 2")
    wait_for(lambda: forecast_versions()[-1] == 2, what="a forecast of version 2")
    late = client_factory("late")
    late.subscribe(status_topic)
    [(_, retained_payload, retained)] = wait_for(lambda: late.received, what="the retained status")
    assert retained
    assert json.loads(retained_payload)["model_version"] == 2

    agent.link.set_model_version(2)  # unchanged: nothing to republish
    time.sleep(0.3)
    assert statuses() == [("online", 1), ("online", 2)]

    # The broker holds the will sent with the connection (MQTT cannot change it later): a
    # connection dropped without a DISCONNECT reports the version of its connect; the
    # reconnect sends the new will, which the next drop reports.
    for will_version in (None, 2):
        agent.link._client.socket().shutdown(socket.SHUT_RDWR)
        wait_for(
            lambda v=will_version: statuses()[-2:] == [("offline", v), ("online", 2)],
            what=f"the will of version {will_version}, then online again",
        )


# The CLI: which bundle, and what happens when it is unusable.


def test_a_rejected_bundle_exits_2_without_a_traceback(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_with(tmp_path, bundle_path=bundle_dir)  # dev key not trusted
    assert cli.serve(settings) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bundle rejected: no trusted key configured")
    assert "Traceback" not in err


def test_the_default_bundle_needs_trust_dev_key(
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", bundle_dir)
    with caplog.at_level(logging.WARNING, logger="agent"):
        assert cli._forecaster_or_none(settings_with(tmp_path)) is None
    assert "trust_dev_key: true" in caplog.text
    trusted = cli._forecaster_or_none(settings_with(tmp_path, trust_dev_key=True))
    assert trusted is not None
    assert trusted.model_version == 1


def test_without_a_bundle_the_agent_only_ingests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "default_bundle"
    empty.mkdir()
    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", empty)
    with caplog.at_level(logging.WARNING, logger="agent"):
        assert cli._forecaster_or_none(settings_with(tmp_path, trust_dev_key=True)) is None
    assert "no bundle available" in caplog.text


def test_the_agent_process_forecasts_and_reports_its_model_version(
    bundle_dir: Path, broker: Broker, tmp_path: Path, client_factory: Callable[[str], Client]
) -> None:
    config = tmp_path / "agent.yaml"
    settings = {
        "agent_id": "fc-agent",
        "broker": {"url": broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "storage_dir": str(tmp_path / "agent"),
        "bundle_path": str(bundle_dir),
        "trust_dev_key": True,
        "forecast": {"cadence_s": 0.5},
        "log_level": "WARNING",
    }
    config.write_text(yaml.safe_dump(settings))
    watcher = client_factory("watcher")
    watcher.subscribe("moecast/agents/fc-agent/status")
    watcher.subscribe("forecasts/#")
    process = AgentProcess(config, tmp_path / "agent.log")
    process.start()
    try:
        status = wait_for(
            lambda: payloads(watcher, "moecast/agents/fc-agent/status"), 20, "status online"
        )[-1]
        assert status["state"] == "online"
        assert status["model_version"] == 1  # a number, as in forecasts
        publisher = client_factory("publisher")
        start = float(int(time.time()) - 600)
        publisher.wait_acked(
            {
                publisher.publish_reading("sensors/pump/rpm", start + 7 * i, 1.0 * i)
                for i in range(20)
            }
        )
        wait_for(lambda: payloads(watcher, "forecasts/pump/rpm"), 10, "a forecast")
        assert process.terminate() == 0
    finally:
        process.ensure_dead()


# The model thread.


class SlowBundle:
    """The quality kit's fake model, asleep `run_s` per run with the GIL released (as ONNX
    Runtime computes); records which rows each run got and fails on the run `fail_at`."""

    def __init__(self, run_s: float, fail_at: int | None = None) -> None:
        from tests.agent.quality_kit import FakeBundle

        self._inner = FakeBundle()
        self.manifest = self._inner.manifest
        self.run_s, self.fail_at = run_s, fail_at
        self.batches: list[np.ndarray] = []

    def run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.run_s)
        self.batches.append(values)
        if len(self.batches) == self.fail_at:
            raise RuntimeError("the model failed")
        return self._inner.run(values)


class SlowLink(RecordingLink):
    def __init__(self, publish_s: float) -> None:
        super().__init__()
        self.publish_s = publish_s

    def publish(self, topic: str, payload: str, qos: int, **kwargs: Any) -> None:
        time.sleep(self.publish_s)  # stands for the tick's own work on a block
        super().publish(topic, payload, qos, **kwargs)


def streams_in_blocks_of_four(monkeypatch: pytest.MonkeyPatch, streams: int) -> StreamRegistry:
    """`streams` regular streams, ticked in blocks of 4 with a model run per block."""
    monkeypatch.setattr(forecaster, "BLOCK", 4)
    monkeypatch.setattr(forecaster, "MAX_BATCH", 4)
    registry = StreamRegistry()
    for i in range(streams):
        registry.insert(StreamId(f"dev{i:02d}", "temp"), regular(100, level=i, seed=i))
    return registry


def test_the_next_block_runs_in_the_model_while_the_last_one_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = streams_in_blocks_of_four(monkeypatch, 12)  # three blocks, one model run each
    bundle = SlowBundle(run_s=0.3)
    fc = Forecaster(bundle, settings_with(tmp_path))  # type: ignore[arg-type]
    link, metrics = SlowLink(publish_s=0.06), AgentMetrics()
    started = time.perf_counter()
    fc(TickContext(NOW, fc.settings, registry, link, metrics))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    fc.close()
    # One after the other: 3 runs of 0.3 s, then 3 blocks of 4 publishes of 0.06 s, 1.62 s.
    # Overlapped, only the last block's publishing follows the last run: about 1.14 s.
    assert 1.1 < elapsed < 1.45
    published = [m["topic"] for m in link.on("forecasts/")]
    assert published == [f"forecasts/dev{i:02d}/temp" for i in range(12)]  # blocks in order
    tick_s = metrics.snapshot()["forecast_inference_s"]["sum"]
    assert tick_s == pytest.approx(0.9, abs=0.1)


def test_a_failed_model_run_fails_the_tick_and_the_blocks_after_it_are_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = streams_in_blocks_of_four(monkeypatch, 16)
    bundle = SlowBundle(run_s=0.05, fail_at=2)
    fc = Forecaster(bundle, settings_with(tmp_path))  # type: ignore[arg-type]
    link = SlowLink(publish_s=0.1)  # the first block's publishing outlasts the second run
    with pytest.raises(RuntimeError, match="the model failed"):
        fc(TickContext(NOW, fc.settings, registry, link, AgentMetrics()))  # type: ignore[arg-type]
    fc.close()
    assert len(link.on("forecasts/")) == 4  # the first block only
    assert len(bundle.batches) == 2  # the blocks after the failed run were not run


def test_the_model_inline_publishes_what_the_model_thread_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.agent.quality_kit import FakeBundle

    monkeypatch.setattr(forecaster, "BLOCK", 4)
    registry = StreamRegistry()
    for i in range(10):
        registry.insert(StreamId(f"dev{i}", "temp"), regular(100, level=i, seed=i))
    published = []
    for model_thread in (True, False):
        fc = Forecaster(FakeBundle(), settings_with(tmp_path / str(model_thread)), model_thread)  # type: ignore[arg-type]
        link, _ = tick(fc, registry)
        fc.close()
        published.append(link.on("forecasts/"))
    assert len(published[0]) == 10
    assert published[0] == published[1]

    failing = SlowBundle(run_s=0.0, fail_at=2)
    fc = Forecaster(failing, settings_with(tmp_path / "failing"), model_thread=False)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the model failed"):
        tick(fc, registry)
    assert len(failing.batches) == 2


def test_streams_are_run_in_blocks_as_they_are_gridded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forecaster, "BLOCK", 8)
    monkeypatch.setattr(forecaster, "MAX_BATCH", 100)  # a run per block
    registry = StreamRegistry()
    for i in range(20):
        registry.insert(StreamId(f"dev{i:02d}", "temp"), regular(100, level=i, seed=i))
    bundle = SlowBundle(run_s=0.0)
    fc = Forecaster(bundle, settings_with(tmp_path))  # type: ignore[arg-type]
    link, _ = tick(fc, registry)
    fc.close()
    assert [len(batch) for batch in bundle.batches] == [8, 8, 4]
    assert len(link.on("forecasts/")) == 20
