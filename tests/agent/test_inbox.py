"""The inbox between the network and the writer: bounded in bytes as well as in messages, and
oversized payloads dropped before they are queued (issue #14, D6)."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from moecast.agent.ingest.inbox import InboundMessage, Inbox
from moecast.agent.ingest.link import MqttLink
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ingest.writer import IngestWorker
from moecast.agent.runtime import build_link
from moecast.agent.settings import AgentSettings, load_settings

MB = 1 << 20


def message(size: int, qos: int = 0, mid: int = 0) -> InboundMessage:
    return InboundMessage("sensors/d/s", b"x" * size, time.time(), mid, qos, connection=1)


def paho_message(payload: bytes, qos: int, mid: int = 1) -> paho.MQTTMessage:
    delivered = paho.MQTTMessage(mid, b"sensors/d/s")
    delivered.payload = payload
    delivered.qos = qos
    return delivered


def link_with_inbox(settings: AgentSettings) -> MqttLink:
    """The link as the agent builds it (`build_link`): its inbox is the byte-bounded one."""
    return build_link(settings)


def test_qos0_beyond_the_byte_bound_is_dropped_and_counted() -> None:
    inbox = Inbox(100, max_bytes=10_000)
    for _ in range(3):
        inbox.put_nowait(message(3_000))
    with pytest.raises(queue.Full):
        inbox.put_nowait(message(3_000))
    assert inbox.queued_bytes == 9_000
    inbox.get_nowait()
    inbox.put_nowait(message(3_000))
    assert inbox.queued_bytes == 9_000


def test_a_message_larger_than_the_bound_still_fits_an_empty_queue() -> None:
    inbox = Inbox(100, max_bytes=1_000)
    inbox.put_nowait(message(5_000))
    assert inbox.queued_bytes == 5_000
    inbox.get_nowait()
    assert inbox.queued_bytes == 0


def test_qos1_waits_for_room_in_bytes_and_is_never_dropped() -> None:
    inbox = Inbox(100, max_bytes=10_000)
    inbox.put(message(8_000, qos=1, mid=1))
    put_done = threading.Event()

    def put_second() -> None:
        inbox.put(message(8_000, qos=1, mid=2))
        put_done.set()

    threading.Thread(target=put_second, daemon=True).start()
    assert not put_done.wait(0.2)  # over the byte bound: waits, as for a full count
    assert inbox.get(timeout=1).mid == 1  # type: ignore[union-attr]
    assert put_done.wait(2)
    assert inbox.queued_bytes == 8_000


def test_a_flood_of_large_qos0_messages_keeps_the_queued_bytes_bounded(tmp_path: Path) -> None:
    # Nothing takes from the queue here: each message beyond it waits qos0_wait_s, then drops.
    settings = load_settings(agent_id="flood", storage_dir=tmp_path, ingest={"qos0_wait_s": 0.001})
    link = link_with_inbox(settings)
    payload = b"[" + b" " * (MB - 2) + b"]"  # 1 MB, within limits.payload.max_bytes
    for mid in range(400):
        link._on_message(link._client, None, paho_message(payload, qos=0, mid=mid))
    queued = sum(len(m.payload) for m in list(link.inbox.queue))  # type: ignore[union-attr]
    assert queued <= settings.ingest.queue_bytes == 16 * MB
    assert link.inbox.queued_bytes == queued  # type: ignore[attr-defined]
    assert link.metrics.snapshot()["dropped"]["queue_full"] == 400 - link.inbox.qsize()


def test_qos0_waits_for_the_writer_to_make_room_then_drops(tmp_path: Path) -> None:
    """A QoS 0 message that finds the queue full waits up to ingest.qos0_wait_s for room: it is
    queued if the writer takes a batch in time, dropped and counted if not; after such a
    timeout, messages are dropped without waiting until the writer has made room."""
    settings = load_settings(
        agent_id="pace",
        storage_dir=tmp_path,
        broker={"receive_maximum": 1},
        ingest={"queue_size": 2, "qos0_wait_s": 0.5},
    )
    link = link_with_inbox(settings)
    reading = json.dumps({"ts": time.time(), "value": 1.0}).encode()
    for mid in (0, 1):
        link._on_message(link._client, None, paho_message(reading, qos=0, mid=mid))
    taken = threading.Timer(0.2, lambda: link.inbox.take(10, MB))  # type: ignore[attr-defined]
    taken.start()
    started = time.monotonic()
    link._on_message(link._client, None, paho_message(reading, qos=0, mid=2))
    waited = time.monotonic() - started
    taken.join()
    assert 0.1 < waited < 0.5  # until the take, not the whole wait
    assert [m.mid for m in link.inbox.queue] == [2]  # type: ignore[attr-defined]
    assert "queue_full" not in link.metrics.snapshot()["dropped"]

    link._on_message(link._client, None, paho_message(reading, qos=0, mid=3))  # fills it
    started = time.monotonic()
    link._on_message(link._client, None, paho_message(reading, qos=0, mid=4))
    assert time.monotonic() - started >= 0.5
    assert [m.mid for m in link.inbox.queue] == [2, 3]  # type: ignore[attr-defined]
    assert link.metrics.snapshot()["dropped"]["queue_full"] == 1

    # The writer is stalled: until it makes room, the next ones are dropped without a wait.
    started = time.monotonic()
    for mid in (5, 6):
        link._on_message(link._client, None, paho_message(reading, qos=0, mid=mid))
    assert time.monotonic() - started < 0.1
    assert link.metrics.snapshot()["dropped"]["queue_full"] == 3
    link.inbox.take(1, MB)  # type: ignore[attr-defined]
    link._on_message(link._client, None, paho_message(reading, qos=0, mid=7))  # room: queued
    link._on_message(link._client, None, paho_message(reading, qos=0, mid=8))  # waits again
    assert [m.mid for m in link.inbox.queue] == [3, 7]  # type: ignore[attr-defined]
    assert link.metrics.snapshot()["dropped"]["queue_full"] == 4


def test_an_oversized_payload_is_dropped_on_the_network_thread_and_still_acked(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        agent_id="big", storage_dir=tmp_path, limits={"payload": {"max_bytes": 1024}}
    )
    link = link_with_inbox(settings)
    reading = json.dumps({"ts": time.time(), "value": 1.0}).encode()
    link._on_message(link._client, None, paho_message(b"[" + b" " * 4096 + b"]", qos=1, mid=7))
    link._on_message(link._client, None, paho_message(reading, qos=1, mid=8))
    oversized = link.inbox.queue[0]  # type: ignore[attr-defined]
    assert (oversized.payload, oversized.oversized) == (b"", 4098)
    assert link.inbox.queued_bytes == len(reading)  # type: ignore[attr-defined]

    acked: list[int] = []

    class Acknowledger:
        def ack(self, messages: list[InboundMessage]) -> int:
            acked.extend(m.mid for m in messages if m.qos)
            return len(acked)

    store = ReadingStore(settings.readings_db)
    worker = IngestWorker(
        link.inbox,
        store,
        StreamRegistry(settings.limits.streams),
        Acknowledger(),
        link.metrics,
        settings.ingest,
        settings.topics.sensors,
        settings.limits.payload,
    )
    worker.start()
    assert worker.flush(5)
    assert acked == [7, 8]  # the rejected one too: a redelivery would fail the same way
    snapshot = link.metrics.snapshot()
    assert snapshot["rejected"] == {"too_large": 1}
    assert snapshot["readings_accepted"] == 1
    assert snapshot["queue_bytes"] == 0
    assert worker.stop(5)
    store.close()


def test_the_payload_limit_must_fit_the_queue() -> None:
    with pytest.raises(ValueError, match="queue_bytes"):
        load_settings(agent_id="a", ingest={"queue_bytes": 1000})
