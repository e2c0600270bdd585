"""The heartbeat file and `moecast agent --health`, the container's health check."""

from __future__ import annotations

import json
import time

import pytest
from moecast.agent.ops.heartbeat import HEARTBEAT_FILE, Heartbeat, check

from moecast.cli import main
from tests.agent.conftest import AgentProcess, Broker, wait_for


def test_a_fresh_heartbeat_is_healthy_and_a_stale_or_missing_one_is_not(tmp_path):
    path = tmp_path / HEARTBEAT_FILE
    assert check(path) == (False, f"unhealthy: no heartbeat at {path} (is the agent running?)")
    beat = Heartbeat(path)
    beat.beat(connected=True)
    healthy, why = check(path)
    assert healthy, why
    assert why.endswith(", connected to the broker")
    path.write_text(json.dumps({"ts": time.time() - 120, "connected": True}))
    healthy, why = check(path, stale_after_s=60)
    assert not healthy
    assert "120 s ago" in why
    path.write_text("{not json")
    assert check(path)[0] is False
    beat.stop()
    assert not path.exists()


def test_beats_are_rare_to_spare_the_sd_card(tmp_path):
    path = tmp_path / HEARTBEAT_FILE
    beat = Heartbeat(path, every_s=3600)
    beat.beat(connected=False)
    first = path.read_text()
    time.sleep(0.01)
    beat.beat(connected=True)
    assert path.read_text() == first  # not rewritten within the interval
    assert not list(tmp_path.glob("*.tmp"))


def test_health_reads_the_heartbeat_of_the_configured_storage(tmp_path, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text(f"storage_dir: {tmp_path / 'state'}\n")
    assert main(["agent", "--health", "--config", str(config)]) == 1
    assert "unhealthy" in capsys.readouterr().out
    (tmp_path / "state").mkdir()
    Heartbeat(tmp_path / "state" / HEARTBEAT_FILE).beat(connected=False)
    assert main(["agent", "--health", "--config", str(config)]) == 0
    assert "healthy: heartbeat" in capsys.readouterr().out


@pytest.mark.slow
def test_a_running_agent_beats_and_stops_beating_when_stopped(broker: Broker, tmp_path, capsys):
    storage = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent_id: beating\nstorage_dir: {storage}\nbroker:\n  url: {broker.url}\n")
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_for(lambda: (storage / HEARTBEAT_FILE).exists(), 30, "the first heartbeat")
        assert main(["agent", "--health", "--config", str(config)]) == 0
        assert "healthy: heartbeat" in capsys.readouterr().out
    finally:
        assert agent.terminate() == 0
    assert main(["agent", "--health", "--config", str(config)]) == 1
