"""Agent throughput, all in one run on this machine.

    python benchmarks/agent_throughput.py            # full run, about 3 minutes
    python benchmarks/agent_throughput.py --quick    # shorter runs, about 1 minute

Three kinds of process, as on a device: a private mosquitto on a free port; the agent
(`python -m moecast.cli agent --config F`, the shipped default bundle with `trust_dev_key`);
and a publisher (paho-mqtt, a child process running this file with `publish`). This process
watches the agent's metrics, status and forecast topics.

1. Ingest, into an agent whose forecasting tick never fires: readings/s stored (the agent's
   `readings_accepted` counter, which counts a batch after its SQLite commit, read from its
   metrics topic every 0.25 s, rate over the samples between the first and the last change):
   (a) one reading per message `{"ts": ..., "value": ...}` at QoS 0, (b) the same at QoS 1,
   where a reading is acknowledged only once stored, (c) batch payloads (a JSON list of
   BATCH readings per message, QoS 1). Streams: INGEST_STREAMS per run.
2. Forecasting, in a fresh agent: FORECAST_STREAMS streams with a full context of history
   (600 readings 10 s apart), cadence CADENCE_S; per tick, from the tick's start (its
   `issued_at`) to the arrival of its last forecast at a subscriber of `forecasts/#`, next to
   the agent's own tick and inference times (its metrics histograms' sums, one tick apart).
3. Peak RSS of each agent (VmHWM from /proc/<pid>/status, read before stopping it).

Before the agent starts, the same single-reading floods go to a paho subscriber that does
nothing but count (a child process running this file with `listen`): the rate the MQTT client
library alone reaches on this machine, next to the agent's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from timing import cpu_description

REPO = Path(__file__).resolve().parents[1]
AGENT_ID = "bench"
GOALS = {
    "qos0_readings_per_s": 30_000.0,
    "qos1_readings_per_s": 10_000.0,
    "batch_readings_per_s": 300_000.0,
    "tick_latency_s": 0.25,
    "peak_rss_mb": 150.0,
}
HIGHER_IS_BETTER = {"qos0_readings_per_s", "qos1_readings_per_s", "batch_readings_per_s"}
INGEST_STREAMS = 100
BATCH = 500  # readings per batch message
FORECAST_STREAMS = 1000
HISTORY = 600  # readings per stream before the forecasting ticks: more than the context (512)
HISTORY_INTERVAL_S = 10.0
CADENCE_S = 5.0
METRICS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Scale:
    qos0_messages: int
    qos1_messages: int
    batch_messages: int
    ticks: int


FULL = Scale(qos0_messages=300_000, qos1_messages=150_000, batch_messages=4_000, ticks=8)
QUICK = Scale(qos0_messages=100_000, qos1_messages=50_000, batch_messages=1_000, ticks=3)


# The publisher: a child process, `python benchmarks/agent_throughput.py publish ...`.


def publish_main(args: argparse.Namespace) -> int:
    """Publish pre-built messages as fast as paho takes them; print one JSON line of timings."""
    messages = build_messages(args)
    done = threading.Event()
    acked = 0
    # paho's message ids wrap at 65535, and a queued QoS 1 message whose id is reused is
    # overwritten (lost): keep fewer than that unacknowledged.
    window = threading.BoundedSemaphore(20_000)

    def on_publish(client: paho.Client, userdata: Any, mid: int, *rest: Any) -> None:
        nonlocal acked
        acked += 1
        if args.qos:
            window.release()
        if acked == len(messages):
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-publisher-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    # The broker's Receive Maximum (its max_inflight_messages) bounds this too.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    started = time.time()
    info = None
    for topic, payload in messages:
        if args.qos:
            window.acquire()
        info = client.publish(topic, payload, args.qos)
    handed = time.time()
    # QoS 0: "published" once written to the socket; QoS 1: once the broker acknowledged it.
    if args.qos == 0 and info is not None:
        info.wait_for_publish(300)
    elif not done.wait(300):
        print(f"only {acked} of {len(messages)} acknowledged", file=sys.stderr)
        return 1
    finished = time.time()
    client.disconnect()
    client.loop_stop()
    print(
        json.dumps(
            {
                "messages": len(messages),
                "readings": len(messages) * (args.batch or 1),
                "started": started,
                "handed_s": handed - started,
                "finished": finished,
                "acked": acked if args.qos else None,
            }
        ),
        flush=True,
    )
    return 0


def listen_main(args: argparse.Namespace) -> int:
    """Count `args.messages` messages on sensors/#, doing nothing else; print the rate."""
    done = threading.Event()
    arrivals: list[float] = []
    count = 0

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count in (1, args.messages):
            arrivals.append(time.time())
            if count == args.messages:
                done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-listener-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_: print("subscribed", flush=True)
    client.connect("127.0.0.1", args.port)
    client.subscribe("sensors/#", 1)
    client.loop_start()
    done.wait(600)
    client.disconnect()
    client.loop_stop()
    rate = (count - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) == 2 else 0.0
    print(json.dumps({"received": count, "per_s": rate}), flush=True)
    return 0


