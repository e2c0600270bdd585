"""What the quality checks keep across restarts, in `<storage_dir>/quality.db` (SQLite): each
stream's rolling skill sums, calibration factors and anomaly state (one JSON row per stream,
~1 KB), and the Home Assistant discovery topics the agent has published (so a later run can
remove them). A file of its own: the tick thread writes it, and the readings database belongs
to the writer thread.

Bounded: one row per stream the registry holds (rows of streams that left it are deleted), one
row per discovery topic (two per stream).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moecast.agent.ingest.readings import StreamId
from moecast.agent.ingest.store import CACHE_KIB

_SCHEMA = """
-- A rowid table: WITHOUT ROWID would put each ~1 KB state on an overflow page of its own.
CREATE TABLE IF NOT EXISTS stream_quality (
    device TEXT NOT NULL,
    sensor TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (device, sensor)
);
CREATE TABLE IF NOT EXISTS discovery_topics (
    topic TEXT PRIMARY KEY
) WITHOUT ROWID;
"""
QUALITY_DB = "quality.db"


class QualityStore:
    """One connection, used from the tick thread only."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # as the readings' store
        self._db.executescript(_SCHEMA)

    def load_states(self) -> dict[StreamId, dict[str, Any]]:
        states = {}
        for device, sensor, state in self._db.execute(
            "SELECT device, sensor, state FROM stream_quality"
        ):
            try:
                states[StreamId(device, sensor)] = json.loads(state)
            except ValueError:
                continue  # a damaged row only costs that stream its history
        return states

    def save_states(
        self, states: Iterable[tuple[StreamId, dict[str, Any]]], gone: Iterable[StreamId] = ()
    ) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO stream_quality (device, sensor, state) VALUES (?, ?, ?)",
                [(s.device, s.sensor, json.dumps(state)) for s, state in states],
            )
            db.executemany(
                "DELETE FROM stream_quality WHERE device = ? AND sensor = ?",
                [(s.device, s.sensor) for s in gone],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Saves are minutes apart: fold the WAL back each time, so it never outgrows a save.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def discovery_topics(self) -> set[str]:
        return {topic for (topic,) in self._db.execute("SELECT topic FROM discovery_topics")}

    def add_discovery_topics(self, topics: Iterable[str]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO discovery_topics (topic) VALUES (?)", [(t,) for t in topics]
        )

    def remove_discovery_topics(self, topics: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM discovery_topics WHERE topic = ?", [(t,) for t in topics])

    def close(self) -> None:
        self._db.close()
