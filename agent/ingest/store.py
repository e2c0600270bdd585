"""Durable readings in SQLite: what the agent acknowledges to the broker is here first.

Durability: the database runs in WAL mode with `synchronous=NORMAL`. A commit then appends to
the WAL file, which sits in the OS page cache, without an fsync; the fsync happens at
checkpoints. A killed process (`kill -9`, OOM killer, crash) cannot lose a committed
transaction, because the OS still holds and eventually writes the pages: that is exactly the
promise "a reading acknowledged to the broker survives killing the agent". Only a power loss or
kernel crash can lose the last transactions before a checkpoint (the database stays consistent).
Devices that must also survive power loss set `power_loss_safe`, which fsyncs every commit
(`synchronous=FULL`) at a large cost per write on SD cards.

Threading contract: one `ReadingStore` owns one connection and is not thread-safe. Create it
anywhere (e.g. the main thread for start-up restores), then use it from one writer thread only,
which batches parsed messages into `write` and acknowledges them once `write` has returned.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from moecast.agent.ingest.readings import Reading, StreamId
from pydantic import BaseModel, ConfigDict, Field

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    sensor TEXT NOT NULL,
    UNIQUE (device, sensor)
);
CREATE TABLE IF NOT EXISTS readings (
    stream_id INTEGER NOT NULL REFERENCES streams (id),
    ts REAL NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (stream_id, ts)
) WITHOUT ROWID;
"""
# Columns added since the first schema, created on an older database at open. last_arrival:
# agent clock (unix s) when the stream's readings last arrived, for idle eviction; seq_state:
# the sequence-gap tracker's state (agent.ingest.sequence), JSON.
_ADDED_COLUMNS = {"last_arrival": "REAL", "seq_state": "TEXT"}
_ARRIVAL_RESOLUTION_S = 60.0
# SQLite's page cache, per connection (its default is 2 MB). The operating system caches the
# file's pages anyway, so a smaller cache costs little: `benchmarks/agent_memory.py`, 1000
# streams of 600 readings, SQLite held 0.64 MB against 2.14 and wrote in 2.19 s against 2.03.
CACHE_KIB = 512
_CHUNKS = (256, 16)  # rows per INSERT statement, the largest first; the rest one at a time
_INSERT_MANY = {
    n: "INSERT OR REPLACE INTO readings (stream_id, ts, value) VALUES "
    + ", ".join(["(?, ?, ?)"] * n)
    for n in (*_CHUNKS, 1)
}
_ts = itemgetter(0)
_value = itemgetter(1)


