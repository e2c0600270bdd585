"""Fleet updates end to end, in-process, against a real mosquitto: publish -> receive -> verify
-> swap -> trial -> commit, and every way an update can be bad, each refused (or rolled back)
with its own reason while the previous model keeps forecasting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.runtime import Agent
from moecast.agent.updates.wiring import UpdatePath, build_agent, open_slots
from moecast.quantization.signing import DEV_PRIVATE_KEY, load_private_key

from moecast.bundle.format import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    load_bundle,
    read_bundle_files,
)
from moecast.bundle.wire import DEFAULT_CHUNK_BYTES, Announcement, encode_chunk, package
from moecast.fleet.client import Connection, publish_bundle
from tests.agent import fleet_kit as kit
from tests.agent.conftest import Broker, Client, agent_settings, stored_count, wait_for

AGENT = "fleet-agent"
BUNDLE_TOPIC = f"moecast/agents/{AGENT}/bundle"
STREAMS = [f"boiler{i}/temp" for i in range(3)]
CADENCE_S = 0.3


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> dict[str, Path]:
    """The default model signed by the test key as versions 1, 2 and 3."""
    root = tmp_path_factory.mktemp("bundles")
    return {f"v{v}": kit.default_as(root / f"v{v}", key, v) for v in (1, 2, 3)}


class RunningAgent:
    """An agent wired as `moecast agent` wires it, plus a watcher of what it publishes."""

    def __init__(self, agent: Agent, updates: UpdatePath, watcher: Client) -> None:
        self.agent, self.updates, self.watcher = agent, updates, watcher

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.watcher.messages_on(BUNDLE_TOPIC)]

    def states(self) -> list[str]:
        return [r["state"] for r in self.reports()]

    def wait_state(self, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.reports() if r["state"] == state), None)

        return wait_for(found, timeout_s, f"{state!r} on the bundle topic")

    def forecasts(self) -> list[dict[str, Any]]:
        payloads = []
        for stream in STREAMS:
            payloads += [json.loads(p) for p in self.watcher.messages_on(f"forecasts/{stream}")]
        return payloads

    def wait_forecast_after(self, ts: float, version: int) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (
                    f
                    for f in self.forecasts()
                    if f["issued_at"] > ts and f["model_version"] == version
                ),
                None,
            )

        return wait_for(found, 10, f"a forecast of version {version} after {ts}")


@pytest.fixture
def run_agent(
    broker: Broker, tmp_path: Path, key: Ed25519PrivateKey, client_factory: Callable[[str], Client]
) -> Iterator[Callable[..., RunningAgent]]:
    running: list[RunningAgent] = []
    public = kit.public_pem(key, tmp_path / "trusted.pem")

    def start(bundle: Path, cadence_s: float = CADENCE_S, **overrides: Any) -> RunningAgent:
        updates_settings = {
            "group": kit.GROUP,
            "trial_ticks": 2,
            "download_timeout_s": 2.0,
            **overrides.pop("updates", {}),
        }
        settings = agent_settings(
            broker,
            tmp_path / "agent",
            agent_id=AGENT,
            bundle_path=bundle,
            trusted_keys=[public],
            updates=updates_settings,
            # Every tick, so that each model's forecasts show whatever the data does.
            forecast={"cadence_s": cadence_s, "publish": "every_tick"},
            **overrides,
        )
        watcher = client_factory("watcher")
        watcher.subscribe(BUNDLE_TOPIC)
        watcher.subscribe("forecasts/#")
        slots, installed, interrupted = open_slots(settings)
        model = installed or load_bundle(bundle, [public])
        agent, updates = build_agent(settings, Forecaster(model, settings), slots, interrupted)
        agent.start()
        updates.start()
        assert agent.link.wait_connected(10)
        running.append(RunningAgent(agent, updates, watcher))
        return running[-1]

    yield start
    for each in running:
        each.updates.stop()
        each.agent.stop()


def feed(client: Client, value: float = 20.0, n: int = 30) -> None:
    """A regular history for every stream, so that every tick forecasts them."""
    now = time.time()
    mids = set()
    for stream in STREAMS:
        for i in range(n):
            reading = value + (i % 5)
            mids.add(client.publish_reading(f"sensors/{stream}", now - (n - i) * 60, reading))
    client.wait_acked(mids)


@pytest.fixture
def forecasting(
    run_agent: Callable[..., RunningAgent],
    bundles: dict[str, Path],
    client_factory: Callable[[str], Client],
) -> Callable[[str], RunningAgent]:
    """Start an agent on `bundles[name]` ("v2": model version 2) with every stream fed, and
    return it once it has forecast with that model: the starting point of an update."""

    def start(name: str) -> RunningAgent:
        running = run_agent(bundles[name])
        feed(client_factory("sensors"))
        running.wait_forecast_after(0, int(name.removeprefix("v")))
        return running

    return start


def test_an_update_is_received_verified_swapped_and_committed(
    forecasting: Callable[[str], RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
) -> None:
    running = forecasting("v1")

    done = publish_bundle(Connection(broker.url), bundles["v2"], kit.GROUP, key)
    model_bytes = (bundles["v2"] / "model.onnx").stat().st_size
    assert done.chunks == -(-model_bytes // DEFAULT_CHUNK_BYTES) > 1

    committed = running.wait_state("committed")
    assert running.states() == ["received", "verified", "active", "committed"]
    assert committed["model_version"] == 2
    assert committed["active_version"] == 2
    running.wait_forecast_after(committed["ts"], 2)
    assert running.agent.link.model_version == 2
    state = json.loads((running.agent.settings.storage_dir / "bundles/state.json").read_text())
    assert state["active"] == "a"
    assert state["phase"] == "committed"
    # The expert load of the committed model, for prune-for, on the metrics topic.
    section = running.agent.metrics.snapshot()["expert_load"]
    assert section["group"] == kit.GROUP
    assert section["model_version"] == 2
    assert section["runs"] >= 1
    assert len(section["load"]) == 4


def test_a_restarted_agent_runs_the_committed_slot_and_ignores_the_replay(
    run_agent: Callable[..., RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
    client_factory: Callable[[str], Client],
) -> None:
    first = run_agent(bundles["v1"])
    feed(client_factory("sensors"))
    publish_bundle(Connection(broker.url), bundles["v2"], kit.GROUP, key)
    first.wait_state("committed")
    first.updates.stop()
    first.agent.stop()

    # Configured with v1 still: the committed slot wins; the retained v2 comes again and is
    # recognised as the model already running.
    second = run_agent(bundles["v1"])
    assert second.updates.active.forecaster is not None
    assert second.updates.active.forecaster.model_version == 2
    started = time.time()
    second.wait_forecast_after(started, 2)
    time.sleep(1.0)
    assert [r for r in second.reports() if r["ts"] > started] == []


def _unsigned(announcement: Announcement, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    forged = Announcement(announcement.manifest, b"", announcement.transfer, b"")
    return forged.to_bytes(), list(chunks)


def _tampered_manifest(
    announcement: Announcement, chunks: list[bytes]
) -> tuple[bytes, list[bytes]]:
    manifest = announcement.manifest.replace(b'"model_version":3', b'"model_version":9')
    assert manifest != announcement.manifest
    forged = Announcement(
        manifest, announcement.manifest_sig, announcement.transfer, announcement.transfer_sig
    )
    return forged.to_bytes(), list(chunks)


def _tampered_chunk(announcement: Announcement, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    data = bytearray(chunks[3][40:])
    data[1000] ^= 0xFF
    chunks = list(chunks)
    chunks[3] = encode_chunk(announcement.transfer_id, 3, bytes(data))
    return announcement.to_bytes(), chunks


def _missing_chunk(
    announcement: Announcement, chunks: list[bytes]
) -> tuple[bytes, list[bytes | None]]:
    return announcement.to_bytes(), [None if i == 5 else c for i, c in enumerate(chunks)]


def _as_is(announcement: Announcement, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    return announcement.to_bytes(), list(chunks)


def _wrong_key_bundle(tmp: Path, good: Ed25519PrivateKey) -> tuple[Path, Ed25519PrivateKey]:
    # Signed throughout (manifest and transfer) by a key the agent does not trust.
    other = Ed25519PrivateKey.generate()
    return kit.default_as(tmp / "other", other, 3), other


def _v3(tmp: Path, key: Ed25519PrivateKey) -> Path:
    return kit.default_as(tmp / "v3", key, 3)


def _replayed_v1(tmp: Path, key: Ed25519PrivateKey) -> Path:
    # An old, validly signed release republished (by mistake or by an attacker).
    return kit.default_as(tmp / "v1", key, 1)


def _corrupt_onnx(tmp: Path, key: Ed25519PrivateKey) -> Path:
    model = b"not an ONNX model " * 20_000
    return kit.with_model(kit.DEFAULT_BUNDLE, tmp / "corrupt", key, model, model_version=3)


def _checksum_mismatch(tmp: Path, key: Ed25519PrivateKey) -> Path:
    # Signed, chunks listed correctly, but the model is not the one the manifest names: the
    # signing pipeline mixed up two builds.
    bundle = kit.default_as(tmp / "v3", key, 3)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    return bundle


def _nan_model(tmp: Path, key: Ed25519PrivateKey) -> Path:
    model = kit.nan_above(kit.default_model())
    return kit.with_model(kit.DEFAULT_BUNDLE, tmp / "nan", key, model, model_version=3)


# name: (bundle to publish, how its messages are altered, reports expected, last reason)
SCENARIOS = {
    "unsigned": (_v3, _unsigned, ["rejected"], "unsigned"),
    "wrong_key": (_wrong_key_bundle, _as_is, ["rejected"], "signature"),
    "tampered_manifest": (_v3, _tampered_manifest, ["rejected"], "signature"),
    "tampered_model": (_v3, _tampered_chunk, ["rejected"], "chunk_checksum"),
    "missing_chunk": (_v3, _missing_chunk, ["rejected"], "missing_chunks"),
    "replayed_older_version": (_replayed_v1, _as_is, ["rejected"], "not_newer"),
    "corrupt_onnx": (_corrupt_onnx, _as_is, ["received", "rejected"], "model_load"),
    "model_checksum": (_checksum_mismatch, _as_is, ["received", "rejected"], "model_checksum"),
    "nan_model": (
        _nan_model,
        _as_is,
        ["received", "verified", "active", "rolled_back"],
        "non_finite",
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_bad_update_is_refused_and_the_old_model_keeps_forecasting(
    scenario: str,
    run_agent: Callable[..., RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
    client_factory: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    make, tamper, expected, reason = SCENARIOS[scenario]
    running = run_agent(bundles["v2"])
    sensors = client_factory("sensors")
    # Readings far above the golden range: only the NaN model fails on them.
    feed(sensors, value=5000.0)
    running.wait_forecast_after(0, 2)

    made = make(tmp_path, key)
    bundle, signer = made if isinstance(made, tuple) else (made, key)
    announcement, chunks = kit.packaged(bundle, signer)
    kit.send(broker.url, *tamper(announcement, chunks))

    final = running.wait_state(expected[-1])
    assert running.states() == expected
    assert final["reason"] == reason
    assert final["detail"]
    assert final["active_version"] == 2
    running.wait_forecast_after(final["ts"], 2)
    assert running.agent.link.model_version == 2
    assert running.agent.metrics.snapshot()["forecast_skipped"].get("non_finite_forecast", 0) <= 3


def test_no_reading_is_lost_and_no_tick_missed_during_an_update(
    run_agent: Callable[..., RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
    client_factory: Callable[[str], Client],
) -> None:
    cadence = 0.5  # ticks fire at multiples of it: each one's index is issued_at / cadence
    running = run_agent(bundles["v1"], cadence_s=cadence, updates={"trial_ticks": 3})
    sensors = client_factory("sensors")
    feed(sensors)
    db = running.agent.settings.readings_db
    before = 30 * len(STREAMS)
    wait_for(lambda: stored_count(db) == before, 10, "the history stored")
    running.wait_forecast_after(0, 1)

    stop = threading.Event()
    published: set[int] = set()

    def steady_load() -> None:
        # About 300 readings/s over the streams, each one acknowledged only once stored.
        ts = time.time()
        while not stop.is_set():
            for stream in STREAMS:
                published.add(sensors.publish_reading(f"sensors/{stream}", ts, 20.0))
            ts += 0.01
            time.sleep(0.01)

    loader = threading.Thread(target=steady_load)
    loader.start()
    try:
        time.sleep(0.5)
        publish_bundle(Connection(broker.url), bundles["v2"], kit.GROUP, key)
        committed = running.wait_state("committed")
        time.sleep(0.5)
    finally:
        stop.set()
        loader.join()
    sensors.wait_acked(published, 20)
    wait_for(lambda: stored_count(db) == before + len(published), 10, "every reading stored")

    # Ticks before, across and after the swap: none is missing, each one forecast the streams.
    issued = sorted({f["issued_at"] for f in running.forecasts() if f["stream"] == STREAMS[0]})
    ticks = [round(ts / cadence) for ts in issued]
    assert ticks == list(range(ticks[0], ticks[-1] + 1))
    versions = [f["model_version"] for f in running.forecasts() if f["stream"] == STREAMS[0]]
    assert versions[0] == 1
    assert versions[-1] == 2
    assert issued[-1] > committed["ts"]


def test_oversized_messages_and_announcement_floods_are_cut_off(
    run_agent: Callable[..., RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
) -> None:
    running = run_agent(
        bundles["v1"], updates={"max_message_bytes": 100_000, "max_announcements_per_hour": 1}
    )
    announcement, chunks = kit.packaged(bundles["v2"], key)
    kit.send(broker.url, None, chunks[:1])  # a 256 KiB chunk: over the limit, never read
    forgeries = [
        Announcement(announcement.manifest, b"", announcement.transfer + pad, b"").to_bytes()
        for pad in (b" ", b"  ")
    ]
    for forged in forgeries:
        kit.send(broker.url, forged, [])
    running.wait_state("rejected")
    dropped = wait_for(
        lambda: running.agent.metrics.snapshot()["dropped"].get("fleet_announcement_rate"),
        what="the second announcement dropped",
    )
    assert dropped == 1
    assert running.agent.metrics.snapshot()["dropped"]["fleet_message_too_large"] == 1
    assert running.states() == ["rejected"]


def test_a_downgrade_installs_only_if_signed_after_the_active_model(
    forecasting: Callable[[str], RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    running = forecasting("v2")
    active = running.agent.link  # the status carries the running version
    made = load_bundle(bundles["v2"], [key.public_key()]).manifest.created

    # A downgrade signed before v2 was made (to back out of an earlier release), replayed now.
    stale = kit.default_as(
        tmp_path / "stale", key, 1, allow_downgrade=True, created=made - timedelta(days=1)
    )
    publish_bundle(Connection(broker.url), stale, kit.GROUP, key)
    refused = running.wait_state("rejected")
    assert refused["reason"] == "not_newer"
    assert "signed before the active model" in refused["detail"]
    assert active.model_version == 2

    fresh = kit.default_as(
        tmp_path / "fresh", key, 1, allow_downgrade=True, created=made + timedelta(days=1)
    )
    publish_bundle(Connection(broker.url), fresh, kit.GROUP, key)
    committed = running.wait_state("committed")
    assert committed["model_version"] == 1
    assert active.model_version == 1


def test_a_junk_chunk_does_not_cancel_a_good_download(
    forecasting: Callable[[str], RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
) -> None:
    running = forecasting("v2")
    announcement, chunks = kit.packaged(bundles["v3"], key)
    # Anyone who saw an announcement can send chunks with its transfer id: here one with the
    # wrong bytes and one beyond the listed ones, both retained, so they come first.
    bad = encode_chunk(announcement.transfer_id, 1, b"bad bytes")
    beyond = encode_chunk(announcement.transfer_id, len(chunks), b"junk")
    kit.send(broker.url, announcement.to_bytes(), [None, bad, *[None] * (len(chunks) - 2), beyond])
    wait_for(
        lambda: running.agent.metrics.snapshot()["dropped"].get("fleet_bad_chunk", 0) >= 2,
        10,
        "the junk chunks counted",
    )
    kit.send(broker.url, None, list(chunks))
    committed = running.wait_state("committed")
    assert committed["model_version"] == 3
    assert running.states()[-4:] == ["received", "verified", "active", "committed"]


def test_a_bundle_signed_with_the_development_key_is_never_installed_by_update(
    run_agent: Callable[..., RunningAgent],
    bundles: dict[str, Path],
    broker: Broker,
    client_factory: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    """trust_dev_key is for the shipped bundle: its private half is public, so a fleet update
    signed with it must be refused even by an agent that trusts it for its own model."""
    running = run_agent(bundles["v2"], trust_dev_key=True)
    feed(client_factory("sensors"))
    running.wait_forecast_after(0, 2)
    dev_key = load_private_key(DEV_PRIVATE_KEY)
    forged = kit.default_as(tmp_path / "v99", dev_key, 99)
    publish_bundle(Connection(broker.url), forged, kit.GROUP, dev_key)
    refused = running.wait_state("rejected")
    assert refused["reason"] in ("signature", "no_trusted_key")
    assert running.agent.link.model_version == 2


def test_a_flood_of_junk_and_copies_does_not_hold_back_a_real_update(
    run_agent: Callable[..., RunningAgent],
    bundles: dict[str, Path],
    broker: Broker,
    key: Ed25519PrivateKey,
    client_factory: Callable[[str], Client],
) -> None:
    running = run_agent(bundles["v1"], updates={"max_announcements_per_hour": 2})
    feed(client_factory("sensors"))
    running.wait_forecast_after(0, 1)
    announcement, _ = kit.packaged(bundles["v2"], key)
    forged = [
        Announcement(announcement.manifest, b"", announcement.transfer + b" " * i, b"").to_bytes()
        for i in range(1, 6)
    ]
    for payload in forged + [forged[0]] * 20:  # five forgeries, then one of them 20 times more
        kit.send(broker.url, payload, [])
    wait_for(
        lambda: running.agent.metrics.snapshot()["dropped"].get("fleet_announcement_rate") == 3,
        what="three forgeries counted but not reported (the hour's two reports used)",
    )
    publish_bundle(Connection(broker.url), bundles["v2"], kit.GROUP, key)
    committed = running.wait_state("committed")
    assert committed["model_version"] == 2
    dropped = running.agent.metrics.snapshot()["dropped"]
    assert dropped["fleet_duplicate_announcement"] == 20
    assert running.states().count("rejected") == 2


def test_a_corrupt_transfer_does_not_block_its_manifest(
    forecasting: Callable[[str], RunningAgent],
    broker: Broker,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
) -> None:
    """A transfer whose bytes are not the signed model (damaged before it was sent) is
    rejected; the same manifest, sent again correctly, installs."""
    running = forecasting("v2")
    files = read_bundle_files(bundles["v3"])
    model = bytearray(files[MODEL_FILE])
    model[len(model) // 2] ^= 0xFF
    damaged, chunks = package(
        files[MANIFEST_FILE], files[SIGNATURE_FILE], bytes(model), key.sign, kit.CHUNK_BYTES
    )
    kit.send(broker.url, damaged.to_bytes(), list(chunks))
    refused = running.wait_state("rejected")
    assert refused["reason"] == "model_checksum"
    publish_bundle(Connection(broker.url), bundles["v3"], kit.GROUP, key)
    committed = running.wait_state("committed")
    assert committed["model_version"] == 3
