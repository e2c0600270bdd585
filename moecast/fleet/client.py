"""The operator's side of fleet updates: publish signed bundles to a group, and read
back what the group's agents report. No torch: `moecast fleet publish | status` run anywhere.

    conn = Connection("mqtts://broker:8883", ca_file="ca.pem", username="ops", password=...)
    publish_bundle(conn, "bundles/edge-v4", "site-7", load_private_key("keys/signing-key.pem"))
    rows = fleet_status(conn, "site-7")

The wire format is `agent.update_wire`'s; publishing order makes it robust to agents that
connect half-way: chunks first (each acknowledged by the broker), the announcement last, then
chunks left over from a larger previous bundle are cleared.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from moecast.bundle.format import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Manifest,
    load_bundle,
    public_key_fingerprint,
    read_bundle_files,
)
from moecast.bundle.wire import (
    DEFAULT_CHUNK_BYTES,
    Announcement,
    WireError,
    bundle_topic,
    chunk_topic,
    package,
)

DEFAULT_FLEET_PREFIX = "moecast/fleet"
DEFAULT_AGENTS_PREFIX = "moecast/agents"
# How long to listen for retained messages: they follow the SUBACK at once on a local broker.
DEFAULT_LISTEN_S = 3.0


class FleetError(RuntimeError):
    """The broker cannot be reached, refused us, or did not acknowledge a message."""


@dataclass(frozen=True)
class Connection:
    """How an operator tool reaches the broker (never logged: it holds the password)."""

    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"Connection({self.url!r}, username={self.username!r})"


@contextmanager
def connected(conn: Connection, timeout_s: float = 10.0) -> Iterator[paho.Client]:
    parts = urlsplit(conn.url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise FleetError(f"the broker URL must be mqtt[s]://host[:port], got {conn.url}")
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    if conn.username is not None:
        client.username_pw_set(conn.username, conn.password)
    if parts.scheme == "mqtts":
        client.tls_set(
            ca_certs=str(conn.ca_file) if conn.ca_file else None,
            certfile=str(conn.cert_file) if conn.cert_file else None,
            keyfile=str(conn.key_file) if conn.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    ready = threading.Event()
    refusal: list[str] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refusal.append(str(reason))
        ready.set()

    client.on_connect = on_connect
    client.max_queued_messages_set(0)
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    try:
        client.connect(parts.hostname, port)
    except (OSError, ssl.SSLError) as err:
        raise FleetError(f"cannot connect to {parts.hostname}:{port}: {err}") from None
    client.loop_start()
    try:
        if not ready.wait(timeout_s) or refusal:
            why = refusal[0] if refusal else f"no answer within {timeout_s:g} s"
            raise FleetError(f"the broker refused the connection: {why}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def retained(
    conn: Connection, subscriptions: Iterable[str], listen_s: float = DEFAULT_LISTEN_S
) -> dict[str, bytes]:
    """The latest message on every topic matching `subscriptions` within `listen_s` seconds
    (retained ones first): topic -> payload."""
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with lock:
            received[message.topic] = message.payload

    with connected(conn) as client:
        client.on_message = on_message
        client.subscribe([(topic, 1) for topic in subscriptions])
        time.sleep(listen_s)
    with lock:
        return {topic: payload for topic, payload in received.items() if payload}


@dataclass(frozen=True)
class Published:
    manifest: Manifest
    chunks: int
    model_bytes: int
    cleared: int  # stale chunk topics of a previous, larger bundle
    key_fingerprint: str


def publish_bundle(
    conn: Connection,
    bundle: str | Path,
    group: str,
    signing_key: Ed25519PrivateKey,
    *,
    fleet_prefix: str = DEFAULT_FLEET_PREFIX,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timeout_s: float = 60.0,
) -> Published:
    """Publish `bundle` (directory or .tar) to `group`, retained. It must verify with the
    signing key's public half first: a bundle that no agent could accept is never sent."""
    trusted = [signing_key.public_key()]
    manifest = load_bundle(bundle, trusted).manifest
    files = read_bundle_files(bundle)
    model = files[MODEL_FILE]
    announcement, chunks = package(
        files[MANIFEST_FILE], files[SIGNATURE_FILE], model, signing_key.sign, chunk_bytes
    )
    topic = bundle_topic(fleet_prefix, group)
    previous = _chunk_count(retained(conn, [topic], listen_s=1.0).get(topic))
    with connected(conn) as client:
        infos = [
            client.publish(chunk_topic(fleet_prefix, group, i), payload, qos=1, retain=True)
            for i, payload in enumerate(chunks)
        ]
        _wait_all(infos, timeout_s)
        # Last: an agent that sees the announcement finds every chunk already retained.
        _wait_all([client.publish(topic, announcement.to_bytes(), qos=1, retain=True)], timeout_s)
        stale = range(len(chunks), previous)
        _wait_all(
            [client.publish(chunk_topic(fleet_prefix, group, i), b"", 1, True) for i in stale],
            timeout_s,
        )
    return Published(
        manifest,
        len(chunks),
        len(files[MODEL_FILE]),
        len(stale),
        public_key_fingerprint(signing_key.public_key()),
    )


