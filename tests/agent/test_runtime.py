"""The agent in-process against a real mosquitto: ingestion, acknowledgements, reconnects,
status, metrics and the forecasting seam."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from moecast.agent.ingest.inbox import InboundMessage
from moecast.agent.ingest.readings import StreamId
from moecast.agent.runtime import Agent, TickContext

from tests.agent.conftest import Broker, Client, agent_settings, stored_rows, wait_for

BASE_TS = float(int(time.time()) - 3600)  # inside the accepted age


def rows_of(agent: Agent, device: str, sensor: str) -> list[tuple[float, float]]:
    return sorted(
        (ts, value)
        for d, s, ts, value in stored_rows(agent.settings.readings_db)
        if (d, s) == (device, sensor)
    )


def test_irregular_readings_reach_the_store_and_the_buffers(
    start_agent: Callable[..., Agent], client_factory: Callable[[str], Client]
) -> None:
    agent = start_agent()
    publisher = client_factory("publisher")
    rng = np.random.default_rng(0)
    times = BASE_TS + np.cumsum(rng.exponential(7.0, size=60))  # irregular gaps
    expected = [(float(t), round(float(20 + np.sin(t / 50)), 6)) for t in times]
    mids = set()
    # Single readings, a list, a SenML pack and an out-of-order reading, QoS 0 and 1.
    for ts, value in [*expected[:28], expected[29], expected[28]]:
        mids.add(publisher.publish_reading("sensors/boiler/temp", ts, value))
    batch = [{"ts": ts, "value": value} for ts, value in expected[30:50]]
    mids.add(publisher.publish("sensors/boiler/temp", json.dumps(batch)))
    senml = [{"bn": "", "bt": expected[50][0], "n": "temp", "v": expected[50][1]}]
    senml += [{"n": "temp", "t": ts - expected[50][0], "v": v} for ts, v in expected[51:59]]
    mids.add(publisher.publish("sensors/boiler/temp", json.dumps(senml)))
    publisher.publish_reading("sensors/boiler/temp", *expected[59], qos=0)
    mids.add(publisher.publish_reading("sensors/boiler/humidity", BASE_TS, 55.0))
    publisher.wait_acked(mids)

    wait_for(lambda: len(rows_of(agent, "boiler", "temp")) == 60, what="60 stored readings")
    wait_for(lambda: rows_of(agent, "boiler", "humidity"), what="the humidity reading")
    # SenML times are base + offset, so timestamps round-trip to within float precision.
    np.testing.assert_allclose(np.array(rows_of(agent, "boiler", "temp")), expected, atol=1e-6)
    ts, values = agent.registry.snapshot(StreamId("boiler", "temp"))
    assert ts.tolist() == pytest.approx([t for t, _ in expected])
    assert values.tolist() == pytest.approx([v for _, v in expected])
    assert rows_of(agent, "boiler", "humidity") == [(BASE_TS, 55.0)]
    wait_for(lambda: agent.metrics.snapshot()["acked"] >= 33, what="acks counted")
    snapshot = agent.metrics.snapshot()
    assert snapshot["messages"] == 34
    assert snapshot["readings_accepted"] == 61
    assert snapshot["rejected"] == {}
    assert snapshot["acked"] == 33  # every QoS 1 message; the QoS 0 one needs none


def test_restart_restores_buffers_from_sqlite(
    broker: Broker, tmp_path: Path, client_factory: Callable[[str], Client]
) -> None:
    settings = agent_settings(broker, tmp_path / "agent")
    agent = Agent(settings)
    agent.start()
    assert agent.link.wait_connected(10)  # subscribed before the first reading is sent
    publisher = client_factory("publisher")
    publisher.wait_acked(
        {publisher.publish_reading("sensors/a/b", BASE_TS + i, i) for i in range(5)}
    )
    wait_for(lambda: len(stored_rows(settings.readings_db)) == 5)
    agent.stop()

    again = Agent(settings)
    again.ingest.start()
    try:
        ts, _ = again.registry.snapshot(StreamId("a", "b"))
        assert ts.tolist() == [BASE_TS + i for i in range(5)]
    finally:
        again.stop()


def test_reconnects_after_broker_restarts_and_keeps_its_session(
    broker: Broker, tmp_path: Path
) -> None:
    settings = agent_settings(broker, tmp_path / "agent")
    published: list[float] = []

    def publish_batch(n: int) -> None:
        publisher = Client(broker, f"publisher{len(published)}")
        try:
            mids = set()
            for _ in range(n):
                ts = BASE_TS + len(published)
                published.append(ts)
                mids.add(publisher.publish_reading("sensors/plant/flow", ts, ts - BASE_TS))
            publisher.wait_acked(mids)
        finally:
            publisher.close()

    def stored_ts() -> list[float]:
        return sorted(ts for _, _, ts, _ in stored_rows(settings.readings_db))

    agent = Agent(settings)
    agent.start()
    assert agent.link.wait_connected(10)
    publish_batch(20)
    wait_for(lambda: len(stored_ts()) == 20, what="the first batch")

    broker.restart()
    wait_for(lambda: agent.metrics.snapshot()["connects"] == 2, what="the agent to reconnect")
    publish_batch(20)  # to the restarted broker, which must know the agent's subscription
    wait_for(lambda: len(stored_ts()) == 40, what="the batch after the restart")
    agent.stop()

    publish_batch(20)  # nobody connected: the broker queues these in the agent's session ...
    broker.restart()  # ... and keeps them across its own restart (persistence)
    again = Agent(settings)
    again.start()
    try:
        wait_for(lambda: len(stored_ts()) == 60, what="the readings queued while away")
        assert stored_ts() == published  # each exactly once
    finally:
        again.stop()


def test_status_is_online_while_running_and_offline_after_a_clean_stop(
    start_agent: Callable[..., Agent], client_factory: Callable[[str], Client]
) -> None:
    watcher = client_factory("watcher")
    watcher.subscribe("moecast/agents/test-agent/status")
    agent = start_agent()
    online = json.loads(wait_for(lambda: watcher.messages_on(agent.settings.status_topic))[-1])
    assert online["state"] == "online"
    assert online["agent_id"] == "test-agent"
    assert online["model_version"] is None
    assert online["started_at"].endswith("+00:00")
    agent.stop()
    wait_for(lambda: len(watcher.messages_on(agent.settings.status_topic)) == 2)
    offline = json.loads(watcher.messages_on(agent.settings.status_topic)[-1])
    assert offline["state"] == "offline"
    assert not agent.link.connected.is_set()


def test_metrics_are_published_as_json(
    start_agent: Callable[..., Agent], client_factory: Callable[[str], Client]
) -> None:
    watcher = client_factory("watcher")
    watcher.subscribe("moecast/agents/test-agent/metrics")
    start_agent()
    publisher = client_factory("publisher")
    publisher.wait_acked({publisher.publish_reading("sensors/a/b", BASE_TS, 1.0)})

    def counted() -> dict[str, object] | None:
        messages = [json.loads(m) for m in watcher.messages_on("moecast/agents/test-agent/metrics")]
        return next((m for m in reversed(messages) if m["readings_accepted"] == 1), None)

    snapshot = wait_for(counted, what="a metrics message counting the reading")
    assert snapshot["agent_id"] == "test-agent"
    assert snapshot["acked"] == 1
    assert snapshot["streams"] == 1
    assert snapshot["connected"] == 1
    assert snapshot["store_write_s"]["count"] >= 1


def test_forecasting_ticks_come_on_the_cadence_grid(broker: Broker, tmp_path: Path) -> None:
    ticks: list[TickContext] = []
    stopped: list[int] = []  # how many ticks had run when on_stop was called
    settings = agent_settings(broker, tmp_path / "agent", forecast={"cadence_s": 0.2})
    agent = Agent(settings, on_tick=ticks.append, on_stop=lambda: stopped.append(len(ticks)))
    agent.start()
    try:
        wait_for(lambda: len(ticks) >= 3, what="three ticks")
    finally:
        agent.stop()
    assert stopped == [len(ticks)]  # once, after the last tick
    assert all(tick.registry is agent.registry and tick.link is agent.link for tick in ticks)
    slots = [round(tick.now / 0.2) for tick in ticks]
    assert slots == sorted(set(slots))  # one tick per cadence slot
    assert all(
        -1e-3 < tick.now - slot * 0.2 < 0.12 for tick, slot in zip(ticks, slots, strict=True)
    )


def test_acks_are_sent_only_on_the_connection_that_delivered(
    broker: Broker, tmp_path: Path
) -> None:
    agent = Agent(agent_settings(broker, tmp_path / "agent"))
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        current = agent.link._connection
        fresh = InboundMessage("sensors/a/b", b"1", 0.0, mid=7, qos=1, connection=current)
        stale = InboundMessage("sensors/a/b", b"1", 0.0, mid=8, qos=1, connection=current - 1)
        at_most_once = InboundMessage("sensors/a/b", b"1", 0.0, mid=0, qos=0, connection=current)
        assert agent.link.ack([fresh, stale, at_most_once]) == 1
    finally:
        agent.stop()


def test_mqtt_311_ingests_and_keeps_its_session(broker: Broker, tmp_path: Path) -> None:
    settings = agent_settings(broker, tmp_path / "agent", broker={"protocol": "3.1.1"})
    agent = Agent(settings)
    agent.start()
    assert agent.link.wait_connected(10)
    agent.stop()  # subscribed once, then away: the broker queues for the session
    publisher = Client(broker, "publisher")
    try:
        publisher.wait_acked({publisher.publish_reading("sensors/old/fw", BASE_TS, 3.0)})
    finally:
        publisher.close()
    again = Agent(settings)
    again.start()
    try:
        wait_for(lambda: stored_rows(settings.readings_db) == [("old", "fw", BASE_TS, 3.0)])
        wait_for(lambda: again.metrics.snapshot()["acked"] == 1, what="the ack")
    finally:
        again.stop()