def build_messages(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """`args.messages` messages round-robin over `args.streams` streams; per stream, readings
    `args.step_s` apart, the newest `args.end_age_s` before now."""
    per_stream = -(-args.messages // args.streams) * (args.batch or 1)
    start = time.time() - args.end_age_s - per_stream * args.step_s
    topics = [f"sensors/{args.prefix}{i // 10}/s{i % 10}" for i in range(args.streams)]
    counters = [0] * args.streams
    messages = []
    for m in range(args.messages):
        stream = m % args.streams
        k = counters[stream]
        if args.batch:
            readings = ",".join(
                f'{{"ts":{start + (k + j) * args.step_s:.3f},"value":{(k + j) % 97 * 0.5}}}'
                for j in range(args.batch)
            )
            payload = f"[{readings}]"
            counters[stream] = k + args.batch
        else:
            payload = f'{{"ts":{start + k * args.step_s:.3f},"value":{k % 97 * 0.5}}}'
            counters[stream] = k + 1
        messages.append((topics[stream], payload.encode()))
    return messages


# The broker, the agent and the watcher.


class Broker:
    def __init__(self, directory: Path) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(mosquitto).exists():
            sys.exit("mosquitto is not installed (apt-get install mosquitto)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        config = directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # mosquitto's defaults (1000 queued, 20 in flight per client) would drop or
            # throttle QoS 1 floods: the agent's own Receive Maximum is the flow control here.
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"log_dest file {directory}/mosquitto.log\n"
        )
        self.process = subprocess.Popen(
            [mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait(self._accepts, 10, "mosquitto to listen")

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            sys.exit(f"mosquitto exited with {self.process.returncode}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class AgentProcess:
    started: ClassVar[list[AgentProcess]] = []  # stopped on the way out, whatever happens

    def __init__(self, directory: Path, port: int, cadence_s: float) -> None:
        AgentProcess.started.append(self)
        self.directory = directory
        directory.mkdir()
        settings = {
            "agent_id": AGENT_ID,
            "broker": {"url": f"mqtt://127.0.0.1:{port}"},
            "storage_dir": str(directory / "data"),
            "trust_dev_key": True,  # the shipped default bundle
            "forecast": {"cadence_s": cadence_s},
            "metrics": {"interval_s": METRICS_INTERVAL_S},
            "log_level": "WARNING",
        }
        config = directory / "agent.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.log = directory / "agent.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moecast.cli", "agent", "--config", str(config)],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def check_alive(self) -> bool:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            sys.exit(f"the agent exited with {self.process.returncode}:\n{tail}")
        return True

    def memory_mb(self) -> dict[str, float]:
        """Peak and current resident set size, from the kernel's accounting."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = {
            key: int(value)
            for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M)
        }
        return {"peak_rss_mb": kib["VmHWM"] / 1024, "rss_mb": kib["VmRSS"] / 1024}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@dataclass
class Watcher:
    """Subscribes to the agent's status, metrics and forecasts; records what it needs."""

    port: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    # issued_at -> arrival times of that tick's (not retained) forecasts
    forecasts: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-watcher-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        wait(self.client.is_connected, 10, "the watcher to connect")
        agents = f"moecast/agents/{AGENT_ID}"
        self.client.subscribe([(f"{agents}/metrics", 0), (f"{agents}/status", 0)])

    def watch_forecasts(self) -> None:
        self.client.subscribe("forecasts/#", 0)

    def latest(self) -> dict[str, Any] | None:
        with self.lock:
            return self.metrics[-1] if self.metrics else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        arrived = time.time()
        topic = message.topic
        if topic.startswith("forecasts/"):
            if not message.retain:
                # Not json.loads: a tick is a thousand 10 kB messages, and parsing them here
                # would delay the arrival times of the next ones.
                payload = message.payload
                at = payload.find(b'"issued_at":') + len(b'"issued_at":')
                issued = float(payload[at : payload.find(b",", at)])
                with self.lock:
                    self.forecasts[issued].append(arrived)
            return
        document = json.loads(message.payload)
        with self.lock:
            if topic.endswith("/metrics"):
                self.metrics.append(document)
            else:
                self.statuses.append(document)


def wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def start_agent(
    directory: Path, broker: Broker, watcher: Watcher, cadence_s: float
) -> AgentProcess:
    with watcher.lock:
        watcher.statuses.clear()
        watcher.metrics.clear()
    agent = AgentProcess(directory, broker.port, cadence_s)

    def online() -> bool:
        agent.check_alive()
        with watcher.lock:
            return any(s.get("state") == "online" for s in watcher.statuses) and bool(
                watcher.metrics
            )

    wait(online, 60, "the agent to come online")
    return agent


def run_publisher(
    port: int,
    *,
    qos: int,
    messages: int,
    streams: int,
    prefix: str,
    batch: int = 0,
    step_s: float = 0.01,
    end_age_s: float = 60.0,
) -> subprocess.Popen[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "publish", "--port", str(port),
        "--qos", str(qos), "--messages", str(messages), "--streams", str(streams),
        "--prefix", prefix, "--batch", str(batch), "--step-s", str(step_s),
        "--end-age-s", str(end_age_s),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)


def measure_ingest(
    agent: AgentProcess, watcher: Watcher, port: int, *, name: str, qos: int, messages: int,
    batch: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Publish, then read the stored rate from the agent's metrics samples."""
    base = wait(watcher.latest, 10, "metrics")
    base_stored, base_acked = base["readings_accepted"], base["acked"]
    base_dropped = sum(base["dropped"].values())
    expected = messages * (batch or 1)
    publisher = run_publisher(
        port, qos=qos, messages=messages, streams=INGEST_STREAMS, prefix=name, batch=batch
    )
    out, _ = publisher.communicate(timeout=900)
    if publisher.returncode != 0:
        sys.exit(f"the publisher failed ({publisher.returncode})")
    published = json.loads(out.strip().splitlines()[-1])

    def settled() -> bool:
        agent.check_alive()
        with watcher.lock:
            samples = watcher.metrics[-int(2 / METRICS_INTERVAL_S) :]
        stored = samples[-1]["readings_accepted"] - base_stored
        # QoS 0 may drop what overflows: then the count stops moving instead.
        still = len({s["readings_accepted"] for s in samples}) == 1 and len(samples) > 4
        return stored >= expected or still

    wait(settled, 300, f"the agent to store the {name} readings")
    time.sleep(2 * METRICS_INTERVAL_S)
    with watcher.lock:
        samples = [s for s in watcher.metrics if s["ts"] >= base["ts"]]
    moving = [s for s in samples if base_stored < s["readings_accepted"] < base_stored + expected]
    first = next(s for s in samples if s["readings_accepted"] > base_stored)
    # The first sample at the final count (short of `expected` when QoS 0 dropped some).
    target = min(base_stored + expected, samples[-1]["readings_accepted"])
    last = next(s for s in samples if s["readings_accepted"] >= target)
    stored = last["readings_accepted"] - base_stored
    # Between two samples of the agent's own clock, so neither the first partial interval nor
    # the time to notice the end counts.
    if last["ts"] <= first["ts"]:
        sys.exit(f"{name}: stored within one metrics interval, too fast to time: more messages")
    rate = (last["readings_accepted"] - first["readings_accepted"]) / (last["ts"] - first["ts"])
    final = samples[-1]
    return {
        "qos": qos,
        "readings_per_message": batch or 1,
        "messages": messages,
        "readings_published": published["readings"],
        "readings_stored": stored,
        "acked": final["acked"] - base_acked,
        "dropped": sum(final["dropped"].values()) - base_dropped,
        "readings_per_s": rate,
        "samples_while_storing": len(moving),
        "publisher_readings_per_s": published["readings"]
        / (published["finished"] - published["started"]),
    }


def measure_baseline(port: int, qos: int, messages: int) -> dict[str, Any]:
    """The same flood into a subscriber that only counts: the MQTT client library's ceiling."""
    command = [sys.executable, str(Path(__file__).resolve()), "listen", "--port", str(port),
               "--messages", str(messages)]  # fmt: skip
    listener = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert listener.stdout is not None
    if listener.stdout.readline().strip() != "subscribed":
        sys.exit("the listener failed to subscribe")
    publisher = run_publisher(
        port, qos=qos, messages=messages, streams=INGEST_STREAMS, prefix=f"base{qos}"
    )
    out, _ = publisher.communicate(timeout=900)
    published = json.loads(out.strip().splitlines()[-1])
    try:
        counted = json.loads(listener.communicate(timeout=120)[0].strip().splitlines()[-1])
    except subprocess.TimeoutExpired:  # QoS 0 lost some: no rate
        listener.kill()
        listener.communicate()
        counted = {"received": None, "per_s": 0.0}
    return {
        "qos": qos,
        "messages": messages,
        "received": counted["received"],
        "per_s": counted["per_s"],
        "publisher_per_s": messages / (published["finished"] - published["started"]),
    }


def measure_ticks(agent: AgentProcess, watcher: Watcher, port: int, ticks: int) -> dict[str, Any]:
    """Load every stream's history, then time `ticks` complete forecasting ticks."""
    publisher = run_publisher(
        port,
        qos=1,
        messages=FORECAST_STREAMS,
        streams=FORECAST_STREAMS,
        prefix="fc",
        batch=HISTORY,
        step_s=HISTORY_INTERVAL_S,
        end_age_s=5.0,
    )
    publisher.communicate(timeout=600)
    expected = FORECAST_STREAMS * HISTORY
    wait(
        lambda: (
            agent.check_alive() and (watcher.latest() or {}).get("readings_accepted", 0) >= expected
        ),
        300,
        "the history to be stored",
    )
    loaded = time.time()
    before_ticks = agent.memory_mb()
    watcher.watch_forecasts()

    def complete_ticks() -> list[float]:
        agent.check_alive()
        with watcher.lock:
            return [
                issued
                for issued, arrivals in watcher.forecasts.items()
                if issued > loaded and len(arrivals) >= FORECAST_STREAMS
            ]

    wait(
        lambda: len(complete_ticks()) >= ticks,
        (ticks + 2) * CADENCE_S + 120,
        f"{ticks} complete forecasting ticks",
    )
    time.sleep(3 * METRICS_INTERVAL_S)  # the metrics of the last tick
    complete = complete_ticks()
    with watcher.lock:
        by_tick = {issued: list(watcher.forecasts[issued]) for issued in complete}
        samples = list(watcher.metrics)
    issued_at = sorted(by_tick)[:ticks]
    latencies = [max(by_tick[t]) - t for t in issued_at]
    # The agent's own numbers, one tick at a time: consecutive metric samples one tick apart.
    tick_s, inference_s = [], []
    for before, after in itertools.pairwise(samples):
        one_tick = after["forecast_tick_s"]["count"] - before["forecast_tick_s"]["count"] == 1
        if one_tick and after["ts"] > issued_at[0]:
            tick_s.append(after["forecast_tick_s"]["sum"] - before["forecast_tick_s"]["sum"])
            inference_s.append(
                after["forecast_inference_s"]["sum"] - before["forecast_inference_s"]["sum"]
            )
    final = samples[-1]
    return {
        "streams": FORECAST_STREAMS,
        "cadence_s": CADENCE_S,
        "ticks": len(issued_at),
        "forecasts_per_tick": [len(by_tick[t]) for t in issued_at],
        "latency_s": latencies,
        "agent_tick_s": tick_s,
        "agent_inference_s": inference_s,
        "skipped": final["forecast_skipped"],
        "memory_before_ticks": before_ticks,
    }


def machine_description() -> dict[str, Any]:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    version = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "mosquitto": version.splitlines()[0] if version else None,
        # Other work on the machine takes cores from the broker, agent and publisher.
        "load_average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main_benchmark(args: argparse.Namespace) -> int:
    scale = QUICK if args.quick else FULL
    machine = machine_description()
    command = f"python {' '.join(sys.argv)}"
    print(f"$ {command}")
    print(
        f"machine: {machine['cpu']}, nproc {machine['nproc']}, "
        f"Python {machine['python']}, onnxruntime {machine['onnxruntime']}, "
        f"{machine['mosquitto']}; load average {machine['load_average']}\n",
        flush=True,
    )
    results: dict[str, Any] = {}
    memory: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="moecast-bench-") as tmp:
        root = Path(tmp)
        broker = Broker(root)
        watcher = Watcher(broker.port)
        try:
            for qos, messages in ((0, scale.qos0_messages), (1, scale.qos1_messages)):
                print(f"paho alone, QoS {qos}: {messages:,} messages ...", flush=True)
                results[f"paho_only_qos{qos}"] = measure_baseline(broker.port, qos, messages)
                print(f"  {results[f'paho_only_qos{qos}']['per_s']:,.0f} messages/s", flush=True)
            # Ingest: ticks would compete for the CPU, so this agent's never fires.
            agent = start_agent(root / "ingest", broker, watcher, cadence_s=1e9)
            for name, qos, messages, batch in (
                ("qos0", 0, scale.qos0_messages, 0),
                ("qos1", 1, scale.qos1_messages, 0),
                ("batch", 1, scale.batch_messages, BATCH),
            ):
                print(f"ingest {name}: {messages:,} messages ...", flush=True)
                results[name] = measure_ingest(
                    agent, watcher, broker.port, name=name, qos=qos, messages=messages, batch=batch
                )
                print(f"  {results[name]['readings_per_s']:,.0f} readings/s stored", flush=True)
            memory["ingest"] = agent.memory_mb()
            results["ingest_agent_exit"] = agent.stop()

            print(f"forecasting: {FORECAST_STREAMS} streams, {scale.ticks} ticks ...", flush=True)
            agent = start_agent(root / "forecast", broker, watcher, cadence_s=CADENCE_S)
            results["ticks"] = measure_ticks(agent, watcher, broker.port, scale.ticks)
            memory["forecast"] = agent.memory_mb()
            results["forecast_agent_exit"] = agent.stop()
        finally:
            for started in AgentProcess.started:
                started.stop()
            watcher.close()
            broker.stop()
    results["memory"] = memory
    ticks = results["ticks"]
    measured = {
        "qos0_readings_per_s": results["qos0"]["readings_per_s"],
        "qos1_readings_per_s": results["qos1"]["readings_per_s"],
        "batch_readings_per_s": results["batch"]["readings_per_s"],
        "tick_latency_s": max(ticks["latency_s"]),
        "peak_rss_mb": max(m["peak_rss_mb"] for m in memory.values()),
    }
    report(measured, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "quick": args.quick,
                "goals": GOALS,
                "measured": measured,
                "ratio_to_goal": {k: measured[k] / GOALS[k] for k in GOALS},
                "details": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


def report(measured: dict[str, float], results: dict[str, Any]) -> None:
    labels = {
        "qos0_readings_per_s": "QoS 0, one reading per message (readings/s)",
        "qos1_readings_per_s": "QoS 1, one reading per message (readings/s)",
        "batch_readings_per_s": f"QoS 1, {BATCH} readings per message (readings/s)",
        "tick_latency_s": f"forecast tick, {FORECAST_STREAMS} streams, worst (s)",
        "peak_rss_mb": "agent peak RSS (MB)",
    }
    print(f"\n{'':<48} {'measured':>11} {'goal':>11} {'ratio':>7}  meets")
    for key, label in labels.items():
        value, goal = measured[key], GOALS[key]
        better = value >= goal if key in HIGHER_IS_BETTER else value <= goal
        number = f"{value:>11,.0f}" if value >= 100 else f"{value:>11.3f}"
        goal_text = f"{goal:>11,.0f}" if goal >= 100 else f"{goal:>11.3f}"
        print(f"{label:<48} {number} {goal_text} {value / goal:>7.2f}  {'yes' if better else 'NO'}")
    print("(ratio: measured / goal; throughput meets at >= 1, latency and memory at <= 1)")
    for name in ("qos0", "qos1", "batch"):
        r = results[name]
        print(
            f"  {name}: stored {r['readings_stored']:,} of {r['readings_published']:,} published"
            f" ({r['dropped']:,} dropped, {r['acked']:,} acked); publisher"
            f" {r['publisher_readings_per_s']:,.0f} readings/s"
        )
    for qos in (0, 1):
        r = results[f"paho_only_qos{qos}"]
        print(
            f"  paho alone, QoS {qos}: a subscriber that only counts received"
            f" {r['per_s']:,.0f} messages/s (publisher {r['publisher_per_s']:,.0f}/s)"
        )
    ticks = results["ticks"]
    median = statistics.median
    print(
        f"  ticks: {ticks['ticks']} complete ({ticks['forecasts_per_tick']} forecasts), tick start"
        f" to last forecast received: median {median(ticks['latency_s']):.3f} s, worst"
        f" {max(ticks['latency_s']):.3f} s"
    )
    if ticks["agent_tick_s"]:
        tick_s, inference_s = ticks["agent_tick_s"], ticks["agent_inference_s"]
        rest = [t - i for t, i in zip(tick_s, inference_s, strict=True)]
        print(
            f"  agent's own tick time: median {median(tick_s):.3f} s, of which model inference"
            f" {median(inference_s):.3f} s and the rest (grids, payloads, publishing)"
            f" {median(rest):.3f} s"
        )
    before = ticks["memory_before_ticks"]
    print(
        f"  forecast agent with every stream's history stored, before its first tick: peak RSS"
        f" {before['peak_rss_mb']:.0f} MB, RSS {before['rss_mb']:.0f} MB"
    )
    for phase, m in results["memory"].items():
        print(
            f"  {phase} agent: peak RSS {m['peak_rss_mb']:.0f} MB, at the end {m['rss_mb']:.0f} MB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    publisher = sub.add_parser("publish", help="(internal) the publisher process")
    publisher.add_argument("--port", type=int, required=True)
    publisher.add_argument("--qos", type=int, choices=(0, 1), required=True)
    publisher.add_argument("--messages", type=int, required=True)
    publisher.add_argument("--streams", type=int, required=True)
    publisher.add_argument("--prefix", required=True)
    publisher.add_argument("--batch", type=int, default=0, help="readings per message; 0: one")
    publisher.add_argument("--step-s", type=float, default=0.01)
    publisher.add_argument("--end-age-s", type=float, default=60.0)
    listener = sub.add_parser("listen", help="(internal) the do-nothing subscriber")
    listener.add_argument("--port", type=int, required=True)
    listener.add_argument("--messages", type=int, required=True)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "agent_throughput.json"
    )
    args = parser.parse_args()
    if args.role == "publish":
        return publish_main(args)
    if args.role == "listen":
        return listen_main(args)
    return main_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