def _chunk_count(payload: bytes | None) -> int:
    """How many chunks the currently retained announcement lists (read, not trusted: it only
    says which chunk topics to clear)."""
    if not payload:
        return 0
    try:
        transfer = json.loads(Announcement.parse(payload).transfer)
        return min(len(transfer["chunks"]), 100_000)
    except (WireError, ValueError, KeyError, TypeError):
        return 0


def _wait_all(infos: list[paho.MQTTMessageInfo], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for info in infos:
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise FleetError(f"publishing failed: {paho.error_string(info.rc)}")
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as err:
            raise FleetError(f"publishing failed: {err}") from None
        if not info.is_published():
            raise FleetError(f"the broker did not acknowledge within {timeout_s:g} s")


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    state: str | None  # online / offline, from the retained status
    model_version: Any
    update: str | None  # the last update step
    update_version: Any
    reason: str | None
    detail: str | None
    ts: float | None
    # Where its streams come from and how busy it is (retained status and metrics).
    filters: list[str] | None = None
    streams: int | None = None
    readings: int | None = None  # accepted since it started
    tick_s: float | None = None  # mean forecasting tick


def fleet_status(
    conn: Connection,
    group: str,
    *,
    agents_prefix: str = DEFAULT_AGENTS_PREFIX,
    listen_s: float = DEFAULT_LISTEN_S,
) -> list[AgentRow]:
    """One row per agent of `group`: its retained status, its last update step and, while it
    runs, its load from its retained metrics."""
    topics = [f"{agents_prefix}/+/{kind}" for kind in ("status", "bundle", "metrics")]
    messages = retained(conn, topics, listen_s)
    documents: dict[str, dict[str, dict[str, Any]]] = {}
    for topic, payload in messages.items():
        agent_id, kind = topic[len(agents_prefix) + 1 :].split("/", 1)
        document = _json_object(payload)
        if document is not None:
            documents.setdefault(agent_id, {})[kind] = document
    rows = []
    for agent_id, parts in sorted(documents.items()):
        status, update = parts.get("status", {}), parts.get("bundle", {})
        metrics = parts.get("metrics", {})
        if group not in (status.get("group"), update.get("group")):
            continue
        tick = metrics.get("forecast_tick_s") or {}
        rows.append(
            AgentRow(
                agent_id,
                status.get("state"),
                status.get("model_version"),
                update.get("state"),
                update.get("model_version"),
                update.get("reason"),
                update.get("detail"),
                update.get("ts"),
                status.get("filters"),
                metrics.get("streams"),
                metrics.get("readings_accepted"),
                tick["sum"] / tick["count"] if tick.get("count") else None,
            )
        )
    return rows


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def status_table(rows: list[AgentRow]) -> str:
    header = ("agent", "status", "model", "update", "version", "reason")
    lines = [
        (
            row.agent_id,
            row.state or "-",
            _dash(row.model_version),
            row.update or "-",
            _dash(row.update_version),
            row.reason or "",
        )
        for row in rows
    ]
    return _table(header, lines)


def load_table(rows: list[AgentRow]) -> str:
    """Which streams each agent takes (a sharded site: disjoint filters) and its load."""
    header = ("agent", "streams", "readings", "tick_s", "filters")
    lines = [
        (
            row.agent_id,
            _dash(row.streams),
            _dash(row.readings),
            "-" if row.tick_s is None else f"{row.tick_s:.3f}",
            ",".join(row.filters) if row.filters else "-",
        )
        for row in rows
    ]
    return _table(header, lines)


def _table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    widths = [max(map(len, column)) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    )


@dataclass(frozen=True)
class SiteLoad:
    """The expert load a group's agents reported, summed onto the checkpoint's experts."""

    load: np.ndarray  # [n_layers, n_experts]
    agents: list[str]
    runs: int


def collect_expert_load(
    conn: Connection,
    group: str,
    n_layers: int,
    n_experts: int,
    *,
    agents_prefix: str = DEFAULT_AGENTS_PREFIX,
    listen_s: float = DEFAULT_LISTEN_S,
) -> SiteLoad:
    """Sum the `expert_load` sections of the group's latest metrics messages."""
    messages = retained(conn, [f"{agents_prefix}/+/metrics"], listen_s)
    sections = {}
    for topic, payload in messages.items():
        document = _json_object(payload)
        section = None if document is None else document.get("expert_load")
        if isinstance(section, dict) and section.get("group") == group:
            sections[topic[len(agents_prefix) + 1 :].split("/", 1)[0]] = section
    return aggregate_loads(sections, n_layers, n_experts)


def aggregate_loads(sections: dict[str, dict[str, Any]], n_layers: int, n_experts: int) -> SiteLoad:
    """Map each agent's columns (its model's kept experts) back to expert indices and sum;
    sections from a model with another layer count, or malformed, are skipped."""
    total = np.zeros((n_layers, n_experts))
    used, runs = [], 0
    for agent_id, section in sorted(sections.items()):
        try:
            load = np.asarray(section["load"], dtype=np.float64)
            kept = section["experts_per_layer"]
            if len(kept) != n_layers or load.shape[0] != n_layers:
                continue
            mapped = np.zeros_like(total)
            for layer, experts in enumerate(kept):
                for column, expert in enumerate(experts):
                    mapped[layer, int(expert)] += load[layer, column]
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if not np.isfinite(mapped).all() or (mapped < 0).any():
            continue
        total += mapped
        used.append(agent_id)
        runs += int(section.get("runs", 0))
    return SiteLoad(total, used, runs)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None
