"""A real mosquitto broker per test, on a free local port, and helpers to talk to it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from moecast.agent.runtime import Agent, OnTick
from moecast.agent.settings import AgentSettings, load_settings
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or next(
    (path for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(path).exists()),
    None,
)


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll `condition` every 10 ms until it is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """mosquitto with persistence, so a restart keeps sessions and queued messages."""

    def __init__(self, directory: Path, security: str = "allow_anonymous true\n") -> None:
        """`security`: config lines for authentication and TLS (default: anonymous, plain)."""
        assert MOSQUITTO is not None
        self.directory = directory
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{security}"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            # Queues are sized for the tests' bursts: mosquitto's default of 1000 queued
            # messages per client would drop readings published while the agent is away.
            "max_queued_messages 100000\n"
            "user root\n"  # keep access to pytest's private tmp dir when run as root
            f"log_dest file {directory}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._accepts, 10, f"mosquitto on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file on the way out."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "mosquitto.log").read_text(errors="replace")
            pytest.fail(f"mosquitto exited with {self.process.returncode}:\n{log[-2000:]}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0


def require_mosquitto(*tools: str) -> None:
    """Skip a broker test where mosquitto (and `tools`) are missing; fail it under CI=true,
    where the broker tests must run rather than pass by skipping."""
    missing = [] if MOSQUITTO is not None else ["mosquitto"]
    missing += [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (apt-get install mosquitto mosquitto-clients)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true needs the broker tests: {why}")
    pytest.skip(why)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto()
    directory = tmp_path / "broker"
    directory.mkdir()
    running = Broker(directory)
    running.start()
    yield running
    running.stop()


_client_numbers = itertools.count()


class Client:
    """A test-side MQTT client: publishes (recording which QoS 1 messages were acknowledged)
    and collects what arrives on its subscriptions."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        ca_file: Path | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.received: list[tuple[str, bytes, bool]] = []
        self.acked: set[int] = set()
        self._subscribed: set[int] = set()  # mids of SUBACKed subscriptions
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{name}-{os.getpid()}-{next(_client_numbers)}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if ca_file is not None:
            self._client.tls_set(ca_certs=str(ca_file))
        if credentials is not None:
            self._client.username_pw_set(*credentials)
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        wait_for(self._client.is_connected, 5, "the test client to connect")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        info = self._client.publish(topic, payload, qos)
        return info.mid

    def publish_reading(self, topic: str, ts: float, value: float, qos: int = 1) -> int:
        return self.publish(topic, json.dumps({"ts": ts, "value": value}), qos)

    def wait_acked(self, mids: set[int], timeout_s: float = 10.0) -> None:
        wait_for(lambda: mids <= self.acked_now(), timeout_s, "PUBACKs from the broker")

    def acked_now(self) -> set[int]:
        with self._lock:
            return set(self.acked)

    def subscribe(self, topic: str, timeout_s: float = 5.0) -> None:
        """Subscribe, and return once the broker's SUBACK says the subscription is in place:
        whatever is published from then on reaches this client."""
        result, mid = self._client.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS

        def subacked() -> bool:
            with self._lock:
                return mid in self._subscribed

        wait_for(subacked, timeout_s, f"the SUBACK of {topic}")

    def messages_on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.received if t == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload, message.retain))

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: Any, properties: Any
    ) -> None:
        with self._lock:
            self._subscribed.add(mid)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, *args: Any) -> None:
        with self._lock:
            self.acked.add(mid)


@pytest.fixture
def client_factory(broker: Broker) -> Iterator[Callable[[str], Client]]:
    clients: list[Client] = []

    def make(name: str) -> Client:
        clients.append(Client(broker, name))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def agent_settings(broker: Broker, storage: Path, /, **overrides: Any) -> AgentSettings:
    """Settings for a test agent: fast reconnects and metrics, this test's broker and storage."""
    base: dict[str, Any] = {
        "agent_id": "test-agent",
        "broker": {"url": broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "storage_dir": storage,
        "metrics": {"interval_s": 0.5},
        "ingest": {"log_interval_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(None, **base)


def stored_rows(db: Path) -> list[tuple[str, str, float, float]]:
    """Every stored reading as (device, sensor, ts, value), read on a separate connection."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as connection:
        return connection.execute(
            "SELECT device, sensor, ts, value FROM readings JOIN streams ON streams.id = stream_id"
        ).fetchall()


def stored_count(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as connection:
        return int(connection.execute("SELECT count(*) FROM readings").fetchone()[0])


class AgentProcess:
    """`python -m moecast.cli agent --config F` in a child process, for kill -9 tests."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moecast.cli", "agent", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=REPO,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(15)

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_agent(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start in-process agents on the test broker (stopped at teardown). `on_tick_for` builds
    the tick callback from the agent's settings (e.g. a Forecaster)."""
    running: list[Agent] = []

    def start(
        on_tick_for: Callable[[AgentSettings], OnTick] | None = None,
        model_version: int | None = None,
        **overrides: Any,
    ) -> Agent:
        settings = agent_settings(broker, tmp_path / "agent", **overrides)
        agent = Agent(settings, on_tick=on_tick_for(settings) if on_tick_for else None)
        if model_version is not None:
            agent.link.model_version = model_version
        agent.start()
        running.append(agent)
        assert agent.link.wait_connected(10)
        return agent

    yield start
    for agent in running:
        if agent.ingest.alive:
            agent.stop()
