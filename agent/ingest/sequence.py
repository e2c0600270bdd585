"""Readings lost before they reached the agent, found from gaps in per-reading sequence numbers.

A publisher that numbers its readings (a `seq` integer per reading, as Sparkplug B numbers its
messages) lets the agent tell what never arrived: QoS 0 readings dropped on the way, a broker
queue that overflowed, a gateway that lost its buffer. Per stream the tracker keeps the highest
number seen; a jump forward opens a gap, which stays pending for `lateness_s` of the agent's
clock, so that readings delivered out of order fill it rather than count as lost. A gap still
open then is counted lost for good.

A number below the highest that fills no gap is either a duplicate (a redelivery: its reading is
not newer than the newest seen) or a device that restarted its numbering (after a reboot, or
Sparkplug's wrap from 255 to 0: its reading is newer). A restart counts nothing; gaps still
pending from before it are counted lost, since nothing will fill them any more. A jump forward
by more than MAX_GAP is taken for a restart too: a count that large says nothing useful.

The state per stream is small (bounded pending gaps) and is stored with the stream's readings,
in the same transaction, so a restarted agent neither invents gaps nor forgets open ones.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moecast.agent.ingest.readings import StreamId

MAX_GAP = 1_000_000  # a larger jump forward is a restart of the numbering, not a loss
MAX_PENDING = 64  # open gaps per stream; beyond it the oldest is counted lost at once
TOP_STREAMS = 20  # streams named in the report, most lost first


@dataclass(slots=True)
class _State:
    high: int
    newest_ts: float
    pending: list[list[float]] = field(default_factory=list)  # [first, last, deadline]

    def dumps(self) -> str:
        return json.dumps({"high": self.high, "ts": self.newest_ts, "pending": self.pending})

    @classmethod
    def loads(cls, text: str) -> _State | None:
        try:
            raw = json.loads(text)
            pending = [[int(lo), int(hi), float(deadline)] for lo, hi, deadline in raw["pending"]]
            return cls(int(raw["high"]), float(raw["ts"]), pending)  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError):
            return None


class SequenceTracker:
    """Gaps per stream; `observe` and `expire` from the writer thread, `report` from any."""

    def __init__(self, lateness_s: float) -> None:
        self._lateness_s = lateness_s
        self._states: dict[StreamId, _State] = {}
        self._dirty: set[StreamId] = set()
        self._lost: Counter[StreamId] = Counter()
        self.total = 0
        self._next_deadline = math.inf
        self._lock = threading.Lock()

    def load(self, states: Mapping[StreamId, str]) -> None:
        """Take up the stored states (`ReadingStore.seq_states`); unreadable ones are dropped."""
        with self._lock:
            for stream, text in states.items():
                state = _State.loads(text)
                if state is not None:
                    self._states[stream] = state
                    for gap in state.pending:
                        self._next_deadline = min(self._next_deadline, gap[2])

    def observe(self, stream: StreamId, seqs: Sequence[tuple[int, float]], arrival: float) -> int:
        """Numbers (with their readings' event times) that arrived at `arrival`, in payload
        order; returns how many readings this counted lost."""
        with self._lock:
            lost = 0
            state = self._states.get(stream)
            for seq, ts in seqs:
                if state is None:
                    state = self._states[stream] = _State(seq, ts)
                    continue
                lost += self._step(state, seq, ts, arrival)
            self._dirty.add(stream)
            self._count(stream, lost)
            return lost

    def expire(self, now: float) -> int:
        """Count lost the gaps still open `lateness_s` after they opened; returns how many."""
        with self._lock:
            if now < self._next_deadline:
                return 0
            total, self._next_deadline = 0, math.inf
            for stream, state in self._states.items():
                if not state.pending:
                    continue
                lost = sum(
                    int(hi - lo + 1) for lo, hi, deadline in state.pending if deadline <= now
                )
                if lost:
                    state.pending = [gap for gap in state.pending if gap[2] > now]
                    self._dirty.add(stream)
                    self._count(stream, lost)
                    total += lost
                for gap in state.pending:
                    self._next_deadline = min(self._next_deadline, gap[2])
            return total

    def forget(self, streams: Iterable[StreamId]) -> None:
        """Drop retired streams: their stored state goes with their rows."""
        with self._lock:
            for stream in streams:
                self._states.pop(stream, None)
                self._dirty.discard(stream)

    def take_dirty(self) -> dict[StreamId, str]:
        """The states changed since the last call, to store with the batch."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return {s: self._states[s].dumps() for s in dirty if s in self._states}

    def report(self) -> dict[str, Any]:
        """{"total": lost readings, "streams": the TOP_STREAMS most affected and their counts}."""
        with self._lock:
            top = self._lost.most_common(TOP_STREAMS)
            return {"total": self.total, "streams": {str(s): n for s, n in top}}

    def _count(self, stream: StreamId, lost: int) -> None:
        if lost:
            self._lost[stream] += lost
            self.total += lost

    def _step(self, state: _State, seq: int, ts: float, arrival: float) -> int:
        lost = 0
        if seq > state.high:
            gap = seq - state.high - 1
            if gap > MAX_GAP:
                lost += self._restart(state)
            elif gap:
                if len(state.pending) >= MAX_PENDING:
                    lo, hi, _ = state.pending.pop(0)
                    lost += int(hi - lo + 1)
                deadline = arrival + self._lateness_s
                state.pending.append([state.high + 1, seq - 1, deadline])
                self._next_deadline = min(self._next_deadline, deadline)
            state.high = seq
            state.newest_ts = max(state.newest_ts, ts)
            return lost
        if seq < state.high:
            for i, (lo, hi, deadline) in enumerate(state.pending):
                if lo <= seq <= hi:  # a reading delivered out of order fills its gap
                    state.pending[i : i + 1] = [
                        gap
                        for gap in ([lo, seq - 1, deadline], [seq + 1, hi, deadline])
                        if gap[0] <= gap[1]
                    ]
                    return 0
            if ts > state.newest_ts:  # the numbering started over: a reboot, a wrap
                lost += self._restart(state)
                state.high, state.newest_ts = seq, ts
        return lost  # else a duplicate: a redelivered reading

    @staticmethod
    def _restart(state: _State) -> int:
        lost = sum(int(hi - lo + 1) for lo, hi, _ in state.pending)
        state.pending = []
        return lost