class StoreLimits(BaseModel):
    """Retention and durability of the store; a settings module fills these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retention_points: int = Field(default=20_000, gt=0)  # newest readings kept per stream
    # Pruning finds the cut-off by walking `retention_points` index entries, so it runs once a
    # stream has had this many inserts since its last prune; a stream holds at most
    # retention_points + prune_slack rows.
    prune_slack: int = Field(default=2_000, gt=0)
    power_loss_safe: bool = False  # SQLite synchronous=FULL: survives power loss, slower


class ReadingStore:
    """Readings per stream in SQLite, newest `retention_points` kept; see the threading contract."""

    def __init__(self, path: str | Path, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        # isolation_level=None: transactions are begun and committed explicitly in `write`.
        # check_same_thread=False: see the threading contract in the module docstring.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        synchronous = "FULL" if self.limits.power_loss_safe else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        # A batch spread over many streams dirties one leaf page per stream, so commits are
        # page-heavy: checkpoint (and fsync) every ~16 MB of WAL rather than SQLite's 4 MB, and
        # bound the WAL file left behind afterwards on small disks.
        self._db.execute("PRAGMA wal_autocheckpoint=4000")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.executescript(_SCHEMA)
        self._add_columns()
        self._ids: dict[StreamId, int] = {
            StreamId(device, sensor): stream_id
            for stream_id, device, sensor in self._db.execute(
                "SELECT id, device, sensor FROM streams"
            )
        }
        # Inserts since each stream's last prune. Existing streams start due, so a lowered
        # retention or rows written by an earlier run are pruned at their next write.
        self._unpruned: dict[int, int] = dict.fromkeys(self._ids.values(), self.limits.prune_slack)
        self._stamped: dict[int, float] = {}  # last_arrival as last written, per stream id

    def write(
        self,
        batch: Mapping[StreamId, Sequence[Reading]],
        arrivals: Mapping[StreamId, float] | None = None,
        retire: Collection[StreamId] = (),
        seq_states: Mapping[StreamId, str] | None = None,
    ) -> None:
        """Store all readings in one transaction; returns only once it is committed.

        A reading with the same stream and timestamp as a stored one replaces it, so a
        redelivered message is harmless. Values must be finite (the parser guarantees it).
        If this raises, nothing of the batch is stored: do not acknowledge it.

        In the same transaction: `retire` deletes streams with all their readings (first, so
        a retired stream in `batch` starts over), `arrivals` records when each stream's
        readings last arrived (a new stream without one: now), `seq_states` replaces streams'
        sequence-tracker states; both ignore streams that have no row.
        """
        new_ids: dict[StreamId, int] = {}
        counts: dict[int, int] = {}
        rows: list[float] = []  # stream id, ts, value, flat
        retired = [(self._ids[stream],) for stream in retire if stream in self._ids]
        now = time.time()
        db = self._db
        db.execute("BEGIN")
        try:
            if retired:
                db.executemany("DELETE FROM readings WHERE stream_id = ?", retired)
                db.executemany("DELETE FROM streams WHERE id = ?", retired)
            gone = {stream_id for (stream_id,) in retired}
            for stream, readings in batch.items():
                stream_id = self._ids.get(stream)
                if stream_id is None:
                    stream_id = new_ids.get(stream)
                if stream_id is None or stream_id in gone:
                    arrival = (arrivals or {}).get(stream, now)
                    stream_id = new_ids[stream] = self._insert_stream(stream, arrival)
                if len(readings) == 1:  # one reading per stream and batch is the common case
                    rows += (stream_id, *readings[0])
                else:
                    rows += chain.from_iterable(
                        zip(repeat(stream_id), map(_ts, readings), map(_value, readings))
                    )
                counts[stream_id] = counts.get(stream_id, 0) + len(readings)
            self._insert_rows(rows)
            due = [
                stream_id
                for stream_id, count in counts.items()
                if self._unpruned.get(stream_id, 0) + count >= self.limits.prune_slack
            ]
            for stream_id in due:
                self._prune(stream_id)

            row_id: Callable[[StreamId], int | None] = self._ids.get
            if new_ids or gone:

                def row_id(stream: StreamId) -> int | None:
                    stream_id = new_ids.get(stream, self._ids.get(stream))
                    return None if stream_id in gone else stream_id

            # Arrivals matter to the day (idle eviction) and to the minute (the restored
            # watermark, where older only means more lenient): an update a minute per stream
            # rather than one per batch.
            stamped = [
                (ts, stream_id)
                for stream, ts in (arrivals or {}).items()
                if (stream_id := row_id(stream)) is not None
                and ts - self._stamped.get(stream_id, -math.inf) >= _ARRIVAL_RESOLUTION_S
            ]
            db.executemany(
                "UPDATE streams SET last_arrival = max(coalesce(last_arrival, 0), ?) WHERE id = ?",
                stamped,
            )
            db.executemany(
                "UPDATE streams SET seq_state = ? WHERE id = ?",
                [
                    (state, stream_id)
                    for stream, state in (seq_states or {}).items()
                    if (stream_id := row_id(stream)) is not None
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Only committed state reaches the caches.
        for stream in retire:
            stream_id = self._ids.pop(stream, None)
            if stream_id is not None:
                self._unpruned.pop(stream_id, None)
                self._stamped.pop(stream_id, None)
        self._stamped.update((stream_id, ts) for ts, stream_id in stamped)
        self._ids.update(new_ids)
        for stream_id, count in counts.items():
            self._unpruned[stream_id] = self._unpruned.get(stream_id, 0) + count
        for stream_id in due:
            self._unpruned[stream_id] = 0

    def load_recent(self, stream: StreamId, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest `n` readings of `stream` as (ts, values) float64 arrays, oldest first."""
        stream_id = self._ids.get(stream)
        if stream_id is None or n <= 0:
            return np.empty(0), np.empty(0)
        rows = self._db.execute(
            "SELECT ts, value FROM readings WHERE stream_id = ? ORDER BY ts DESC LIMIT ?",
            (stream_id, n),
        ).fetchall()
        table = np.array(rows, dtype=np.float64).reshape(-1, 2)[::-1]
        return table[:, 0].copy(), table[:, 1].copy()

    def restore_all(self, n: int) -> Iterator[tuple[StreamId, np.ndarray, np.ndarray]]:
        """Every stream with its newest `n` readings, one stream at a time to bound memory."""
        for stream in list(self._ids):
            ts, values = self.load_recent(stream, n)
            if len(ts):
                yield stream, ts, values

    def last_arrivals(self) -> dict[StreamId, float]:
        """When each stream's readings last arrived (agent clock, unix s)."""
        return self._column("last_arrival")

    def seq_states(self) -> dict[StreamId, str]:
        """The sequence-gap tracker's stored state of each stream that has one."""
        return self._column("seq_state")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReadingStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _add_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(streams)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE streams ADD COLUMN {column} {kind}")
        # Streams stored before arrivals were recorded count as arriving now: a fresh start of
        # their idle time, not an instant eviction.
        self._db.execute(
            "UPDATE streams SET last_arrival = ? WHERE last_arrival IS NULL", (time.time(),)
        )

    def _column(self, column: str) -> dict[Any, Any]:
        by_id = {stream_id: stream for stream, stream_id in self._ids.items()}
        rows = self._db.execute(f"SELECT id, {column} FROM streams WHERE {column} IS NOT NULL")
        return {by_id[stream_id]: value for stream_id, value in rows if stream_id in by_id}

    def _insert_stream(self, stream: StreamId, arrival: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO streams (device, sensor, last_arrival) VALUES (?, ?, ?)",
            (stream.device, stream.sensor, arrival),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _insert_rows(self, rows: list[float]) -> None:
        """Insert flat (stream id, ts, value) triples, in order: a later duplicate replaces."""
        # Rows many to a statement: SQLite's cost per statement execution (bind, step, reset)
        # is about that of inserting a row, so this halves it against executemany of one-row
        # statements. Two fixed sizes keep the statement cache at three entries.
        at = 0
        for chunk in _CHUNKS:
            sql, width = _INSERT_MANY[chunk], chunk * 3
            while len(rows) - at >= width:
                self._db.execute(sql, rows[at : at + width])
                at += width
        if at < len(rows):
            tail = iter(rows[at:])
            self._db.executemany(_INSERT_MANY[1], zip(tail, tail, tail, strict=True))

    def _prune(self, stream_id: int) -> None:
        """Delete all but the newest `retention_points` readings of one stream."""
        cutoff = self._db.execute(
            "SELECT ts FROM readings WHERE stream_id = ? ORDER BY ts DESC LIMIT 1 OFFSET ?",
            (stream_id, self.limits.retention_points - 1),
        ).fetchone()
        if cutoff is not None:
            self._db.execute(
                "DELETE FROM readings WHERE stream_id = ? AND ts < ?", (stream_id, cutoff[0])
            )
