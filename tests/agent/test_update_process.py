"""`moecast agent` as a real process, killed with SIGKILL in the middle of installing an
update: restarted, it runs one of the two models and the update ends committed (the retained
bundle is installed again) or rolled back (a kill during the trial counts as a failed trial)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from moecast.fleet.client import Connection, publish_bundle
from tests.agent import fleet_kit as kit
from tests.agent.conftest import AgentProcess, Broker, Client, wait_for

AGENT = "proc-fleet"
BUNDLE_TOPIC = f"moecast/agents/{AGENT}/bundle"
STATUS_TOPIC = f"moecast/agents/{AGENT}/status"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def process(broker: Broker, tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[AgentProcess]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent_id": AGENT,
                "broker": {"url": broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                "storage_dir": str(tmp_path / "agent"),
                "bundle_path": str(kit.default_as(tmp_path / "v1", key, 1)),
                "trusted_keys": [str(kit.public_pem(key, tmp_path / "trusted.pem"))],
                "updates": {"group": kit.GROUP, "trial_ticks": 5},
                # Every tick, so that each model's forecasts show whatever the data does.
                "forecast": {"cadence_s": 0.3, "publish": "every_tick"},
                "log_level": "WARNING",
            }
        )
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    yield agent
    agent.ensure_dead()


def forecasts_since(watcher: Client, ts: float) -> list[int]:
    payloads = [json.loads(p) for p in watcher.messages_on("forecasts/boiler/temp")]
    return [p["model_version"] for p in payloads if p["issued_at"] > ts]


def online(watcher: Client) -> bool:
    statuses = watcher.messages_on(STATUS_TOPIC)
    return bool(statuses) and json.loads(statuses[-1])["state"] == "online"


def reports(watcher: Client) -> list[dict]:
    return [json.loads(p) for p in watcher.messages_on(BUNDLE_TOPIC)]


@pytest.mark.parametrize("kill_after", ["received", "active"])
def test_a_kill_during_the_swap_leaves_a_working_agent(
    kill_after: str,
    process: AgentProcess,
    broker: Broker,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    client_factory: Callable[[str], Client],
) -> None:
    watcher = client_factory("watcher")
    for topic in (BUNDLE_TOPIC, STATUS_TOPIC, "forecasts/#"):
        watcher.subscribe(topic)
    sensors = client_factory("sensors")
    process.start()

    def feed() -> None:
        now = time.time()
        sensors.wait_acked(
            {
                sensors.publish_reading("sensors/boiler/temp", now - (30 - i) * 60, 20.0 + i % 3)
                for i in range(30)
            }
        )

    wait_for(lambda: online(watcher), 30, "the agent to come online")
    feed()
    wait_for(lambda: forecasts_since(watcher, 0), 30, "forecasts from version 1")
    publish_bundle(Connection(broker.url), kit.default_as(tmp_path / "v2", key, 2), kit.GROUP, key)
    wait_for(lambda: any(r["state"] == kill_after for r in reports(watcher)), 20, kill_after)
    # "received": while the slot is written, loaded and verified; "active": during the trial.
    process.kill()

    restarted = time.time()
    process.start()  # forecasting from the history it restores from SQLite
    wait_for(lambda: forecasts_since(watcher, restarted), 30, "forecasts after the restart")
    # The retained bundle comes again: installed now, or refused if it was on trial.
    final = wait_for(
        lambda: [r for r in reports(watcher) if r["state"] in ("committed", "rolled_back")],
        30,
        "the update to end",
    )[-1]
    if kill_after == "active":
        # The model on trial may be what killed the agent: it is not tried again.
        assert final["state"] == "rolled_back"
    if final["state"] == "rolled_back":
        assert final["reason"] == "restarted_during_trial"
        expected = 1
    else:
        expected = 2
    settled = time.time()
    wait_for(lambda: forecasts_since(watcher, settled), 10, "forecasts after the update ended")
    assert set(forecasts_since(watcher, settled)) == {expected}
    assert process.terminate() == 0
    status = json.loads(watcher.messages_on(STATUS_TOPIC)[-1])
    assert status["state"] == "offline"
    assert status["model_version"] == expected  # a number, as in forecasts
