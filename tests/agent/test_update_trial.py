"""The trial on the tick thread, without a broker: ticks that forecast nothing prove nothing,
a model that breaks a tick is rolled back and the tick is forecast again by the old one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext
from moecast.agent.settings import load_settings
from moecast.agent.updates.active import ActiveModel
from moecast.agent.updates.progress import UpdateProgress
from moecast.agent.updates.wiring import open_slots

from moecast.bundle.format import load_bundle, read_bundle_files
from tests.agent import fleet_kit as kit


class FakeLink:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []
        self.versions: list[int | None] = []

    def publish(self, topic: str, payload: Any, qos: int, retain: bool = False, **_: Any) -> None:
        self.published.append((topic, json.loads(payload)))

    def set_model_version(self, version: int | None) -> None:
        self.versions.append(version)


class FakeAgent:
    def __init__(self) -> None:
        self.link = FakeLink()
        self.metrics = AgentMetrics()


@pytest.fixture
def setup(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    v2 = kit.default_as(tmp_path / "v2", key, 2)
    v3 = kit.default_as(tmp_path / "v3", key, 3)
    settings = load_settings(
        None,
        storage_dir=tmp_path / "agent",
        trusted_keys=[kit.public_pem(key, tmp_path / "key.pem")],
        updates={"group": kit.GROUP, "trial_ticks": 2},
    )
    slots, _, _ = open_slots(settings)
    old = load_bundle(v2, [key.public_key()])
    agent = FakeAgent()
    progress = UpdateProgress(settings, agent.link)
    manager = ActiveModel(
        settings,
        Forecaster(old, settings),
        slots,
        progress,
        agent.link,
        agent.metrics,  # type: ignore[arg-type]
    )
    # What the update thread leaves for the next tick: v3 verified in a slot; its trial
    # starts on disk when the tick swaps it in.
    slot = slots.write_inactive(read_bundle_files(v3))
    new = load_bundle(slots.path(slot), [key.public_key()])
    manager.offer(new, "0" * 64, slot)
    return manager, agent, old, new, settings


def context(settings, agent: FakeAgent, streams: int) -> TickContext:
    registry = StreamRegistry()
    now = time.time()
    for i in range(streams):
        readings = [Reading(now - (30 - j) * 60, 20.0 + j % 3) for j in range(30)]
        registry.insert(StreamId(f"dev{i}", "temp"), readings)
    return TickContext(now, settings, registry, agent.link, agent.metrics)  # type: ignore[arg-type]


def states(agent: FakeAgent) -> list[str]:
    return [p["state"] for t, p in agent.link.published if t.endswith("/bundle")]


def forecast_versions(agent: FakeAgent) -> list[int]:
    return [p["model_version"] for t, p in agent.link.published if t.startswith("forecasts/")]


def test_ticks_without_streams_do_not_count_and_healthy_ones_commit(setup) -> None:
    manager, agent, _, new, settings = setup
    before = manager.slots.state
    assert before.phase == "committed"  # a restart now would keep the old model, not fail v3
    for _ in range(3):
        manager.tick(context(settings, agent, streams=0))
    assert states(agent) == ["active"]
    assert manager.slots.state.phase == "trial"
    assert manager.slots.state.previous == before.active
    manager.tick(context(settings, agent, streams=2))
    manager.tick(context(settings, agent, streams=2))
    assert states(agent) == ["active", "committed"]
    assert manager.forecaster is not None
    assert manager.forecaster.bundle is new
    assert manager.slots.state.phase == "committed"
    assert agent.link.versions[-1] == 3


def test_a_model_that_breaks_a_tick_is_rolled_back_and_the_tick_still_forecast(setup) -> None:
    manager, agent, old, new, settings = setup

    def broken(values: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("kernel failed on this batch size")

    new.run = broken  # type: ignore[method-assign]
    manager.tick(context(settings, agent, streams=2))
    assert states(agent) == ["active", "rolled_back"]
    report = next(p for t, p in agent.link.published if p.get("state") == "rolled_back")
    assert report["reason"] == "tick_failed"
    assert "kernel failed" in report["detail"]
    assert forecast_versions(agent) == [2, 2]
    assert manager.forecaster is not None
    assert manager.forecaster.bundle is old
    assert manager.slots.state.active is None  # back to the configured bundle
    assert "0" * 64 in manager.slots.state.failed
    assert agent.link.versions[-1] == 2
