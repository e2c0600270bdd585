"""`moecast agent` as a real process: kill -9 mid-stream loses nothing acknowledged, the broker
announces the death (last will), SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.agent.conftest import (
    AgentProcess,
    Broker,
    Client,
    stored_count,
    stored_rows,
    wait_for,
)

STATUS = "moecast/agents/proc-agent/status"


@pytest.fixture
def agent_process(broker: Broker, tmp_path: Path) -> Iterator[AgentProcess]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent_id": "proc-agent",
                "broker": {"url": broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                "storage_dir": str(tmp_path / "agent"),
                "log_level": "WARNING",
            }
        )
    )
    process = AgentProcess(config, tmp_path / "agent.log")
    yield process
    process.ensure_dead()


def states(watcher: Client) -> list[str]:
    return [json.loads(payload)["state"] for payload in watcher.messages_on(STATUS)]


def test_kill_9_mid_stream_loses_no_acknowledged_reading(
    agent_process: AgentProcess, tmp_path: Path, client_factory: Callable[[str], Client]
) -> None:
    db = tmp_path / "agent" / "readings.db"
    watcher = client_factory("watcher")
    watcher.subscribe(STATUS)
    agent_process.start()
    wait_for(lambda: states(watcher)[-1:] == ["online"], 20, "the agent to come online")

    publisher = client_factory("publisher")
    base = float(int(time.time()) - 3600)
    # Lists of readings: parsing and storing them is the agent's bottleneck, so at any moment
    # it holds received messages that are not yet stored, which it must not have acknowledged.
    # Two streams, each within the store's retention of 20000 points.
    messages, per_message = 1600, 20
    total = messages * per_message
    mids: dict[int, list[tuple[str, float]]] = {}
    done = threading.Event()

    def publish_all() -> None:
        for i in range(messages):
            sensor = f"p{i % 2}"
            times = [base + (i // 2 * per_message + j) / 10 for j in range(per_message)]
            payload = json.dumps([{"ts": ts, "value": ts - base} for ts in times])
            mids[publisher.publish(f"sensors/line/{sensor}", payload)] = [
                (sensor, t) for t in times
            ]
        done.set()

    feeder = threading.Thread(target=publish_all)
    feeder.start()
    wait_for(lambda: stored_count(db) >= 50 * per_message, 20, "the agent to store some")
    agent_process.kill()
    stored_at_kill = stored_count(db)
    feeder.join(30)
    assert done.is_set()
    assert stored_at_kill < total, "the kill came after the stream ended; nothing was tested"
    # The broker accepted (PUBACKed) every message; the ones the dead agent had not yet
    # acknowledged wait in its persistent session.
    publisher.wait_acked(set(mids))
    wait_for(lambda: states(watcher)[-1:] == ["offline"], 10, "the last will")

    agent_process.start()
    wait_for(lambda: stored_count(db) >= total, 15, "every acknowledged reading")
    rows = stored_rows(db)
    published = sorted(reading for readings in mids.values() for reading in readings)
    assert sorted((sensor, ts) for _, sensor, ts, _ in rows) == published  # all, none twice
    assert all(value == ts - base for _, _, ts, value in rows)
    wait_for(lambda: states(watcher)[-1:] == ["online"], 10, "online again")


def test_sigterm_stops_cleanly_and_says_offline(
    agent_process: AgentProcess, client_factory: Callable[[str], Client]
) -> None:
    watcher = client_factory("watcher")
    watcher.subscribe(STATUS)
    agent_process.start()
    wait_for(lambda: states(watcher)[-1:] == ["online"], 20, "the agent to come online")
    assert agent_process.terminate() == 0
    wait_for(lambda: states(watcher)[-1:] == ["offline"], 10, "the offline status")
    assert "Traceback" not in agent_process.log.read_text()
