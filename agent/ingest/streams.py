"""In-memory recent history of every stream, ordered by event time and bounded.

Readings live in a pair of `array.array`s rather than numpy arrays: appending one reading is a
C-level operation with amortised growth, the common case on the ingest path, while copies for
the forecaster come out as numpy arrays through the buffer protocol. Event times are float64;
values are float32, the precision the model reads them in (its grids are float32), which
makes a point 12 bytes instead of 16. The durable store keeps every value as it arrived.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from operator import itemgetter, lt

import numpy as np
from moecast.agent.ingest.readings import Reading, StreamId
from pydantic import BaseModel, ConfigDict, Field

_event_time = itemgetter(0)
_value = itemgetter(1)


class StreamLimits(BaseModel):
    """Bounds on the in-memory history; a settings module fills these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_streams: int = Field(default=2_000, gt=0)  # readings of further streams are rejected
    # About 12 bytes per point: 1000 full streams of 2048 points are ~28 MB.
    max_points: int = Field(default=2_048, gt=0)
    # Readings older than the stream's newest by more than this are counted and dropped; the
    # newest counts only up to its arrival time, so a clock running ahead cannot silence it.
    lateness_s: float = Field(default=300.0, ge=0)
    # A stream no reading has arrived for in this long gives up its slot, and its stored
    # readings, when a new stream needs one and max_streams are held. A silence of the whole
    # agent longer than half of it (an outage, a restart) does not count as idleness.
    evict_idle_s: float = Field(default=7 * 86_400.0, gt=0)


