import random
import threading
from pathlib import Path

import numpy as np
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamBuffer, StreamLimits, StreamRegistry

TEMP = StreamId("boiler", "temp")


def held(buffer: StreamBuffer) -> list[Reading]:
    ts, values = buffer.arrays()
    return [Reading(float(t), float(v)) for t, v in zip(ts, values, strict=True)]


def test_in_order_appends() -> None:
    buffer = StreamBuffer(max_points=100, lateness_s=10)
    for t in range(5):
        assert buffer.insert([Reading(float(t), t * 10.0)]) == [Reading(float(t), t * 10.0)]
    assert held(buffer) == [Reading(float(t), t * 10.0) for t in range(5)]
    assert buffer.newest_ts == 4.0
    assert len(buffer) == 5


def test_late_readings_within_lateness_are_placed_in_order() -> None:
    buffer = StreamBuffer(max_points=100, lateness_s=10)
    buffer.insert([Reading(0.0, 0.0), Reading(10.0, 1.0), Reading(20.0, 2.0)])
    assert buffer.insert([Reading(15.0, 1.5)]) == [Reading(15.0, 1.5)]
    assert buffer.insert([Reading(10.0, 9.0)]) == [Reading(10.0, 9.0)]  # replaces
    assert buffer.insert([Reading(9.5, 0.9)]) == []  # 10.5 s behind the newest
    assert buffer.insert([Reading(10.0 - 1e-9, 0.9)]) == []
    assert held(buffer) == [
        Reading(0.0, 0.0),
        Reading(10.0, 9.0),
        Reading(15.0, 1.5),
        Reading(20.0, 2.0),
    ]


def test_duplicates_replace_including_the_newest_and_within_a_batch() -> None:
    buffer = StreamBuffer(max_points=100, lateness_s=10)
    buffer.insert([Reading(1.0, 1.0), Reading(2.0, 2.0)])
    buffer.insert([Reading(2.0, 20.0)])
    buffer.insert([Reading(3.0, 3.0), Reading(1.0, 10.0), Reading(3.0, 30.0)])
    assert held(buffer) == [Reading(1.0, 10.0), Reading(2.0, 20.0), Reading(3.0, 30.0)]


def test_order_inside_a_batch_does_not_matter() -> None:
    batch = [Reading(float(t), float(t)) for t in range(100, 200)]
    shuffled = batch[:]
    random.Random(1).shuffle(shuffled)
    in_order, any_order = StreamBuffer(500, 5), StreamBuffer(500, 5)
    for buffer, readings in ((in_order, batch), (any_order, shuffled)):
        buffer.insert([Reading(150.0, -1.0)])  # lateness counts from here: 145 and later fit
        taken = buffer.insert(readings)
        assert taken == batch[45:]
    assert held(in_order) == held(any_order) == batch[45:]


def test_bounded_to_the_newest_max_points() -> None:
    buffer = StreamBuffer(max_points=64, lateness_s=0)
    for t in range(1000):
        buffer.insert([Reading(float(t), float(t))])
        assert len(buffer) == min(t + 1, 64)
    ts, values = buffer.arrays()
    assert ts.tolist() == list(range(936, 1000))
    assert values.tolist() == ts.tolist()
    buffer.insert([Reading(float(t), 0.0) for t in range(1000, 1500)])
    assert buffer.arrays()[0].tolist() == list(range(1436, 1500))


def test_arrays_are_copies() -> None:
    buffer = StreamBuffer(max_points=8, lateness_s=0)
    buffer.insert([Reading(1.0, 1.0)])
    _, values = buffer.arrays()
    values[0] = 99.0
    buffer.insert([Reading(2.0, 2.0)])  # would fail if a view still pinned the buffer
    assert held(buffer) == [Reading(1.0, 1.0), Reading(2.0, 2.0)]


def test_registry_counts_late_readings_and_returns_what_it_took() -> None:
    registry = StreamRegistry(StreamLimits(lateness_s=5))
    registry.insert(TEMP, [Reading(100.0, 1.0)])
    taken = registry.insert(TEMP, [Reading(90.0, 2.0), Reading(96.0, 3.0), Reading(50.0, 4.0)])
    assert taken == [Reading(96.0, 3.0)]
    assert registry.dropped == {"too_late": 2}


