"""Durability: is every reading the broker acknowledged stored by the agent, across kill -9?

    python benchmarks/durability.py                          # 150 s, 2,000 readings/s
    python benchmarks/durability.py --duration 90 --rate 1500
    python benchmarks/durability.py --rate 0                 # as fast as the publishers go

Processes, as on a device: mosquitto started with the SHIPPED firmware_configs/mosquitto.conf
(only its listeners, TLS, ACL, log and persistence paths replaced: a free local port, anonymous,
a temporary directory); the agent (`python -m moecast.cli agent --config F`, the default bundle
with `trust_dev_key`); and `--publishers` child processes running this file with `publish`,
which publish numbered QoS 1 readings `{"ts", "value": seq, "seq": seq}` round-robin over
`--streams` streams at `--rate` messages/s in all, and record which the broker acknowledged
(PUBACK with a success code). This process watches `forecasts/#` and the agent's metrics.

During `--duration` seconds the agent is killed (SIGKILL) `--agent-kills` times and the broker
`--broker-kills` times, evenly spaced, each restarted after `--down-s`. Then the publishers
stop, the agent drains the broker's queue, a clock stream keeps the agent's gap detector
ticking for `--lateness` s (its `limits.streams.lateness_s`), and the counts are taken:
acknowledged to the publishers; stored (distinct readings in readings.db, the stored `value`
is the sequence number); lost (acknowledged, not stored); duplicate rows; redeliveries (the
agent's `messages`, summed over its lives, minus what it stored: approximate, since a killed
agent's last metrics snapshot is up to a second old); and `lost_upstream` as the agent's gap
detector reported it (summed over its lives). After each restart: seconds until the next
forecast arrived, against two cadences.

mosquitto saves its state every `autosave_interval` s (shipped: 10); a kill -9 loses what
arrived since, which is the loss this measures on the broker side. `--autosave N` replaces that
one setting, to measure the trade. Exit status 1 when more was lost than the gap detector
reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from timing import cpu_description, wait

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "firmware_configs" / "mosquitto.conf"
RESULTS = Path(__file__).resolve().parent / "results"
AGENT_ID = "durability"
CLOCK_TOPIC = "sensors/bench-clock/tick"  # unnumbered: only keeps the gap detector's clock going
# Settings of the shipped config that only make sense on a device: replaced, never kept.
REPLACED_KEYS = {
    "listener",
    "cafile",
    "certfile",
    "keyfile",
    "tls_version",
    "require_certificate",
    "use_identity_as_username",
    "acl_file",
    "password_file",
    "allow_anonymous",
    "per_listener_settings",
    "persistence_location",
    "log_dest",
    "pid_file",
    "user",
}


def stream_topic(stream: int) -> str:
    return f"sensors/dev{stream:03d}/value"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# The publisher: a child process, `python benchmarks/durability.py publish ...`.


def ranges(numbers: list[int]) -> list[list[int]]:
    """Sorted numbers as [first, last] runs: a million acknowledgements in a few hundred pairs."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        elif not runs or n > runs[-1][1]:
            runs.append([n, n])
    return runs


def publish_main(args: argparse.Namespace) -> int:
    streams = list(range(args.first, args.first + args.count))
    lock = threading.Lock()
    # mid -> (stream, seq). Never held while calling paho: paho calls on_publish holding its
    # own lock, and publish() takes that lock. A PUBACK may beat the entry: `early` keeps it.
    pending: dict[int, tuple[int, int]] = {}
    early: dict[int, Any] = {}
    acked: dict[int, list[int]] = {s: [] for s in streams}
    refused: dict[str, int] = {}
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"durability-publisher-{args.first}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)  # buffer while the broker is down, like a gateway would
    client.reconnect_delay_set(0.1, 1)

    def settle(stream: int, seq: int, code: Any) -> None:
        if code.is_failure or code.value == 0x10:  # 0x10: no matching subscribers
            refused[str(code)] = refused.get(str(code), 0) + 1
        else:
            acked[stream].append(seq)

    def on_publish(c: paho.Client, userdata: Any, mid: int, code: Any, props: Any) -> None:
        with lock:
            entry = pending.pop(mid, None)
            if entry is None:
                early[mid] = code
            else:
                settle(*entry, code)

    client.on_publish = on_publish
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    wait(client.is_connected, 10, "the publisher to connect")
    seqs = dict.fromkeys(streams, 0)
    last_ts = dict.fromkeys(streams, 0.0)
    interval = args.count / args.rate if args.rate > 0 else 0.0  # seconds per round
    start = time.monotonic()
    rounds = 0
    stop_at = start + args.duration
    while time.monotonic() < stop_at:
        for stream in streams:
            seqs[stream] += 1
            seq = seqs[stream]
            # Event time: now, strictly increasing per stream, so a redelivery is the same row.
            ts = max(round(time.time(), 3), round(last_ts[stream] + 0.001, 3))
            last_ts[stream] = ts
            payload = f'{{"ts":{ts:.3f},"value":{seq},"seq":{seq}}}'
            info = client.publish(stream_topic(stream), payload, 1)
            with lock:
                code = early.pop(info.mid, None)
                if code is None:
                    pending[info.mid] = (stream, seq)
                else:
                    settle(stream, seq, code)
        rounds += 1
        if interval:
            ahead = start + rounds * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while len(pending) > args.max_pending:  # the broker is down or slow: wait, like QoS 1
            time.sleep(0.01)
    published = sum(seqs.values())
    publishing_s = time.monotonic() - start
    with contextlib.suppress(TimeoutError):
        wait(lambda: not pending, args.ack_timeout, "the last PUBACKs")
    client.disconnect()
    client.loop_stop()
    with lock:
        result = {
            "published": published,
            "elapsed_s": publishing_s,
            "unacked": len(pending),
            "refused": refused,
            "acked": {str(s): ranges(acked[s]) for s in streams},
        }
    Path(args.out).write_text(json.dumps(result))
    return 0


