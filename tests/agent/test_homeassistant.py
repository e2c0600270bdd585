"""Home Assistant discovery and the quality payloads end to end, on a real mosquitto: an agent
with a fake bundle forecasts a live stream, publishes retained discovery configs, scores its
forecasts; a later run with discovery off removes the configs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from moecast.agent.forecast.quality_store import QUALITY_DB
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.readings import StreamId
from moecast.agent.ops.homeassistant import discovery_configs, safe_id
from moecast.agent.runtime import Agent
from moecast.agent.settings import load_settings

from tests.agent.conftest import Client, wait_for
from tests.agent.quality_kit import HORIZONS, LEVELS, FakeBundle

SENSOR = "homeassistant/sensor/test-agent/boiler_temp/config"
BINARY = "homeassistant/binary_sensor/test-agent/boiler_temp/config"


def render(template: str, value: dict[str, Any]) -> str:
    """As Home Assistant renders a template against a JSON payload (`value_json`)."""
    return jinja2.Environment().from_string(template).render(value_json=value)


@contextlib.contextmanager
def live_readings(client: Client, topic: str) -> Iterator[None]:
    """One reading a second (with 20 s of history first) until the block ends."""
    stop = threading.Event()
    now = time.time()
    for i in range(20):
        client.publish_reading(topic, now - 20 + i, 20.0 + 0.1 * (i % 3))

    def feed() -> None:
        i = 0
        while not stop.wait(0.5):
            client.publish_reading(topic, time.time(), 20.0 + 0.1 * (i % 3))
            i += 1

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retained(client: Client, prefix: str) -> dict[str, bytes]:
    with client._lock:
        return {
            t: p for t, p, was_retained in client.received if t.startswith(prefix) and was_retained
        }


def test_discovery_and_skill_end_to_end_then_removal(
    client_factory: Callable[[str], Client],
    start_agent: Callable[..., Agent],
    tmp_path: Path,
) -> None:
    bundle = FakeBundle(spread=0.5)
    agent = start_agent(
        on_tick_for=lambda settings: Forecaster(bundle, settings),  # type: ignore[arg-type]
        forecast={"cadence_s": 1.0},
        homeassistant={"enabled": True},
    )
    watcher = client_factory("watcher")
    watcher.subscribe("forecasts/#")
    with live_readings(client_factory("sensor"), "sensors/boiler/temp"):

        def scored() -> dict[str, Any] | None:
            for raw in reversed(watcher.messages_on("forecasts/boiler/temp")):
                payload = json.loads(raw)
                if payload["skill"]["n"][0] > 0:
                    return payload
            return None

        forecast = wait_for(scored, 20, "a forecast with scored steps")
    assert forecast["skill"]["horizons"] == list(HORIZONS)
    assert len(forecast["calibration"]) == len(HORIZONS)
    assert len(forecast["calibration"][0]) == len(LEVELS)

    ha = client_factory("homeassistant")
    ha.subscribe("homeassistant/#")

    def both_configs() -> dict[str, bytes] | None:
        found = retained(ha, "homeassistant/")
        return found if len(found) == 2 else None

    configs = wait_for(both_configs, 5, "the retained discovery configs")
    assert set(configs) == {SENSOR, BINARY}
    sensor, binary = json.loads(configs[SENSOR]), json.loads(configs[BINARY])
    for config in (sensor, binary):
        assert {"name", "unique_id", "state_topic", "availability", "device", "origin"} <= set(
            config
        )
        assert config["availability"] == [
            {
                "topic": "moecast/agents/test-agent/status",
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        assert config["device"]["identifiers"] == ["moecast_test-agent"]
        assert {"name", "model", "sw_version", "manufacturer"} <= set(config["device"])
    assert sensor["unique_id"] != binary["unique_id"]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == "forecasts/boiler/temp"
    assert sensor["expire_after"] == agent.settings.forecast.expiry_s
    # The state: the median an hour ahead, capped at the longest head (64 one-second steps).
    assert (
        float(render(sensor["value_template"], forecast))
        == forecast["horizons"]["64"]["median"][63]
    )
    attributes = json.loads(render(sensor["json_attributes_template"], forecast))
    assert set(attributes) == {"issued_at", "ts", "median", "lower", "upper", "skill"}
    assert attributes["lower"] == forecast["horizons"]["64"]["quantiles"]["0.1"]
    assert attributes["skill"] == forecast["skill"]
    assert binary["state_topic"] == "anomalies/boiler/temp"
    assert binary["device_class"] == "problem"
    assert render(binary["value_template"], {"state": "raised"}) == "ON"
    assert render(binary["value_template"], {"state": "cleared"}) == "OFF"
    assert render(binary["value_template"], {"state": "stale"}) == "OFF"
    agent.stop()

    # The next run has discovery off: it removes what the last one published.
    removals = client_factory("removals")
    removals.subscribe("homeassistant/#")
    start_agent(
        on_tick_for=lambda settings: Forecaster(bundle, settings),  # type: ignore[arg-type]
        forecast={"cadence_s": 1.0},
    )

    def removed() -> bool:
        payloads = removals.messages_on(SENSOR) + removals.messages_on(BINARY)
        return len([p for p in payloads if not p]) == 2

    wait_for(removed, 10, "empty retained payloads on both config topics")
    late = client_factory("late")
    late.subscribe("homeassistant/#")
    time.sleep(0.5)
    assert retained(late, "homeassistant/") == {}
    with contextlib.closing(sqlite3.connect(tmp_path / "agent" / QUALITY_DB)) as db:
        assert db.execute("SELECT count(*) FROM discovery_topics").fetchone()[0] == 0


def test_unsafe_names_get_distinct_object_ids(tmp_path: Path) -> None:
    settings = load_settings(None, storage_dir=tmp_path, agent_id="edge.1")
    (topic_a, _), _ = discovery_configs(settings, StreamId("a.b", "t"), 60.0, HORIZONS, LEVELS)
    (topic_b, _), _ = discovery_configs(settings, StreamId("a", "b_t"), 60.0, HORIZONS, LEVELS)
    assert topic_a != topic_b
    assert topic_a.startswith(f"homeassistant/sensor/{safe_id('edge.1')}/")
    assert safe_id("plain-name_1") == "plain-name_1"


@pytest.mark.parametrize(("ahead_s", "expected"), [(3600, ("64", 59)), (300, ("8", 4))])
def test_the_state_reads_the_configured_step(
    tmp_path: Path, ahead_s: float, expected: tuple[str, int]
) -> None:
    settings = load_settings(
        None, storage_dir=tmp_path, homeassistant={"enabled": True, "state_ahead_s": ahead_s}
    )
    (_, sensor), _ = discovery_configs(settings, StreamId("a", "b"), 60.0, HORIZONS, LEVELS)
    head, index = expected
    assert sensor["value_template"] == f"{{{{ value_json.horizons['{head}'].median[{index}] }}}}"
