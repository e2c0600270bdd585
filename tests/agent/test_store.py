import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.store import ReadingStore, StoreLimits

REPO = Path(__file__).resolve().parents[2]
TEMP = StreamId("boiler", "temp")
HUMIDITY = StreamId("boiler", "humidity")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "readings.db"


def stored(store: ReadingStore, stream: StreamId) -> list[Reading]:
    ts, values = store.load_recent(stream, 10**9)
    return [Reading(float(t), float(v)) for t, v in zip(ts, values, strict=True)]


def test_round_trip_oldest_first(db_path: Path) -> None:
    with ReadingStore(db_path) as store:
        store.write({TEMP: [Reading(3.0, 30.0), Reading(1.0, 10.0)], HUMIDITY: [Reading(2, 0.5)]})
        store.write({TEMP: [Reading(2.0, 20.0)]})
        assert stored(store, TEMP) == [Reading(1, 10), Reading(2, 20), Reading(3, 30)]
        ts, values = store.load_recent(TEMP, 2)
        assert ts.dtype == values.dtype == np.float64
        assert ts.tolist() == [2.0, 3.0]
        assert values.tolist() == [20.0, 30.0]
        assert stored(store, HUMIDITY) == [Reading(2, 0.5)]


def test_unknown_stream_loads_empty(db_path: Path) -> None:
    with ReadingStore(db_path) as store:
        ts, values = store.load_recent(StreamId("nobody", "x"), 10)
        assert ts.size == values.size == 0


def test_duplicates_replace(db_path: Path) -> None:
    with ReadingStore(db_path) as store:
        store.write({TEMP: [Reading(1.0, 1.0), Reading(2.0, 2.0), Reading(1.0, 1.5)]})
        store.write({TEMP: [Reading(2.0, 2.5)]})
        assert stored(store, TEMP) == [Reading(1.0, 1.5), Reading(2.0, 2.5)]


def test_reopen_and_restore_all(db_path: Path) -> None:
    with ReadingStore(db_path) as store:
        store.write({TEMP: [Reading(float(t), t * 2.0) for t in range(10)]})
        store.write({HUMIDITY: [Reading(5.0, 0.5)]})
    with ReadingStore(db_path) as store:
        restored = {stream: (ts, v) for stream, ts, v in store.restore_all(4)}
    assert set(restored) == {TEMP, HUMIDITY}
    assert restored[TEMP][0].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert restored[TEMP][1].tolist() == [12.0, 14.0, 16.0, 18.0]
    assert restored[HUMIDITY][0].tolist() == [5.0]


def test_failed_write_stores_nothing_and_store_keeps_working(db_path: Path) -> None:
    bad = Reading(2.0, None)  # type: ignore[arg-type]  # NOT NULL fails inside the transaction
    new_stream = StreamId("new", "s")
    with ReadingStore(db_path) as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.write({new_stream: [Reading(1.0, 1.0)], TEMP: [bad]})
        assert stored(store, new_stream) == []
        store.write({new_stream: [Reading(1.0, 1.0)]})
        assert stored(store, new_stream) == [Reading(1.0, 1.0)]
    with ReadingStore(db_path) as store:
        assert stored(store, new_stream) == [Reading(1.0, 1.0)]


def test_retention_keeps_the_newest_points_pruning_in_batches(db_path: Path) -> None:
    limits = StoreLimits(retention_points=50, prune_slack=10)
    with ReadingStore(db_path, limits) as store:
        for batch in range(30):
            store.write({TEMP: [Reading(float(batch * 7 + i), 1.0) for i in range(7)]})
            held = stored(store, TEMP)
            newest = batch * 7 + 6
            assert held[-1].ts == newest
            assert min(newest + 1, 50) <= len(held) <= 50 + 10
            # what is held is always the newest contiguous run
            assert [r.ts for r in held] == list(range(newest + 1 - len(held), newest + 1))
        store.write({HUMIDITY: [Reading(1.0, 1.0)]})
        assert len(stored(store, HUMIDITY)) == 1


def test_lowered_retention_applies_at_the_next_write(db_path: Path) -> None:
    with ReadingStore(db_path) as store:
        store.write({TEMP: [Reading(float(t), 1.0) for t in range(100)]})
    with ReadingStore(db_path, StoreLimits(retention_points=20, prune_slack=1000)) as store:
        assert len(stored(store, TEMP)) == 100
        store.write({TEMP: [Reading(100.0, 1.0)]})
        assert [r.ts for r in stored(store, TEMP)] == list(range(81, 101))


