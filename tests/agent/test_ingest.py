"""Bad input through the real broker, and the writer's rule: acknowledge only what is stored."""

from __future__ import annotations

import json
import queue
import sqlite3
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moecast.agent.ingest.inbox import InboundMessage, Inbox
from moecast.agent.ingest.payloads import PayloadLimits
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamLimits, StreamRegistry
from moecast.agent.ingest.writer import IngestWorker, RateLimitedLog
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import Agent
from moecast.agent.settings import IngestSettings

from tests.agent.conftest import Broker, Client, agent_settings, stored_rows, wait_for
from tests.agent.writer_kit import RecordingAcknowledger

NOW = float(int(time.time()))
LIMITS = {
    "payload": {"max_bytes": 4096, "max_readings": 50},
    "streams": {"max_streams": 5},
}


@pytest.fixture
def agent(broker: Broker, tmp_path: Path) -> Iterator[Agent]:
    running = Agent(agent_settings(broker, tmp_path / "agent", limits=LIMITS))
    running.start()
    assert running.link.wait_connected(10)
    yield running
    running.stop()


def good_values(agent: Agent) -> list[float]:
    return sorted(
        value for d, s, _, value in stored_rows(agent.settings.readings_db) if d == "good"
    )


def test_bad_input_is_counted_acknowledged_and_never_stops_good_streams(
    agent: Agent, client_factory: Callable[[str], Client]
) -> None:
    publisher = client_factory("publisher")
    good = 0

    def publish_good() -> int:
        nonlocal good
        good += 1
        return publisher.publish_reading("sensors/good/temp", NOW + good, float(good))

    bad: list[tuple[str, bytes | str]] = [
        ("sensors/good/temp", b"x" * 5000),  # too_large
        ("sensors/good/temp", b"\xff\xfe{"),  # not_json
        ("sensors/good/temp", f'{{"ts": {NOW}, "value": NaN}}'),  # non_finite
        ("sensors/good/temp", f'{{"ts": {NOW}, "value": Infinity}}'),  # non_finite
        ("sensors/good/temp", f'{{"ts": {NOW}, "value": 1e400}}'),  # non_finite
        ("sensors/good/temp", f'{{"ts": {NOW}, "value": 1e300}}'),  # out_of_range
        ("sensors/good/temp", json.dumps({"ts": NOW - 30 * 86400, "value": 1})),  # too_old
        ("sensors/good/temp", json.dumps({"ts": NOW + 86400, "value": 1})),  # too_far_future
        ("sensors/good/temp", json.dumps({"ts": "yesterday", "value": 1})),  # bad_timestamp
        ("sensors/good/temp", json.dumps([{"value": 1}] * 51)),  # too_many_readings
        ("sensors/bad device!/temp", "1"),  # bad_device
        ("sensors/dev/" + "s" * 65, "1"),  # bad_sensor
    ]
    # Four streams fit beside the good one; three more are over the limit.
    bad += [(f"sensors/extra/s{i}", json.dumps({"ts": NOW, "value": i})) for i in range(7)]
    mids = {publish_good()}
    for topic, payload in bad:
        mids.add(publisher.publish(topic, payload))
        mids.add(publish_good())
    publisher.wait_acked(mids)

    wait_for(lambda: len(good_values(agent)) == good, what="every good reading")
    assert good_values(agent) == [float(i) for i in range(1, good + 1)]
    wait_for(lambda: agent.metrics.snapshot()["acked"] == len(mids), what="every message acked")
    snapshot = agent.metrics.snapshot()
    assert snapshot["rejected"] == {
        "too_large": 1,
        "not_json": 1,
        "non_finite": 3,
        "out_of_range": 1,
        "too_old": 1,
        "too_far_future": 1,
        "bad_timestamp": 1,
        "too_many_readings": 1,
        "bad_device": 1,
        "bad_sensor": 1,
    }
    assert snapshot["dropped"] == {"stream_limit": 3}
    assert snapshot["messages"] == len(mids)
    assert agent.healthy
    assert agent.link.connected.is_set()


_LEVEL_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Cn", "Co"),  # the broker refuses control characters
    blacklist_characters="/+#",
)
_TOPICS = st.tuples(
    st.one_of(st.text(_LEVEL_CHARS, max_size=70), st.sampled_from(["dev", "", ".", ".."])),
    st.one_of(st.text(_LEVEL_CHARS, max_size=70), st.sampled_from(["t", "a.b", "x" * 64])),
).map(lambda levels: f"sensors/{levels[0]}/{levels[1]}")
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(NOW - 10 * 86400, NOW + 3600),
    st.text(string.digits + ".-eE", max_size=12),
    st.booleans(),
    st.none(),
)
_READINGS = st.dictionaries(
    st.sampled_from(["ts", "value", "bn", "bt", "n", "t", "v", "vs"]), _NUMBERS, max_size=4
)
_PAYLOADS = st.one_of(
    st.binary(max_size=300),
    _NUMBERS.map(json.dumps),
    _READINGS.map(json.dumps),
    st.lists(_READINGS, max_size=60).map(json.dumps),
    st.recursive(st.none() | _NUMBERS, lambda inner: st.lists(inner, max_size=3)).map(json.dumps),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(st.tuples(_TOPICS, _PAYLOADS), min_size=1, max_size=25))