class StreamBuffer:
    """The newest `max_points` readings of one stream, strictly increasing in time.

    Not thread-safe; `StreamRegistry` serialises access.
    """

    __slots__ = (
        "_lateness_s",
        "_max_points",
        "_trim_above",
        "_ts",
        "_values",
        "_watermark",
        "last_arrival",
    )

    def __init__(self, max_points: int, lateness_s: float) -> None:
        self._max_points = max_points
        self._lateness_s = lateness_s
        # The stream's notion of now, which lateness is measured from: its newest event time,
        # but never later than the agent's clock when that reading arrived. A reading stamped
        # minutes ahead by a wrong clock is kept, yet does not make the next true ones late.
        self._watermark = -math.inf
        self.last_arrival = -math.inf  # agent clock (unix s) of the newest insert
        # Trimming moves the whole buffer, so it happens once per max_points/8 readings rather
        # than on every append; until then up to that many extra old points are held.
        self._trim_above = max_points + max(max_points // 8, 1)
        self._ts = array("d")
        self._values = array("f")  # float32: see the module docstring

    def __len__(self) -> int:
        return min(len(self._ts), self._max_points)

    @property
    def newest_ts(self) -> float | None:
        return self._ts[-1] if self._ts else None

    @property
    def watermark(self) -> float:
        """What lateness is measured from: see `insert`."""
        return self._watermark

    def insert(self, readings: Sequence[Reading], arrival_ts: float = math.inf) -> list[Reading]:
        """Insert in time order; returns the readings taken, in time order.

        A reading older than the watermark by more than `lateness_s` is dropped (the caller
        counts it); one with a held timestamp replaces that value. The watermark is the newest
        event time held, capped by `arrival_ts` (the agent's clock when the readings arrived)
        of the call that brought it. Within one call the later of two equal timestamps wins,
        and lateness is measured against the watermark before the call, so the order of
        readings inside a batch does not matter.
        """
        times, values = self._ts, self._values
        if len(readings) == 1:
            return self._insert_one(readings[0], arrival_ts)
        batch = sorted(readings, key=_event_time)
        if times:
            too_late = bisect_left(batch, self._watermark - self._lateness_s, key=_event_time)
            if too_late:
                batch = batch[too_late:]
        if not batch:
            return batch
        self._watermark = max(self._watermark, min(batch[-1][0], arrival_ts))
        stamps = list(map(_event_time, batch))
        if (not times or stamps[0] > times[-1]) and all(map(lt, stamps, islice(stamps, 1, None))):
            # All newer than what is held and no two alike (a batch payload in order): the
            # arrays grow in C, not a reading at a time.
            times.extend(stamps)
            values.extend(map(_value, batch))
        else:
            for ts, value in batch:
                if not times or ts > times[-1]:
                    times.append(ts)
                    values.append(value)
                elif ts == times[-1]:
                    values[-1] = value
                else:
                    at = bisect_left(times, ts)
                    if times[at] == ts:
                        values[at] = value
                    else:
                        times.insert(at, ts)
                        values.insert(at, value)
        if len(times) > self._trim_above:
            del times[: -self._max_points]
            del values[: -self._max_points]
        return batch

    def _insert_one(self, reading: Reading, arrival_ts: float) -> list[Reading]:
        """`insert` of a single reading (one per message is the common case), same rules."""
        ts, value = reading
        times = self._ts
        if times and ts < self._watermark - self._lateness_s:
            return []
        if ts > self._watermark and arrival_ts > self._watermark:
            self._watermark = ts if ts < arrival_ts else arrival_ts
        if not times or ts > times[-1]:
            times.append(ts)
            self._values.append(value)
            if len(times) > self._trim_above:
                del times[: -self._max_points]
                del self._values[: -self._max_points]
        elif ts == times[-1]:
            self._values[-1] = value
        else:
            at = bisect_left(times, ts)
            if times[at] == ts:
                self._values[at] = value
            else:
                times.insert(at, ts)
                self._values.insert(at, value)
                if len(times) > self._trim_above:
                    del times[: -self._max_points]
                    del self._values[: -self._max_points]
        return [reading]

    def restore(self, ts: np.ndarray, values: np.ndarray, last_arrival: float = math.inf) -> None:
        """Replace the contents with stored history: ascending, unique timestamps, the newest
        of which arrived at `last_arrival` (agent clock; it caps the watermark)."""
        keep = slice(-self._max_points, None)
        self._ts = array("d", np.asarray(ts, dtype=np.float64)[keep].tobytes())
        self._values = array("f", np.asarray(values, dtype=np.float32)[keep].tobytes())
        self._watermark = min(self._ts[-1], last_arrival) if self._ts else -math.inf
        if math.isfinite(last_arrival):
            self.last_arrival = last_arrival

    def arrays(self, span_s: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held (ts, values), oldest first (float64 times, float32 values): those
        at most `span_s` older than the newest, by default all."""
        n = len(self)
        if n and span_s < math.inf:
            n -= _first_from(self._ts, n, self._ts[-1] - span_s)
        return _tail_copy(self._ts, n), _tail_copy(self._values, n)


def _tail_copy(column: array, n: int) -> np.ndarray:
    dtype = np.dtype(column.typecode)
    if n == 0:
        return np.empty(0, dtype=dtype)
    # The frombuffer view pins `column` against resizing; it dies with this expression.
    return np.frombuffer(column, dtype=dtype)[-n:].copy()


def _first_from(column: array, n: int, start: float) -> int:
    """The index, among the last `n` of ascending `column`, of the first value >= `start`."""
    return int(np.frombuffer(column, dtype=np.float64)[-n:].searchsorted(start, "left"))


class StreamRegistry:
    """All stream buffers, bounded by `max_streams`; safe to use from several threads.

    The writer thread inserts, the forecasting thread takes snapshots; one lock serialises them.
    `dropped` counts readings not taken, by reason: "too_late", "stream_limit".

    Slots are not held for good: when a new stream finds `max_streams` held, every stream no
    reading has arrived for in `evict_idle_s` is evicted, and `take_evicted` hands them to the
    writer, which retires their stored rows in the same transaction as the new stream's. Idle
    time is measured on the agent's clock at arrival (never on event time, which a device sets),
    except that a silence of the whole agent longer than half of `evict_idle_s` (an outage, the
    agent stopped) is not counted: every stream would come out of it idle, their readings not
    yet redelivered.
    """

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits or StreamLimits()
        self.dropped: Counter[str] = Counter()
        self._buffers: dict[StreamId, StreamBuffer] = {}
        self._lock = threading.Lock()
        self._latest_arrival = -math.inf  # the newest arrival on any stream
        self._evicted: list[StreamId] = []
        # No stream can be idle before this (agent clock): spares a scan per refused reading.
        self._next_idle = -math.inf

    def __len__(self) -> int:
        return len(self._buffers)

    def __contains__(self, stream: object) -> bool:
        return stream in self._buffers

    def streams(self) -> list[StreamId]:
        with self._lock:
            return list(self._buffers)

    def insert(
        self, stream: StreamId, readings: Sequence[Reading], arrival_ts: float | None = None
    ) -> list[Reading]:
        """Insert into `stream`'s buffer, creating it if the limit allows; returns those taken.

        `arrival_ts`: the agent's clock (unix s) when the readings arrived; default now.
        Store exactly what is returned, so memory and SQLite agree on what was dropped.
        """
        if not readings:
            return []
        taken = self.admit(stream, readings, time.time() if arrival_ts is None else arrival_ts)
        return [] if taken is None else taken

    def admit(
        self, stream: StreamId, readings: Sequence[Reading], arrival: float
    ) -> list[Reading] | None:
        """`insert` for the writer, once per message: None when the stream was refused (no slot),
        which it would otherwise learn from another look-up. `readings` must not be empty."""
        with self._lock:
            if arrival > self._latest_arrival:
                self._arrive(arrival)
            buffer = self._buffers.get(stream)
            if buffer is None:
                buffer = self._buffer(stream, arrival)
                if buffer is None:
                    self.dropped["stream_limit"] += len(readings)
                    return None
            if arrival > buffer.last_arrival:
                buffer.last_arrival = arrival
            taken = buffer.insert(readings, arrival)
            if len(taken) < len(readings):
                self.dropped["too_late"] += len(readings) - len(taken)
            return taken

    def take_evicted(self) -> list[StreamId]:
        """The streams evicted since the last call: their stored rows are to be retired."""
        with self._lock:
            evicted, self._evicted = self._evicted, []
            return evicted

    def snapshot(self, stream: StreamId) -> tuple[np.ndarray, np.ndarray] | None:
        """Copies of `stream`'s (ts, values), or None for an unknown stream."""
        recent = self.recent(stream)
        return None if recent is None else recent[:2]

    def recent(
        self, stream: StreamId, span_s: float = math.inf
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Copies of `stream`'s (ts, values) at most `span_s` older than its newest reading (by
        default all), and when its newest readings arrived (`last_arrival`), in one look-up;
        None for an unknown stream; `last_arrival` is -inf when it was restored without a
        known arrival. Staleness is judged on arrival, not on event time: a stream that just
        received a month of history is live. The tick asks for what its grid covers: a full buffer
        is several times a grid's span, and the tick copies every due stream's."""
        with self._lock:
            buffer = self._buffers.get(stream)
            if buffer is None:
                return None
            return (*buffer.arrays(span_s), buffer.last_arrival)

    def restore(
        self,
        history: Iterable[tuple[StreamId, np.ndarray, np.ndarray]],
        last_arrivals: Mapping[StreamId, float] | None = None,
    ) -> int:
        """Load stored history at start-up (e.g. `ReadingStore.restore_all(max_points)`, with
        `ReadingStore.last_arrivals()`: when each stream's readings last arrived).

        Returns the number of streams restored; streams beyond `max_streams` are skipped and
        their points counted as "stream_limit".
        """
        arrivals = last_arrivals or {}
        restored = 0
        for stream, ts, values in history:
            with self._lock:
                buffer = self._buffer(stream, None)
                if buffer is None:
                    self.dropped["stream_limit"] += len(ts)
                    continue
                arrival = arrivals.get(stream, math.inf)
                buffer.restore(ts, values, arrival)
                if math.isfinite(arrival):
                    self._latest_arrival = max(self._latest_arrival, arrival)
                restored += 1
        return restored

    def _arrive(self, arrival: float) -> None:
        """Advance the agent's clock; call with the lock held."""
        silence = arrival - self._latest_arrival
        if math.isfinite(silence) and silence > self.limits.evict_idle_s / 2:
            # Nothing arrived on any stream: an outage or a stopped agent, not idle streams.
            for buffer in self._buffers.values():
                if math.isfinite(buffer.last_arrival):
                    buffer.last_arrival += silence
            self._next_idle = -math.inf
        self._latest_arrival = max(self._latest_arrival, arrival)

    def _buffer(self, stream: StreamId, arrival: float | None) -> StreamBuffer | None:
        """`stream`'s buffer, created if the limit allows, after evicting idle streams if
        `arrival` is given and the limit is reached; call with the lock held."""
        buffer = self._buffers.get(stream)
        if buffer is not None:
            return buffer
        full = len(self._buffers) >= self.limits.max_streams
        if full and (arrival is None or not self._evict_idle(arrival)):
            return None
        buffer = self._buffers[stream] = StreamBuffer(
            self.limits.max_points, self.limits.lateness_s
        )
        return buffer

    def _evict_idle(self, now: float) -> bool:
        """Evict every stream idle at `now`; whether any was. Call with the lock held."""
        if now < self._next_idle:
            return False
        cutoff = now - self.limits.evict_idle_s
        idle = [s for s, b in self._buffers.items() if b.last_arrival < cutoff]
        for stream in idle:
            del self._buffers[stream]
        self._evicted += idle
        # A stream restored without a known arrival (-inf) counts as idle.
        oldest = min((b.last_arrival for b in self._buffers.values()), default=math.inf)
        self._next_idle = oldest + self.limits.evict_idle_s
        return bool(idle)
