"""Readings lost upstream, counted from gaps in per-reading sequence numbers: out-of-order
delivery within the lateness window, duplicates, device reboots and agent restarts create no
false gaps; the counts reach the metrics topic per stream."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from moecast.agent.ingest.payloads import parse_payload
from moecast.agent.ingest.readings import StreamId
from moecast.agent.ingest.sequence import MAX_GAP, TOP_STREAMS, SequenceTracker
from moecast.agent.ops.metrics import PrometheusEndpoint

from tests.agent.conftest import free_port
from tests.agent.writer_kit import WriterKit

T0 = float(int(time.time())) - 3_600
LATENESS_S = 120.0


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[WriterKit]:
    running = WriterKit(tmp_path, limits={"streams": {"lateness_s": LATENESS_S}})
    yield running
    running.close()


def publish(kit: WriterKit, seq: int, at: float | None = None) -> None:
    """Reading number `seq` of d/s, stamped and arriving at T0 + 60 s per number."""
    ts = T0 + 60 * seq if at is None else at
    kit.feed("d/s", {"ts": ts, "value": float(seq), "seq": seq}, arrival=ts)


def settle(kit: WriterKit, at: float) -> None:
    """The agent's clock moves on (another stream's reading) past every open gap's window."""
    kit.feed("other/x", {"ts": at, "value": 0.0}, arrival=at)


def lost(kit: WriterKit) -> dict[str, object]:
    return kit.metrics.snapshot()["lost_upstream"]  # type: ignore[no-any-return]


def test_gaps_are_counted_once_the_lateness_window_has_passed(kit: WriterKit) -> None:
    for seq in (1, 2, 3, 5, 6, 9):
        publish(kit, seq)
    assert lost(kit)["total"] == 1  # 4 is final; 7 and 8 may still come
    settle(kit, T0 + 60 * 9 + LATENESS_S)
    assert lost(kit) == {"total": 3, "streams": {"d/s": 3}}


@pytest.mark.parametrize("restart_after", [3, 5, 6])
def test_an_agent_restart_neither_invents_nor_forgets_gaps(
    kit: WriterKit, restart_after: int
) -> None:
    before = 0
    for seq in (1, 2, 3, 5, 6, 9):
        publish(kit, seq)
        if seq == restart_after:
            before = lost(kit)["total"]  # type: ignore[assignment]
            kit.restart()
    settle(kit, T0 + 60 * 9 + LATENESS_S)
    assert before + lost(kit)["total"] == 3  # type: ignore[operator]


def test_out_of_order_and_duplicate_readings_are_no_gaps(kit: WriterKit) -> None:
    for seq in (1, 2, 3, 5, 4, 6, 6, 5, 8, 7):
        publish(kit, seq)
    settle(kit, T0 + 60 * 8 + LATENESS_S)
    assert lost(kit)["total"] == 0


def test_a_device_reboot_restarting_at_zero_is_no_gap(kit: WriterKit) -> None:
    for seq in (1, 2, 3):
        publish(kit, seq)
    for i, seq in enumerate((0, 1, 2)):  # numbered from 0 again, with newer readings
        publish(kit, seq, at=T0 + 600 + 60 * i)
    settle(kit, T0 + 3_000)
    assert lost(kit)["total"] == 0


def test_list_payloads_number_each_reading(kit: WriterKit) -> None:
    pack = [{"ts": T0 + i, "value": 1.0, "seq": seq} for i, seq in enumerate((10, 11, 14))]
    kit.feed("d/s", pack, arrival=T0 + 3)
    settle(kit, T0 + 3 + LATENESS_S)
    assert lost(kit)["total"] == 2


def test_the_payload_parser_collects_numbers_and_ignores_bad_ones() -> None:
    payload = b'[{"ts": 1.0, "value": 1, "seq": 7}, {"ts": 2.0, "value": 2, "seq": "8"},'
    payload += b' {"ts": 3.0, "value": 3, "seq": -1}, {"ts": 4.0, "value": 4, "seq": true}]'
    result = parse_payload(payload, 5.0)
    assert result.accepted == 4
    assert result.seqs == {"": [(7, 1.0)]}


def test_a_huge_jump_is_a_restart_and_the_report_is_bounded() -> None:
    tracker = SequenceTracker(lateness_s=0)
    stream = StreamId("d", "s")
    tracker.observe(stream, [(1, 1.0), (MAX_GAP + 10, 2.0)], arrival=2.0)
    assert tracker.expire(3.0) == 0
    for i in range(TOP_STREAMS + 5):
        tracker.observe(StreamId("d", f"s{i}"), [(1, 1.0), (3 + i, 2.0)], arrival=2.0)
    tracker.expire(3.0)
    report = tracker.report()
    assert len(report["streams"]) == TOP_STREAMS
    assert report["total"] == sum(1 + i for i in range(TOP_STREAMS + 5))
    assert next(iter(report["streams"])) == f"d/s{TOP_STREAMS + 4}"  # most lost first


def test_prometheus_counts_the_readings_lost_upstream(kit: WriterKit) -> None:
    for seq in (1, 4):
        publish(kit, seq)
    settle(kit, T0 + 60 * 4 + LATENESS_S)
    endpoint = PrometheusEndpoint(kit.metrics, free_port(), "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        endpoint.close()
    assert "moecast_agent_lost_upstream_total 2.0" in text
