"""The single writer: MQTT messages -> readings -> stream buffers and SQLite -> acknowledgements.

One thread owns the `ReadingStore` (its threading contract). It takes messages off the queue in
batches, bounded by a message count and their payload bytes (all that is queued, in one go, off
the agent's `Inbox`; off a plain queue, one at a time within a time window), and for each batch:

1. parses topics and payloads, counting every rejection by reason (a plain
   `{"ts": ..., "value": ...}` takes a shortcut to the same reading);
2. inserts the readings into the `StreamRegistry`, which keeps what fits its lateness and stream
   limits (evicting idle streams when a new one needs a slot), and collects exactly what it
   kept;
3. writes that to SQLite in one transaction, with when each stream's readings arrived, the
   sequence-gap state of streams whose readings are numbered (agent.ingest.sequence) and the
   rows of the streams evicted;
4. only then acknowledges the batch's QoS 1 messages, including rejected ones, which would fail
   the same way on every redelivery.

A batch is not padded by waiting: it holds what queued up while the previous one was written,
so one reading at a time is acknowledged as fast as it arrives and a burst shares a commit.

Bad input is never fatal; it is counted, and logged at most once per reason per interval. A
failing SQLite write is retried with backoff, holding the batch's acknowledgements: nothing is
acknowledged that is not stored.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Protocol

from moecast.agent.ingest.inbox import Flush, InboundMessage, Inbox
from moecast.agent.ingest.payloads import ParseResult, PayloadLimits, parse_message
from moecast.agent.ingest.readings import InvalidStream, Reading, StreamId, parse_topic
from moecast.agent.ingest.rejections import Rejection
from moecast.agent.ingest.sequence import SequenceTracker
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.settings import IngestSettings

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0
_TOPIC_MEMORY = 8192  # parsed topics remembered
_arrival_ts = attrgetter("arrival_ts")


class Acknowledger(Protocol):
    def ack(self, messages: Iterable[InboundMessage]) -> int: ...


class RateLimitedLog:
    """At most one log line per reason per `interval_s`; the next one says how many were
    suppressed, so a flood of bad input costs a line a minute, not a full disk."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, reason: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval_s:
            self._suppressed[reason] += 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            message += f" ({suppressed} more '{reason}' since the last report)"
        self._logger.warning(message, *args, exc_info=exc_info)