# The broker, the agent and the watcher.


def broker_config(
    directory: Path, port: int, autosave: int | None = None
) -> tuple[Path, dict[str, str]]:
    """The shipped config with its device-specific lines replaced; returns (file, settings).
    `autosave` replaces its autosave_interval, to measure that trade (`--autosave`)."""
    kept: dict[str, str] = {}
    lines = [f"# {SHIPPED_CONFIG}, listeners, security and paths replaced for this benchmark"]
    for raw in SHIPPED_CONFIG.read_text().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#") or words[0] in REPLACED_KEYS:
            continue
        if words[0] == "autosave_interval" and autosave is not None:
            words, raw = [words[0], str(autosave)], f"autosave_interval {autosave}"
        kept[words[0]] = " ".join(words[1:])
        lines.append(raw)
    lines += [
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"persistence_location {directory}/",
        f"log_dest file {directory}/mosquitto.log",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    config = directory / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return config, kept


class Broker:
    def __init__(self, directory: Path, autosave: int | None) -> None:
        found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            sys.exit("mosquitto is not installed (apt-get install mosquitto)")
        self.mosquitto = found
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.config, self.kept = broker_config(directory, self.port, autosave)
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.mosquitto, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait(self._accepts, 60, "mosquitto to listen")  # it loads its database first

    def kill(self) -> None:
        assert self.process is not None
        self.sample_rss()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.sample_rss()
            self.process.terminate()
            self.process.wait(30)

    def sample_rss(self) -> None:
        assert self.process is not None
        with contextlib.suppress(OSError, ValueError):
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            kib = int(status.split("VmHWM:")[1].split()[0])
            self.peak_rss_mb = max(self.peak_rss_mb, kib / 1024)

    def dropped_lines(self) -> int:
        log = self.directory / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.count("Outgoing messages are being dropped")

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            sys.exit(f"mosquitto exited with {self.process.returncode}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0


class Agent:
    def __init__(self, directory: Path, port: int, args: argparse.Namespace) -> None:
        directory.mkdir()
        self.directory = directory
        settings = {
            "agent_id": AGENT_ID,
            # Reconnect within a second of the broker's return (the default backs off to 60 s).
            "broker": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_max_s": 1.0},
            "storage_dir": str(directory / "data"),
            "trust_dev_key": True,  # the shipped default bundle
            "forecast": {"cadence_s": args.cadence},
            "metrics": {"interval_s": 0.5},
            "limits": {
                # Gaps are counted lost this long after they open: short, to see them in a run.
                "streams": {"lateness_s": args.lateness},
                # Keep every reading of the run, so the store can be compared with the acks.
                "store": {"retention_points": 10_000_000},
            },
            "log_level": "INFO",
        }
        self.config = directory / "agent.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = directory / "agent.log"
        self.db = directory / "data" / "readings.db"
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moecast.cli", "agent", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def kill(self) -> None:
        assert self.process is not None
        self.sample_rss()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.sample_rss()
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def sample_rss(self) -> None:
        assert self.process is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            kib = int(status.split("VmHWM:")[1].split()[0])
            self.peak_rss_mb = max(self.peak_rss_mb, kib / 1024)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            sys.exit(f"the agent exited with {self.process.returncode}:\n{tail}")

    def log_count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0


class Watcher:
    """Forecast arrivals, the agent's status and its metrics, across broker restarts."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.forecasts: list[float] = []  # monotonic arrival of each live (non-retained) one
        self.online: list[float] = []  # monotonic arrival of each live "online" status
        # (arrival, life, connects) per live metrics snapshot: when the agent had reconnected.
        self.connects: list[tuple[float, int, int]] = []
        self.lives: list[dict[str, Any]] = []  # the last metrics snapshot of each agent life
        self._last_uptime = -1.0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"durability-watcher-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *rest: Any) -> None:
        client.subscribe([("forecasts/#", 0), (f"moecast/agents/{AGENT_ID}/+", 0)])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        with self.lock:
            if message.topic.startswith("forecasts/"):
                if not message.retain:
                    self.forecasts.append(now)
            elif message.topic.endswith("/status") and not message.retain:
                if json.loads(message.payload).get("state") == "online":
                    self.online.append(now)
            elif message.topic.endswith("/metrics"):
                snap = json.loads(message.payload)
                uptime = snap["uptime_s"]
                if message.retain and uptime <= self._last_uptime:
                    return  # the retained copy a resubscribe brings: seen already
                if not self.lives or uptime < self._last_uptime:
                    self.lives.append({})  # a new agent process
                self._last_uptime = uptime
                self.lives[-1] = snap
                if not message.retain:
                    self.connects.append((now, len(self.lives), int(snap["connects"])))

    def first_forecast_after(self, t: float) -> float | None:
        with self.lock:
            return next((f for f in self.forecasts if f > t), None)

    def reconnected_after(self, t: float) -> float | None:
        """When the first metrics snapshot from a connection newer than the one before `t`
        arrived: the watcher may miss a live "online" status while it reconnects itself."""
        with self.lock:
            before = [(life, n) for at, life, n in self.connects if at <= t]
            baseline = before[-1] if before else (0, 0)
            return next(
                (at for at, life, n in self.connects if at > t and (life, n) != baseline), None
            )

    def sums(self, key: str) -> int:
        with self.lock:
            return sum(_deep(life, key) for life in self.lives)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _deep(snapshot: dict[str, Any], key: str) -> int:
    value: Any = snapshot
    for part in key.split("."):
        value = value.get(part, 0) if isinstance(value, dict) else 0
    return int(value or 0)


def stored(db: Path) -> tuple[dict[int, set[int]], int]:
    """Stored sequence numbers per stream, and how many rows repeat one."""
    per_stream: dict[int, set[int]] = {}
    rows = 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        query = (
            "SELECT device, value FROM readings JOIN streams ON streams.id = stream_id "
            "WHERE device LIKE 'dev%'"
        )
        for device, value in connection.execute(query):
            per_stream.setdefault(int(device[3:]), set()).add(int(value))
            rows += 1
    return per_stream, rows - sum(len(s) for s in per_stream.values())


def stored_count(db: Path) -> int:
    """Readings stored, the clock stream's left out."""
    if not db.exists():
        return 0
    query = (
        "SELECT count(*) FROM readings WHERE stream_id NOT IN "
        "(SELECT id FROM streams WHERE device = 'bench-clock')"
    )
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        return int(connection.execute(query).fetchone()[0])


def schedule(args: argparse.Namespace) -> list[tuple[float, str]]:
    """Evenly spaced kills; the broker's spread out among the agent's."""
    total = args.agent_kills + args.broker_kills
    kinds = ["agent"] * total
    for i in range(args.broker_kills):
        kinds[int((i + 0.5) * total / args.broker_kills)] = "broker"
    return [(args.duration * (i + 1) / (total + 1), kind) for i, kind in enumerate(kinds)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="moecast-durability-"))
    broker = Broker(workdir / "broker", args.autosave)
    broker.start()
    agent = Agent(workdir / "agent", broker.port, args)
    agent.start()
    watcher = Watcher(broker.port)
    publishers: list[subprocess.Popen[bytes]] = []
    events: list[dict[str, Any]] = []
    try:
        wait(lambda: watcher.online, 120, "the agent to come online")
        per = -(-args.streams // args.publishers)
        outs = []
        t0 = time.monotonic()
        for k in range(args.publishers):
            first, count = k * per, min(per, args.streams - k * per)
            out = workdir / f"publisher{k}.json"
            outs.append(out)
            publishers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "publish",
                        f"--port={broker.port}",
                        f"--first={first}",
                        f"--count={count}",
                        f"--rate={args.rate * count / args.streams}",
                        f"--duration={args.duration}",
                        f"--out={out}",
                    ]
                )
            )
        for at, kind in schedule(args):
            while time.monotonic() - t0 < at:
                agent.check_alive()
                time.sleep(0.2)
            before = stored_count(agent.db)
            if kind == "agent":
                agent.kill()
                time.sleep(args.down_s)
                agent.start()
            else:
                broker.kill()
                time.sleep(args.down_s)
                broker.start()
            restarted = time.monotonic()
            events.append(
                {"at_s": round(restarted - t0, 1), "killed": kind, "stored_before": before}
            )
            print(f"  {restarted - t0:6.1f} s  kill -9 {kind}, restarted", flush=True)
        for process in publishers:
            process.wait(args.duration + args.ack_timeout + 60)
        published_at = time.monotonic()
        results = [json.loads(out.read_text()) for out in outs]
        acked = {int(s): r for res in results for s, r in res["acked"].items()}
        n_acked = sum(hi - lo + 1 for runs in acked.values() for lo, hi in runs)
        print(f"  publishers done: {n_acked:,} acknowledged; draining the broker's queue")
        # Drained when the store stops growing; the clock stream keeps batches (and with them
        # the gap detector's expiry) coming meanwhile.
        clock = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        clock.connect("127.0.0.1", broker.port)
        clock.loop_start()
        last, still_since, clock_messages = -1, time.monotonic(), 0
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            clock.publish(CLOCK_TOPIC, f'{{"ts":{time.time():.3f},"value":0}}', 1)
            clock_messages += 1
            count = stored_count(agent.db)
            if count != last:
                last, still_since = count, time.monotonic()
            elif time.monotonic() - still_since > max(args.lateness + 3, 10):
                break  # quiet for longer than the gap detector waits: it has counted
            time.sleep(0.5)
        drained_s = time.monotonic() - published_at
        time.sleep(1.5)  # one more metrics snapshot
        clock.loop_stop()
        clock.disconnect()
        agent.stop()
        broker.stop()
        for event in events:
            online = watcher.reconnected_after(t0 + event["at_s"])
            event["online_after_s"] = (
                None if online is None else round(online - t0 - event["at_s"], 1)
            )
            arrival = watcher.first_forecast_after(t0 + event["at_s"])
            event["forecast_after_s"] = (
                None if arrival is None else round(arrival - t0 - event["at_s"], 1)
            )
            event["within_two_cadences"] = arrival is not None and (
                arrival - t0 - event["at_s"] <= 2 * args.cadence
            )
        per_stream, duplicate_rows = stored(agent.db)
        lost_runs = {
            s: ranges(
                [q for lo, hi in runs for q in range(lo, hi + 1) if q not in per_stream.get(s, ())]
            )
            for s, runs in acked.items()
        }
        lost_by_stream = {s: sum(hi - lo + 1 for lo, hi in r) for s, r in lost_runs.items()}
        n_stored = sum(len(v) for v in per_stream.values())
        # What the gap detector can see: numbers missing below each stream's highest stored.
        gaps = sum(max(v) - len(v) for v in per_stream.values() if v)
        published = sum(r["published"] for r in results)
        return {
            "published": published,
            "acked": n_acked,
            "unacked_at_end": sum(r["unacked"] for r in results),
            "refused": {k: v for r in results for k, v in r["refused"].items()},
            "stored": n_stored,
            "lost": sum(lost_by_stream.values()),
            "lost_streams": sum(1 for n in lost_by_stream.values() if n),
            # One run of consecutive numbers per stream and loss event: 2 per stream after two
            # broker kills says that is where everything was lost.
            "lost_runs_per_stream": sorted({len(r) for r in lost_runs.values()}),
            # apscheduler's: a tick still running at the next one, or one started too late.
            "ticks_missed_log_lines": agent.log_count("maximum number of running instances")
            + agent.log_count("was missed by"),
            "stored_not_acked": n_stored - (n_acked - sum(lost_by_stream.values())),
            "duplicate_rows": duplicate_rows,
            "redelivered_approx": watcher.sums("messages") - n_stored - clock_messages,
            "gaps_in_store": gaps,
            "lost_upstream_reported": watcher.sums("lost_upstream.total"),
            "session_lost_reported": watcher.sums("session_lost"),
            "session_lost_log_lines": agent.log_count("did not resume this agent's session"),
            "agent_lives": len(watcher.lives),
            "broker_drop_log_lines": broker.dropped_lines(),
            "publish_s": round(max(r["elapsed_s"] for r in results), 1),
            "rate_achieved": round(published / max(r["elapsed_s"] for r in results)),
            "drain_s": round(drained_s, 1),
            "agent_peak_rss_mb": round(agent.peak_rss_mb),
            "broker_peak_rss_mb": round(broker.peak_rss_mb),
            "broker_settings": broker.kept,
            "events": events,
            "workdir": str(workdir),
        }
    finally:
        watcher.close()
        for process in publishers:
            if process.poll() is None:
                process.kill()
        agent.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, result: dict[str, Any], command: str) -> None:
    rows = [
        ("readings published", f"{result['published']:,}"),
        ("acknowledged by the broker (PUBACK)", f"{result['acked']:,}"),
        ("stored by the agent (distinct)", f"{result['stored']:,}"),
        (
            "lost: acknowledged, not stored",
            f"{result['lost']:,} in {result['lost_streams']} streams, "
            f"{result['lost_runs_per_stream']} runs each",
        ),
        ("duplicate rows in the store", f"{result['duplicate_rows']:,}"),
        ("redelivered to the agent (approx.)", f"{result['redelivered_approx']:,}"),
        ("missing numbers in the store", f"{result['gaps_in_store']:,}"),
        ("lost_upstream reported by the agent", f"{result['lost_upstream_reported']:,}"),
        (
            "session_lost reported / logged",
            f"{result['session_lost_reported']} / {result['session_lost_log_lines']}",
        ),
        ("refused PUBACKs (no subscriber, errors)", json.dumps(result["refused"])),
        ("mosquitto 'messages dropped' log lines", f"{result['broker_drop_log_lines']}"),
        ("rate achieved (messages/s)", f"{result['rate_achieved']:,}"),
        ("drain after publishing (s)", f"{result['drain_s']}"),
        (
            "peak RSS agent / broker (MB)",
            f"{result['agent_peak_rss_mb']} / {result['broker_peak_rss_mb']}",
        ),
    ]
    print()
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print(
        "| restart at (s) | killed | agent reconnected after (s) | next forecast after (s) "
        f"| within 2 x {args.cadence:g} s |"
    )
    print("|---|---|---|---|---|")
    for e in result["events"]:
        ok = "yes" if e["within_two_cadences"] else "no"
        print(
            f"| {e['at_s']} | {e['killed']} | {e['online_after_s']} | {e['forecast_after_s']} "
            f"| {ok} |"
        )
    print(f"ticks skipped (longer than the cadence, or late): {result['ticks_missed_log_lines']}")
    print()
    print(f"broker settings kept from {SHIPPED_CONFIG.name}: {result['broker_settings']}")
    print(f"command: {command}")
    print(
        f"machine: {cpu_description()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    pub = sub.add_parser("publish", help="(internal) one publisher process")
    pub.add_argument("--port", type=int, required=True)
    pub.add_argument("--first", type=int, required=True)
    pub.add_argument("--count", type=int, required=True)
    pub.add_argument("--rate", type=float, required=True)
    pub.add_argument("--duration", type=float, required=True)
    pub.add_argument("--out", required=True)
    pub.add_argument("--max-pending", type=int, default=20_000)
    pub.add_argument("--ack-timeout", type=float, default=120.0)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages/s, 0: flat out")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--agent-kills", type=int, default=5)
    parser.add_argument("--broker-kills", type=int, default=2)
    parser.add_argument("--down-s", type=float, default=2.0, help="outage after each kill")
    parser.add_argument("--cadence", type=float, default=10.0, help="forecast cadence (s)")
    parser.add_argument("--lateness", type=float, default=10.0, help="agent's lateness_s")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--ack-timeout", type=float, default=120.0)
    parser.add_argument(
        "--autosave",
        type=int,
        help="replace the shipped autosave_interval (s), to measure its trade; default: as shipped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.command == "publish":
        return publish_main(args)
    command = "python benchmarks/durability.py " + " ".join(sys.argv[1:])
    print(f"durability: {args.duration:g} s at {args.rate:g} msg/s over {args.streams} streams")
    result = run(args)
    report(args, result, command)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"durability-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"command": command, "cpu": cpu_description(), "args": vars(args)}
    out.write_text(json.dumps({**meta, **result}, indent=2))
    print(f"results: {out}")
    # Loss across a broker kill -9 is what autosave_interval allows; loss nobody reported is not.
    return 0 if result["lost"] <= result["lost_upstream_reported"] else 1


if __name__ == "__main__":
    sys.exit(main())
