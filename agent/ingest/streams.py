"""In-memory recent history of every stream, ordered by event time and bounded.

Values live in `array.array("d")` pairs rather than numpy arrays: appending one reading is a
C-level operation with amortised growth, the common case on the ingest path, while copies for
the forecaster come out as numpy arrays through the buffer protocol.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import itemgetter

import numpy as np
from moecast.agent.ingest.readings import Reading, StreamId
from pydantic import BaseModel, ConfigDict, Field

_event_time = itemgetter(0)


class StreamLimits(BaseModel):
    """Bounds on the in-memory history; a settings module fills these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_streams: int = Field(default=2_000, gt=0)  # readings of further streams are rejected
    # About 16 bytes per point: 1000 full streams of 2048 points are ~37 MB.
    max_points: int = Field(default=2_048, gt=0)
    lateness_s: float = Field(default=300.0, ge=0)  # later readings are counted and dropped


class StreamBuffer:
    """The newest `max_points` readings of one stream, strictly increasing in time.

    Not thread-safe; `StreamRegistry` serialises access.
    """

    __slots__ = ("_lateness_s", "_max_points", "_trim_above", "_ts", "_values")

    def __init__(self, max_points: int, lateness_s: float) -> None:
        self._max_points = max_points
        self._lateness_s = lateness_s
        # Trimming moves the whole buffer, so it happens once per max_points/8 readings rather
        # than on every append; until then up to that many extra old points are held.
        self._trim_above = max_points + max(max_points // 8, 1)
        self._ts = array("d")
        self._values = array("d")

    def __len__(self) -> int:
        return min(len(self._ts), self._max_points)

    @property
    def newest_ts(self) -> float | None:
        return self._ts[-1] if self._ts else None

    def insert(self, readings: Sequence[Reading]) -> list[Reading]:
        """Insert in time order; returns the readings taken, in time order.

        A reading older than the newest held one by more than `lateness_s` is dropped (the
        caller counts it); one with a held timestamp replaces that value. Within one call the
        later of two equal timestamps wins, and lateness is measured against the newest reading
        held before the call, so the order of readings inside a batch does not matter.
        """
        batch = sorted(readings, key=_event_time) if len(readings) > 1 else list(readings)
        times, values = self._ts, self._values
        if times:
            too_late = bisect_left(batch, times[-1] - self._lateness_s, key=_event_time)
            if too_late:
                batch = batch[too_late:]
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

    def restore(self, ts: np.ndarray, values: np.ndarray) -> None:
        """Replace the contents with stored history: ascending, unique timestamps."""
        keep = slice(-self._max_points, None)
        self._ts = array("d", np.asarray(ts, dtype=np.float64)[keep].tobytes())
        self._values = array("d", np.asarray(values, dtype=np.float64)[keep].tobytes())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held (ts, values), oldest first, as float64 arrays."""
        return _tail_copy(self._ts, self._max_points), _tail_copy(self._values, self._max_points)


def _tail_copy(column: array, n: int) -> np.ndarray:
    # The frombuffer view pins `column` against resizing; it dies with this expression.
    return np.frombuffer(column, dtype=np.float64)[-n:].copy()


class StreamRegistry:
    """All stream buffers, bounded by `max_streams`; safe to use from several threads.

    The writer thread inserts, the forecasting thread takes snapshots; one lock serialises them.
    `dropped` counts readings not taken, by reason: "too_late", "stream_limit".
    """

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits or StreamLimits()
        self.dropped: Counter[str] = Counter()
        self._buffers: dict[StreamId, StreamBuffer] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buffers)

    def __contains__(self, stream: object) -> bool:
        return stream in self._buffers

    def streams(self) -> list[StreamId]:
        with self._lock:
            return list(self._buffers)

    def insert(self, stream: StreamId, readings: Sequence[Reading]) -> list[Reading]:
        """Insert into `stream`'s buffer, creating it if the limit allows; returns those taken.

        Store exactly what is returned, so memory and SQLite agree on what was dropped.
        """
        if not readings:
            return []
        with self._lock:
            buffer = self._buffer(stream)
            if buffer is None:
                self.dropped["stream_limit"] += len(readings)
                return []
            taken = buffer.insert(readings)
            if len(taken) < len(readings):
                self.dropped["too_late"] += len(readings) - len(taken)
            return taken

    def snapshot(self, stream: StreamId) -> tuple[np.ndarray, np.ndarray] | None:
        """Copies of `stream`'s (ts, values), or None for an unknown stream."""
        with self._lock:
            buffer = self._buffers.get(stream)
            return None if buffer is None else buffer.arrays()

    def restore(self, history: Iterable[tuple[StreamId, np.ndarray, np.ndarray]]) -> int:
        """Load stored history at start-up (e.g. `ReadingStore.restore_all(max_points)`).

        Returns the number of streams restored; streams beyond `max_streams` are skipped and
        their points counted as "stream_limit".
        """
        restored = 0
        for stream, ts, values in history:
            with self._lock:
                buffer = self._buffer(stream)
                if buffer is None:
                    self.dropped["stream_limit"] += len(ts)
                    continue
                buffer.restore(ts, values)
                restored += 1
        return restored

    def _buffer(self, stream: StreamId) -> StreamBuffer | None:
        """`stream`'s buffer, created if the limit allows; call with the lock held."""
        buffer = self._buffers.get(stream)
        if buffer is None and len(self._buffers) < self.limits.max_streams:
            buffer = self._buffers[stream] = StreamBuffer(
                self.limits.max_points, self.limits.lateness_s
            )
        return buffer
