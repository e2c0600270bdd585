"""The writer's own cost per message, without MQTT: less noisy than agent_throughput.py.

    python benchmarks/ingest_path.py                 # singles (QoS 1) and 500-reading batches
    python benchmarks/ingest_path.py --profile       # plus cProfile of each, by own time

Puts prepared messages into the agent's inbox, a writer batch at a time, and has the writer take
and ingest them (parse, registry, SQLite commit, acknowledgement) on this thread, on a fresh
SQLite file with the default settings. What it leaves out of the network thread's work is
paho's: receiving, decoding the packet, and sending the acknowledgements. On a shared machine
the CPU time (of this thread, which also runs SQLite) is the steadier figure: wall time counts
the time other processes held the cores.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from moecast.agent.ingest.inbox import InboundMessage, Inbox
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ingest.writer import IngestWorker
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.settings import load_settings
from timing import cpu_description


class _CountingAcknowledger:
    def __init__(self) -> None:
        self.acked = 0

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        n = sum(1 for m in messages if m.qos)
        self.acked += n
        return n


def _worker(directory: Path) -> tuple[IngestWorker, Inbox, _CountingAcknowledger]:
    settings = load_settings(None, storage_dir=directory, agent_id="ingest-path")
    acks = _CountingAcknowledger()
    inbox = Inbox(settings.ingest.queue_size, settings.ingest.queue_bytes)
    worker = IngestWorker(
        inbox,
        ReadingStore(settings.readings_db, settings.limits.store),
        StreamRegistry(settings.limits.streams),
        acks,
        AgentMetrics(),
        settings.ingest,
        settings.topics.sensors,
        settings.limits.payload,
    )
    return worker, inbox, acks


def _singles(messages: int, streams: int) -> list[InboundMessage]:
    now = time.time()
    return [
        InboundMessage(
            f"sensors/dev{i % streams}/temp",
            json.dumps({"ts": now - messages + i, "value": 20.0 + i % 7}).encode(),
            now,
            i % 65535 + 1,
            1,
            0,
        )
        for i in range(messages)
    ]


def _batches(messages: int, streams: int, per_message: int) -> list[InboundMessage]:
    now = time.time()
    out = []
    for i in range(messages):
        start = now - 3600 + (i // streams) * per_message * 0.001
        readings = [
            {"ts": round(start + k * 0.001, 3), "value": 20.0 + k % 7} for k in range(per_message)
        ]
        out.append(
            InboundMessage(
                f"sensors/dev{i % streams}/temp", json.dumps(readings).encode(), now, i + 1, 1, 0
            )
        )
    return out


def _run(
    name: str, messages: list[InboundMessage], writer_batch: int, readings: int, profile: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        worker, inbox, acks = _worker(Path(tmp))
        groups = [messages[i : i + writer_batch] for i in range(0, len(messages), writer_batch)]
        profiler = cProfile.Profile() if profile else None
        started, cpu_started = time.perf_counter(), time.thread_time()
        if profiler:
            profiler.enable()
        for group in groups:
            for message in group:
                inbox.put_nowait(message)  # what the network thread does
            while inbox.qsize():
                batch, _ = worker._next_batch()
                worker._ingest(batch)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        cpu = time.thread_time() - cpu_started
        assert acks.acked == len(messages), (acks.acked, len(messages))
    result = {
        "messages_per_s": len(messages) / elapsed,
        "us_per_message": elapsed / len(messages) * 1e6,
        "readings_per_s": readings / elapsed,
        "cpu_us_per_message": cpu / len(messages) * 1e6,
        "readings_per_cpu_s": readings / cpu,
    }
    print(
        f"{name}: {len(messages):,} messages in writer batches of {writer_batch}: "
        f"{elapsed:.2f} s, {result['messages_per_s']:,.0f} messages/s, "
        f"{result['us_per_message']:.1f} µs/message, {result['readings_per_s']:,.0f} readings/s; "
        f"CPU {result['cpu_us_per_message']:.1f} µs/message, "
        f"{result['readings_per_cpu_s']:,.0f} readings per CPU second"
    )
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        print(text.getvalue())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=40_000, help="single-reading messages")
    parser.add_argument("--batches", type=int, default=400, help="500-reading messages")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--writer-batch", type=int, default=200, help="messages per _ingest")
    parser.add_argument("--profile", action="store_true", help="cProfile (slows everything)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{cpu_description()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = {
        "singles_qos1": _run(
            "singles (QoS 1)",
            _singles(args.singles, args.streams),
            args.writer_batch,
            args.singles,
            args.profile,
        ),
        # A 500-reading payload is ~20 KB: batch_max_bytes (256 KiB) closes a writer batch
        # after about a dozen of them.
        "batch_500": _run(
            "500-reading batches",
            _batches(args.batches, 20, 500),
            12,
            args.batches * 500,
            args.profile,
        ),
    }
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
