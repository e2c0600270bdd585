"""A site sharded over agents by topic filters: two agents on one mosquitto, each subscribed to
its own part of `sensors/`, forecast every stream exactly once between them, and each keeps
the history of the streams that reach it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from moecast.agent.cli import DEFAULT_BUNDLE
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.runtime import Agent
from moecast.agent.settings import load_settings
from pydantic import ValidationError

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle
from tests.agent.conftest import Broker, Client, agent_settings, stored_rows, wait_for

STREAMS = ["line-1/temp", "line-1/power", "line-2/temp", "roof/wind"]
SHARDS = {"a1": ["line-1/+"], "a2": ["line-2/+", "roof/#"]}


def test_two_agents_with_disjoint_filters_forecast_each_stream_once(
    broker: Broker, tmp_path: Path, client_factory: Callable[[str], Client]
) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE, [DEV_PUBLIC_KEY])
    watcher = client_factory("watcher")
    watcher.subscribe("forecasts/#")
    watcher.subscribe("moecast/agents/+/status")
    agents: dict[str, Agent] = {}
    try:
        for agent_id, filters in SHARDS.items():
            settings = agent_settings(
                broker,
                tmp_path / agent_id,
                agent_id=agent_id,
                topics={"filters": filters},
                forecast={"cadence_s": 0.5},
                streams=[{"pattern": "*", "interval_s": 60}],
            )
            agent = Agent(settings, on_tick=Forecaster(bundle, settings))
            agent.start()
            assert agent.link.wait_connected(10)
            agents[agent_id] = agent
        # An agent publishes `online` after subscribing, and the broker handles one client's
        # packets in order: once both statuses are here, both subscriptions are in place.
        for agent_id in SHARDS:
            wait_for(
                lambda a=agent_id: watcher.messages_on(f"moecast/agents/{a}/status"),
                10,
                f"{agent_id} online",
            )
        sensors = client_factory("sensors")
        now = time.time()
        mids = {
            sensors.publish_reading(f"sensors/{stream}", now - (40 - i) * 60, 20.0 + i % 3)
            for stream in STREAMS
            for i in range(40)
        }
        sensors.wait_acked(mids)
        wait_for(
            lambda: (
                {t.removeprefix("forecasts/") for t, _, _ in watcher.received if "forecasts/" in t}
                == set(STREAMS)
            ),
            30,
            "a forecast of every stream",
        )
        # Who forecast what: the stream field and the agents' own stores agree on one owner.
        stored = {
            agent_id: {f"{d}/{s}" for d, s, _, _ in stored_rows(agent.settings.readings_db)}
            for agent_id, agent in agents.items()
        }
        assert stored == {"a1": {"line-1/temp", "line-1/power"}, "a2": {"line-2/temp", "roof/wind"}}
        forecast_by = {
            agent_id: set(agent.registry.streams()) for agent_id, agent in agents.items()
        }
        assert {str(s) for s in forecast_by["a1"]} == stored["a1"]
        assert {str(s) for s in forecast_by["a2"]} == stored["a2"]
        status = json.loads(watcher.messages_on("moecast/agents/a2/status")[-1])
        assert status["filters"] == SHARDS["a2"]
    finally:
        for agent in agents.values():
            agent.stop()


@pytest.mark.parametrize("bad", ["a/b/c", "line-1/te+", "#/temp", "", "a//b", "li#ne/x"])
def test_a_filter_is_a_device_sensor_filter(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValidationError, match="<device>/<sensor> filter"):
        load_settings(None, storage_dir=tmp_path, topics={"filters": [bad]})