def test_fuzzed_topics_and_payloads_through_the_broker(
    agent: Agent, client_factory: Callable[[str], Client], messages: list[tuple[str, bytes]]
) -> None:
    publisher = client_factory("fuzzer")
    before = agent.metrics.snapshot()["messages"]
    first = len(good_values(agent)) + 1.0
    # A good reading before (so the good stream exists before fuzzed ones fill the stream
    # limit) and one after the fuzzed messages.
    mids = {publisher.publish_reading("sensors/good/temp", NOW + first, first)}
    mids |= {publisher.publish(topic, payload) for topic, payload in messages}
    mids.add(publisher.publish_reading("sensors/good/temp", NOW + first + 1, first + 1))
    publisher.wait_acked(mids)
    wait_for(lambda: first + 1 in good_values(agent), what="the good reading after the fuzz")
    wait_for(lambda: agent.metrics.snapshot()["messages"] == before + len(messages) + 2)
    assert agent.healthy
    assert agent.link.connected.is_set()
    assert agent.metrics.snapshot()["rejected"].get("internal_error", 0) == 0


class FlakyStore(ReadingStore):
    """Fails its first `failures` writes, as a full disk or a locked database would."""

    def __init__(self, path: Path, failures: int, acknowledger: RecordingAcknowledger) -> None:
        super().__init__(path)
        self.failures = failures
        self.acks_at_write: list[int] = []
        self._acknowledger = acknowledger

    def write(self, batch: dict[StreamId, list[Reading]], *args: Any, **kwargs: Any) -> None:
        self.acks_at_write.append(len(self._acknowledger.acked))
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().write(batch, *args, **kwargs)


def make_worker(
    store: ReadingStore,
    acknowledger: RecordingAcknowledger,
    settings: IngestSettings | None = None,
) -> tuple[IngestWorker, Inbox, AgentMetrics]:
    inbox: Inbox = queue.Queue(100)
    metrics = AgentMetrics()
    worker = IngestWorker(
        inbox,
        store,
        StreamRegistry(StreamLimits()),
        acknowledger,
        metrics,
        settings or IngestSettings(),
        "sensors",
        PayloadLimits(),
    )
    return worker, inbox, metrics


def message(mid: int, value: float, qos: int = 1) -> InboundMessage:
    payload = json.dumps({"ts": NOW + mid, "value": value}).encode()
    return InboundMessage("sensors/d/s", payload, NOW, mid, qos, connection=1)


def test_a_failing_store_is_retried_and_nothing_is_acked_before_the_write_succeeds(
    tmp_path: Path,
) -> None:
    acknowledger = RecordingAcknowledger()
    store = FlakyStore(tmp_path / "readings.db", failures=2, acknowledger=acknowledger)
    worker, inbox, metrics = make_worker(store, acknowledger)
    worker.start()
    for mid in (1, 2, 3):
        inbox.put(message(mid, float(mid), qos=0 if mid == 3 else 1))
    assert worker.flush(5)
    assert store.acks_at_write[:3] == [0, 0, 0]  # three attempts, no ack in between
    assert acknowledger.acked == [1, 2]
    assert metrics.snapshot()["store_errors"] == 2
    assert worker.stop(5)
    assert sorted(row[2] for row in stored_rows(tmp_path / "readings.db")) == [
        NOW + 1,
        NOW + 2,
        NOW + 3,
    ]


def test_stop_gives_up_on_a_store_that_keeps_failing_without_acking(tmp_path: Path) -> None:
    acknowledger = RecordingAcknowledger()
    store = FlakyStore(tmp_path / "readings.db", failures=10**6, acknowledger=acknowledger)
    worker, inbox, _ = make_worker(store, acknowledger)
    worker.start()
    inbox.put(message(1, 1.0))
    started = time.monotonic()
    assert not worker.stop(0.3)
    assert time.monotonic() - started < 2
    assert not worker.alive
    assert acknowledger.acked == []


def test_a_batch_is_bounded_by_its_payload_bytes(tmp_path: Path) -> None:
    acknowledger = RecordingAcknowledger()
    store = ReadingStore(tmp_path / "readings.db")
    messages = [
        InboundMessage(
            "sensors/d/s",
            json.dumps([{"ts": NOW + 10 * mid + j, "value": j} for j in range(10)]).encode(),
            NOW,
            mid,
            1,
            connection=1,
        )
        for mid in range(1, 7)
    ]
    # Room for one message and a bit: a batch stops after the message that crosses the bound.
    bound = IngestSettings(batch_max_bytes=len(messages[0].payload) + 1)
    worker, inbox, metrics = make_worker(store, acknowledger, bound)
    for item in messages:
        inbox.put(item)  # all queued before the writer starts: one batch could take them all
    worker.start()
    assert worker.flush(5)
    snapshot = metrics.snapshot()
    assert (snapshot["batches"], snapshot["readings_accepted"]) == (3, 60)
    assert acknowledger.acked == [1, 2, 3, 4, 5, 6]
    assert worker.stop(5)


def test_rate_limited_log_reports_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), interval_s=0.05)
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        for _ in range(5):
            limited.warning("not_json", "bad payload")
        limited.warning("too_old", "old reading")
        time.sleep(0.06)
        limited.warning("not_json", "bad payload")
    assert [r.getMessage() for r in caplog.records] == [
        "bad payload",
        "old reading",
        "bad payload (4 more 'not_json' since the last report)",
    ]
