"""A reading from a clock running ahead does not silence its stream (issue #14, D5): with
`max_future_s` 300 a reading at now + 299 s is accepted, and with `lateness_s` 120 the true
readings after it must not be dropped as too late, before or after a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamLimits, StreamRegistry

from tests.agent.writer_kit import WriterKit

NOW = float(int(time.time()))
LIMITS = {"payload": {"max_future_s": 300}, "streams": {"lateness_s": 120}}


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[WriterKit]:
    running = WriterKit(tmp_path, limits=LIMITS)
    # Ten minutes of one reading a minute, each arriving as it is taken.
    for t in range(-600, 1, 60):
        running.feed("site/temp", {"ts": NOW + t, "value": 20.0}, arrival=NOW + t)
    running.feed("site/temp", {"ts": NOW + 299, "value": 99.0}, arrival=NOW)
    assert running.held("site/temp")[-1] == NOW + 299  # accepted: within max_future_s
    yield running
    running.close()


def true_readings_after(kit: WriterKit) -> None:
    for t in (30, 60, 90, 120):
        kit.feed("site/temp", {"ts": NOW + t, "value": 21.0}, arrival=NOW + t)


def test_true_readings_after_a_future_one_are_kept(kit: WriterKit) -> None:
    true_readings_after(kit)
    assert "too_late" not in kit.metrics.snapshot()["dropped"]
    assert [t - NOW for t in kit.held("site/temp")[-5:]] == [30, 60, 90, 120, 299]


def test_true_readings_after_a_future_one_are_kept_across_a_restart(kit: WriterKit) -> None:
    kit.restart()  # the buffer is reloaded from SQLite
    true_readings_after(kit)
    assert "too_late" not in kit.metrics.snapshot()["dropped"]
    assert [t - NOW for t in kit.held("site/temp")[-5:]] == [30, 60, 90, 120, 299]


def test_late_readings_are_still_judged_against_the_agents_clock() -> None:
    registry = StreamRegistry(StreamLimits(lateness_s=120))
    stream = StreamId("site", "temp")
    registry.insert(stream, [Reading(NOW + 299, 1.0)], arrival_ts=NOW)
    # 120 s before the arrival is the limit, not 120 s before the future timestamp.
    assert registry.insert(stream, [Reading(NOW - 119, 2.0)], arrival_ts=NOW + 1) == [
        Reading(NOW - 119, 2.0)
    ]
    assert registry.insert(stream, [Reading(NOW - 121, 3.0)], arrival_ts=NOW + 2) == []
    assert registry.dropped == {"too_late": 1}