@pytest.mark.parametrize(("power_loss_safe", "synchronous"), [(False, 1), (True, 2)])
def test_wal_and_synchronous_mode(db_path: Path, power_loss_safe: bool, synchronous: int) -> None:
    with ReadingStore(db_path, StoreLimits(power_loss_safe=power_loss_safe)) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store._db.execute("PRAGMA synchronous").fetchone() == (synchronous,)


_WRITER = """
import sys
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.store import ReadingStore

store = ReadingStore(sys.argv[1])
batch = 0
while True:
    store.write({
        StreamId("dev", f"s{stream}"): [Reading(batch * 1e3 + i, float(stream)) for i in range(250)]
        for stream in range(4)
    })
    print(batch, flush=True)
    sys.stdin.readline()
    batch += 1
"""


def test_acknowledged_writes_survive_sigkill(db_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    try:
        for batch in range(5):
            assert writer.stdout.readline().strip() == str(batch)
            writer.stdin.write("next\n")
            writer.stdin.flush()
        # Batch 4 was acknowledged; batch 5's write is under way: kill it wherever it is.
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=10) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.stdout.close()
        writer.stdin.close()

    # Every acknowledged batch is there; the one in flight is all there or not at all.
    expected_batches = {0, 1, 2, 3, 4}
    with ReadingStore(db_path) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for stream in range(4):
            ts, values = store.load_recent(StreamId("dev", f"s{stream}"), 10**6)
            assert set(values.tolist()) == {float(stream)}
            batches = {int(t // 1000) for t in ts}
            assert batches in (expected_batches, expected_batches | {5})
            assert len(ts) == 250 * len(batches)


def test_a_database_from_before_arrivals_were_recorded_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as old:
        old.executescript(
            "CREATE TABLE streams (id INTEGER PRIMARY KEY, device TEXT NOT NULL,"
            " sensor TEXT NOT NULL, UNIQUE (device, sensor));"
            "CREATE TABLE readings (stream_id INTEGER NOT NULL REFERENCES streams (id),"
            " ts REAL NOT NULL, value REAL NOT NULL, PRIMARY KEY (stream_id, ts)) WITHOUT ROWID;"
            "INSERT INTO streams VALUES (1, 'd', 's'); INSERT INTO readings VALUES (1, 5.0, 1.0);"
        )
        old.commit()
    before = time.time()
    with ReadingStore(db) as store:
        (arrival,) = store.last_arrivals().values()
        assert arrival >= before  # idle from now on, not since 1970
        assert store.seq_states() == {}


def test_retired_streams_lose_their_rows_in_the_writing_transaction(tmp_path: Path) -> None:
    old, new = StreamId("junk", "x"), StreamId("d", "s")
    with ReadingStore(tmp_path / "r.db") as store:
        store.write({old: [Reading(1.0, 1.0)]}, arrivals={old: 10.0})
        assert store.last_arrivals() == {old: 10.0}
        store.write({new: [Reading(2.0, 2.0)]}, arrivals={new: 20.0}, retire=[old])
        assert store.last_arrivals() == {new: 20.0}
        assert [s for s, _, _ in store.restore_all(10)] == [new]
        store.write({old: [Reading(3.0, 3.0)]})  # comes back as a new stream
        assert store.load_recent(old, 10)[0].tolist() == [3.0]


def test_page_cache_bounded(tmp_path: Path) -> None:
    """Both of the agent's SQLite connections keep at most CACHE_KIB of pages (SQLite's own
    default is 2 MB each), whatever they hold."""
    from moecast.agent.forecast.quality_store import QUALITY_DB, QualityStore
    from moecast.agent.ingest.store import CACHE_KIB

    assert 0 < CACHE_KIB < 2000
    with ReadingStore(tmp_path / "readings.db") as store:
        store.write(
            {
                StreamId("d", f"s{i}"): [Reading(float(t), 1.0) for t in range(50)]
                for i in range(200)
            }
        )
        assert store._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    quality = QualityStore(tmp_path / QUALITY_DB)
    try:
        assert quality._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    finally:
        quality.close()
