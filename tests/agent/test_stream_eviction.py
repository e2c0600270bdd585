"""Idle streams give their slots back (issue #14, D4): junk streams that filled
`limits.streams.max_streams` once do not lock new streams out for good, not even across a
restart; idleness is measured on the agent's clock at arrival, and an outage is not idleness."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import stored_rows
from tests.agent.writer_kit import WriterKit

IDLE_S = 1_000.0
T0 = float(int(time.time())) - 3_000  # arrivals are injected: the test runs on its own clock
LIMITS = {"streams": {"max_streams": 4, "evict_idle_s": IDLE_S, "lateness_s": 10_000}}


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[WriterKit]:
    running = WriterKit(tmp_path, limits=LIMITS)
    yield running
    running.close()


def fill_with_junk(kit: WriterKit) -> None:
    kit.feed("site/temp", {"ts": T0, "value": 20.0}, arrival=T0)
    for i in range(3):
        kit.feed(f"junk{i}/x", {"ts": T0, "value": 0.0}, arrival=T0)


def keep_live_until(kit: WriterKit, end: float) -> None:
    """The live stream reports every 200 s (agent clock) up to `end`."""
    t = T0 + 200
    while t <= end:
        kit.feed("site/temp", {"ts": t, "value": 20.0}, arrival=t)
        t += 200


def new_stream_readings(kit: WriterKit, at: float) -> None:
    kit.feed("site/new", [{"ts": at - 60 * i, "value": float(i)} for i in range(10)], arrival=at)


def stored_streams(kit: WriterKit) -> set[str]:
    return {f"{d}/{s}" for d, s, _, _ in stored_rows(kit.settings.readings_db)}


def test_a_full_table_refuses_a_new_stream_with_a_log_line(
    kit: WriterKit, caplog: pytest.LogCaptureFixture
) -> None:
    fill_with_junk(kit)
    with caplog.at_level(logging.WARNING):
        new_stream_readings(kit, T0 + 10)
    assert kit.held("site/new") == []
    assert kit.metrics.snapshot()["dropped"]["stream_limit"] == 10
    assert any("refused new stream site/new" in r.getMessage() for r in caplog.records)
    assert kit.acks.acked[-1] == 5  # acknowledged all the same: a redelivery fares no better


def test_streams_idle_past_the_age_are_evicted_for_a_new_one(kit: WriterKit) -> None:
    fill_with_junk(kit)
    keep_live_until(kit, T0 + IDLE_S + 200)
    new_stream_readings(kit, T0 + IDLE_S + 250)
    assert len(kit.held("site/new")) == 10  # in the registry, with its readings: forecastable
    assert kit.held("junk0/x") == []
    assert len(kit.registry) == 2
    assert stored_streams(kit) == {"site/temp", "site/new"}  # the junk's rows are retired
    kit.restart()
    assert len(kit.held("site/new")) == 10
    assert kit.held("junk1/x") == []


def test_junk_restored_after_a_restart_is_evicted_too(kit: WriterKit) -> None:
    fill_with_junk(kit)
    kit.restart()  # the junk comes back from SQLite with when it last arrived
    assert kit.held("junk2/x") == [T0]
    keep_live_until(kit, T0 + IDLE_S + 200)
    new_stream_readings(kit, T0 + IDLE_S + 250)
    assert len(kit.held("site/new")) == 10
    assert stored_streams(kit) == {"site/temp", "site/new"}


def test_an_outage_is_not_idleness(kit: WriterKit) -> None:
    fill_with_junk(kit)
    # Nothing at all arrives for longer than the idle age (a broker outage, the agent down):
    # every stream would look idle, with its readings still queued at the broker.
    new_stream_readings(kit, T0 + 2 * IDLE_S)
    assert kit.held("site/new") == []
    assert kit.held("junk0/x") == [T0]
    # Idleness counts from the end of the outage.
    kit.feed("site/temp", {"ts": T0 + 2 * IDLE_S + 100, "value": 1.0}, T0 + 2 * IDLE_S + 100)
    t = T0 + 2 * IDLE_S + 300
    while t < T0 + 3 * IDLE_S + 100:
        kit.feed("site/temp", {"ts": t, "value": 1.0}, arrival=t)
        t += 200
    new_stream_readings(kit, t)
    assert len(kit.held("site/new")) == 10