class IngestWorker:
    """The writer thread; see the module docstring."""

    def __init__(
        self,
        inbox: Inbox,
        store: ReadingStore,
        registry: StreamRegistry,
        acknowledger: Acknowledger,
        metrics: AgentMetrics,
        settings: IngestSettings,
        sensors_prefix: str,
        payload_limits: PayloadLimits,
    ) -> None:
        self._inbox = inbox
        self._store = store
        self._registry = registry
        self._acknowledger = acknowledger
        self._metrics = metrics
        self._settings = settings
        self._prefix = sensors_prefix
        self._limits = payload_limits
        self._bad_input = RateLimitedLog(log, settings.log_interval_s)
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moecast-ingest", daemon=True)
        if isinstance(inbox, Inbox):
            metrics.add_gauge("queue_bytes", lambda: inbox.queued_bytes)
        self._sequences = SequenceTracker(registry.limits.lateness_s)
        self._topics: dict[str, StreamId | tuple[str, str]] = {}
        metrics.add_section("lost_upstream", self._sequences.report)

    def start(self) -> None:
        """Restore the buffers from SQLite, then start taking messages."""
        history = self._store.restore_all(self._registry.limits.max_points)
        restored = self._registry.restore(history, self._store.last_arrivals())
        self._sequences.load(self._store.seq_states())
        log.info("restored the recent history of %d streams from SQLite", restored)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is stored and acknowledged."""
        marker = Flush()
        try:
            self._inbox.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def stop(self, timeout_s: float) -> bool:
        """Store what is queued, then end the thread. Stop the network first, so that nothing
        is queued behind the marker. Returns False if the writer had to give up (a store
        that keeps failing): what it held stays unacknowledged and the broker redelivers it."""
        marker = Flush(then_stop=True)
        try:
            self._inbox.put(marker, timeout=timeout_s)
        except queue.Full:
            self._abandon.set()
        if not marker.done.wait(timeout_s):
            self._abandon.set()
        self._thread.join(timeout_s)
        return marker.done.is_set()

    def _run(self) -> None:
        while not self._abandon.is_set():
            batch, marker = self._next_batch()
            if batch and not self._ingest(batch):
                return  # abandoned by `stop`: the batch stays unacknowledged
            if marker is not None:
                marker.done.set()
                if marker.then_stop:
                    return

    def _next_batch(self) -> tuple[list[InboundMessage], Flush | None]:
        max_messages, max_bytes = self._settings.batch_max_messages, self._settings.batch_max_bytes
        if isinstance(self._inbox, Inbox):
            # Everything queued, in one lock: what arrived while the last batch was written.
            items = self._inbox.take(max_messages, max_bytes)
            if type(items[-1]) is Flush:
                return items[:-1], items[-1]  # type: ignore[return-value]
            return items, None  # type: ignore[return-value]
        first = self._inbox.get()
        if isinstance(first, Flush):
            return [], first
        batch = [first]
        size = len(first.payload)
        deadline = time.monotonic() + self._settings.batch_window_s
        while len(batch) < max_messages and size < max_bytes and time.monotonic() < deadline:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Flush):
                return batch, item
            batch.append(item)
            size += len(item.payload)
        return batch, None

    def _ingest(self, batch: list[InboundMessage]) -> bool:
        """Store and acknowledge one batch; False if `stop` abandoned it unstored."""
        # Per stream held: [the readings the registry took, the newest arrival]; a stream whose
        # readings all came too late still has its arrival recorded.
        taken: dict[StreamId, list[Any]] = {}
        rejected: Counter[str] = Counter()
        for message in batch:
            try:
                self._parse(message, taken, rejected)
            except Exception:
                # Should not happen: the parsers never raise on input. But one message that
                # crashed the writer would be redelivered at every restart, forever; count it,
                # log it and acknowledge it instead.
                rejected["internal_error"] += 1
                self._bad_input.warning(
                    "internal_error",
                    "failed to ingest a message on %r",
                    message.topic and message.topic[:200],
                    exc_info=True,
                )
        kept = {stream: entry[0] for stream, entry in taken.items() if entry[0]}
        arrivals = {stream: entry[1] for stream, entry in taken.items()}
        accepted = sum(map(len, kept.values()))
        self._sequences.expire(max(map(_arrival_ts, batch)))
        evicted = self._registry.take_evicted()
        if evicted:
            self._sequences.forget(evicted)
            log.info(
                "evicted %d streams idle for over %.0f s (limits.streams.evict_idle_s) to make "
                "room for new ones; their stored readings are deleted",
                len(evicted),
                self._registry.limits.evict_idle_s,
            )
        seq_states = self._sequences.take_dirty()
        if (kept or evicted or seq_states) and not self._write(kept, arrivals, evicted, seq_states):
            return False
        self._metrics.count_batch(len(batch), accepted, rejected, self._registry.dropped)
        self._metrics.count_acked(self._acknowledger.ack(batch))
        return True

    def _parse(
        self,
        message: InboundMessage,
        taken: dict[StreamId, list[Any]],
        rejected: Counter[str],
    ) -> None:
        topic = message.topic
        stream = self._topics.get(topic)  # type: ignore[arg-type]
        if stream is None:
            if topic is None:
                rejected["bad_topic"] += 1
                self._bad_input.warning("bad_topic", "rejected a message whose topic is not UTF-8")
                return
            stream = self._parse_topic(topic)
        if type(stream) is not StreamId:
            reason, detail = stream
            rejected[reason] += 1
            self._bad_input.warning(reason, "rejected topic: %s", detail)
            return
        if message.oversized:
            rejected["too_large"] += 1
            self._bad_input.warning(
                "too_large",
                "rejected a %d-byte payload on %s (limits.payload.max_bytes)",
                message.oversized,
                stream,
            )
            return
        result = parse_message(message.payload, message.arrival_ts, self._limits)
        if type(result) is Reading:  # the common case, the reading parse_payload would give
            self._take(stream, [result], message.arrival_ts, None, taken)
            return
        assert isinstance(result, ParseResult)
        if result.rejected:
            for reason, count in result.rejected.items():
                rejected[reason] += count
                self._bad_input.warning(
                    reason,
                    "%s",
                    Rejection(reason, count, stream, self._limits, self._settings.log_interval_s),
                )
        if not result.named and not result.seqs:  # the common case: the topic's stream only
            if result.readings:
                self._take(stream, result.readings, message.arrival_ts, None, taken)
            return
        seqs = result.seqs_by_stream(stream) if result.seqs else {}
        for target, readings in result.by_stream(stream).items():
            self._take(target, readings, message.arrival_ts, seqs.get(target), taken)

    def _parse_topic(self, topic: str) -> StreamId | tuple[str, str]:
        """The stream of `topic`, or why there is none, remembered: most messages come on a
        few thousand topics at most, and a flood of junk topics only empties the memory."""
        try:
            parsed: StreamId | tuple[str, str] = parse_topic(topic, self._prefix)
        except InvalidStream as err:
            parsed = err.reason, err.detail
        if len(self._topics) >= _TOPIC_MEMORY:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def _take(
        self,
        stream: StreamId,
        readings: list[Reading],
        arrival: float,
        seqs: list[tuple[int, float]] | None,
        taken: dict[StreamId, list[Any]],
    ) -> None:
        kept = self._registry.admit(stream, readings, arrival)
        if kept is None:
            self._bad_input.warning(
                "stream_limit",
                "refused new stream %s: %d streams held (limits.streams.max_streams), none "
                "idle for limits.streams.evict_idle_s",
                stream,
                self._registry.limits.max_streams,
            )
            return
        entry = taken.get(stream)
        if entry is None:
            taken[stream] = [kept, arrival]  # `admit` returns a list of its own
        else:
            entry[0] += kept
            if arrival > entry[1]:
                entry[1] = arrival
        if seqs:
            self._sequences.observe(stream, seqs, arrival)

    def _write(
        self,
        kept: dict[StreamId, list[Reading]],
        arrivals: dict[StreamId, float],
        evicted: list[StreamId],
        seq_states: dict[StreamId, str],
    ) -> bool:
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                self._store.write(kept, arrivals, evicted, seq_states)
            except sqlite3.Error as err:
                self._metrics.count_store_error()
                log.error(
                    "storing %d streams failed (%s); retrying in %.2f s", len(kept), err, delay
                )
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._metrics.observe_store_write(time.perf_counter() - started)
            return True
