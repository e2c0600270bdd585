"""Rejection log lines say what was dropped and the setting that governs it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from moecast.agent.ingest.payloads import PayloadLimits
from moecast.agent.ingest.rejections import Rejection

from tests.agent.writer_kit import WriterKit

NOW = 1_764_000_000.0


def test_too_old_readings_name_max_age_s(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kit = WriterKit(tmp_path)
    month_ago = NOW - 30 * 86_400
    history = [{"ts": month_ago + 3600 * i, "value": 1.0} for i in range(3)]
    try:
        with caplog.at_level(logging.WARNING, logger="moecast.agent.ingest.writer"):
            kit.feed("hall/temp", history, NOW)
    finally:
        kit.close()
    [line] = [r.getMessage() for r in caplog.records if "too_old" in r.getMessage()]
    assert "rejected 3 reading(s) on hall/temp: too_old" in line
    assert "limits.payload.max_age_s = 604800" in line
    assert "ingest.log_interval_s" in line


def test_a_whole_message_rejection_says_so() -> None:
    limits = PayloadLimits()
    line = str(Rejection("too_many_readings", 1, "a/b", limits, 60.0))
    assert line.startswith("rejected a whole message on a/b: too_many_readings")
    assert "limits.payload.max_readings = 10000" in line
    assert str(Rejection("not_json", 1, "a/b", limits, 60.0)).startswith(
        "rejected a whole message on a/b: not_json;"
    )
    assert "limits.payload.max_future_s" in str(Rejection("too_far_future", 2, "a/b", limits, 1))