def test_registry_bounds_streams_and_keeps_existing_ones_working() -> None:
    registry = StreamRegistry(StreamLimits(max_streams=2))
    first, second, third = (StreamId("d", f"s{i}") for i in range(3))
    registry.insert(first, [Reading(1.0, 1.0)])
    registry.insert(second, [Reading(1.0, 1.0)])
    assert registry.insert(third, [Reading(1.0, 1.0), Reading(2.0, 2.0)]) == []
    assert registry.dropped == {"stream_limit": 2}
    assert third not in registry
    assert registry.snapshot(third) is None
    assert registry.insert(first, [Reading(2.0, 2.0)]) == [Reading(2.0, 2.0)]
    assert registry.streams() == [first, second]
    assert len(registry) == 2


def test_empty_insert_creates_no_stream() -> None:
    registry = StreamRegistry(StreamLimits(max_streams=1))
    assert registry.insert(TEMP, []) == []
    assert len(registry) == 0


def test_restore_from_the_store(tmp_path: Path) -> None:
    limits = StreamLimits(max_streams=2, max_points=5, lateness_s=3)
    streams = [StreamId("d", f"s{i}") for i in range(3)]
    with ReadingStore(tmp_path / "r.db") as store:
        for i, stream in enumerate(streams):
            store.write({stream: [Reading(float(t), float(t + i)) for t in range(20)]})
        registry = StreamRegistry(limits)
        assert registry.restore(store.restore_all(limits.max_points)) == 2
    assert registry.dropped == {"stream_limit": 5}
    ts, values = registry.snapshot(streams[0])  # type: ignore[misc]
    assert ts.tolist() == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert values.tolist() == ts.tolist()
    # Lateness continues from the restored history.
    assert registry.insert(streams[1], [Reading(15.0, 0.0), Reading(17.0, 7.0)]) == [
        Reading(17.0, 7.0)
    ]


def test_concurrent_insert_and_snapshot_stay_consistent() -> None:
    registry = StreamRegistry(StreamLimits(max_points=256))
    done = threading.Event()

    def ingest() -> None:
        for t in range(5000):
            registry.insert(TEMP, [Reading(float(t), float(t))])
        done.set()

    writer = threading.Thread(target=ingest)
    writer.start()
    while not done.is_set():
        snapshot = registry.snapshot(TEMP)
        if snapshot is not None:
            ts, values = snapshot
            assert np.array_equal(ts, values)
            assert np.all(np.diff(ts) > 0)
    writer.join()


def test_recent_copies_the_readings_within_a_span_of_the_newest() -> None:
    limits = StreamLimits(max_points=50, lateness_s=1000)
    registry = StreamRegistry(limits)
    # 80 readings into a buffer of 50 (trimming holds a few more than 50 until it moves).
    registry.insert(TEMP, [Reading(10.0 * t, float(t)) for t in range(80)], arrival_ts=1234.0)
    ts, values, arrival = registry.recent(TEMP)  # type: ignore[misc]
    assert ts.tolist() == [10.0 * t for t in range(30, 80)]  # max_points, not what is held
    assert values.tolist() == [float(t) for t in range(30, 80)]
    assert arrival == 1234.0
    ts, values, _ = registry.recent(TEMP, 35.0)  # type: ignore[misc]
    assert ts.tolist() == [760.0, 770.0, 780.0, 790.0]
    assert values.tolist() == [76.0, 77.0, 78.0, 79.0]
    ts, _, _ = registry.recent(TEMP, 29.5)  # type: ignore[misc]
    assert ts.tolist() == [770.0, 780.0, 790.0]
    ts, _, _ = registry.recent(TEMP, 30.0)  # type: ignore[misc]
    assert ts.tolist() == [760.0, 770.0, 780.0, 790.0]  # at most 30 s older: 760 is
    ts, _, _ = registry.recent(TEMP, 0.0)  # type: ignore[misc]
    assert ts.tolist() == [790.0]
    ts, _, _ = registry.recent(TEMP, 1e9)  # type: ignore[misc]
    assert ts.size == 50
    # The copies are the tick's own: later readings do not change them.
    registry.insert(TEMP, [Reading(800.0, -1.0)])
    assert ts[-1] == 790.0
    assert registry.recent(StreamId("boiler", "other")) is None
