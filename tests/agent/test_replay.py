"""Replay and backfill end to end: `moecast replay` publishes a month of hourly readings with
their old timestamps to a real mosquitto, and the agent forecasts from the last of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.replay import load_recording, safe_name
from moecast.agent.runtime import Agent

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle
from moecast.cli import main
from tests.agent.conftest import Broker, Client, stored_count, wait_for
from tests.agent.test_forecaster import build_nano_bundle

DAY = 86_400.0


@pytest.fixture(scope="module")
def nano_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nano_bundle(tmp_path_factory.mktemp("bundle") / "nano", 0, 1)


def month_csv(path: Path, days_ago: float) -> tuple[Path, float]:
    """30 days of hourly readings ending `days_ago` days back; returns the file, last ts."""
    end = (int(time.time() // 3600) * 3600) - days_ago * DAY
    ts = end - 3600.0 * np.arange(30 * 24)[::-1]
    frame = pd.DataFrame(
        {
            "No": np.arange(1, ts.size + 1),  # a row number: not a stream, not the time
            "time": pd.to_datetime(ts, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            "temp": 20 + 3 * np.sin(2 * np.pi * np.arange(ts.size) / 24),
            "humidity (%)": 50 + np.cos(np.arange(ts.size) / 10),
        }
    )
    frame.to_csv(path, index=False)
    return path, float(ts[-1])


def test_a_recording_is_read_with_its_time_axis_and_safe_names(tmp_path: Path) -> None:
    path, last = month_csv(tmp_path / "hall.csv", 40)
    recording = load_recording(path)
    assert [s.sensor for s in recording.series] == ["temp", "humidity"]
    assert recording.ts[-1] == last
    assert safe_name("pm2.5") == "pm2.5"
    assert safe_name("PRES (hPa)") == "PRES_hPa"


def test_replayed_history_is_forecast_from_its_last_reading(
    start_agent: Callable[..., Agent],
    nano_bundle_dir: Path,
    broker: Broker,
    client_factory: Callable[[str], Client],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bundle = load_bundle(nano_bundle_dir, [DEV_PUBLIC_KEY])
    start_agent(
        on_tick_for=lambda settings: Forecaster(bundle, settings),
        limits={"payload": {"max_age_s": 90 * DAY}},
        # A stream is stale 3 s after its readings stopped arriving: the replay counts as
        # arrival, the readings' month-old event times do not.
        forecast={"cadence_s": 0.5, "stale_after_s": 3},
    )
    watcher = client_factory("watcher")
    watcher.subscribe("forecasts/#")
    path, last = month_csv(tmp_path / "hall.csv", 40)
    with caplog.at_level(logging.INFO, logger="moecast.agent.forecast.tick"):
        assert main(["replay", str(path), "--broker", broker.url, "--batch", "100"]) == 0

        # A tick may fall inside the replay and forecast from part of the history (seen on a
        # loaded machine); the forecast that counts is the one after the last reading.
        def from_last() -> list[dict]:
            messages = watcher.messages_on("forecasts/hall/temp")
            return [f for f in map(orjson.loads, messages) if f["grid_end"] == last]

        payload = wait_for(from_last, 10, "a forecast from the last reading")[0]
        assert payload["interval_s"] == 3600.0
        assert payload["horizons"]["1"]["ts"] == [last + 3600.0]

        def stale_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "hall/temp" in r.getMessage()]

        wait_for(stale_lines, 10, "the stale stream to be logged")
        time.sleep(2)  # four more ticks: still one line
    [line] = stale_lines()
    assert "no reading arrived" in line
    assert "forecast.stale_after_s" in line
    # Published once per origin: the ticks before it went stale did not repeat it.
    assert len(watcher.messages_on("forecasts/hall/temp")) == 1
    assert watcher.messages_on("forecasts/hall/No") == []


def test_history_older_than_max_age_is_rejected_naming_the_setting(
    start_agent: Callable[..., Agent],
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = start_agent()
    path, _ = month_csv(tmp_path / "hall.csv", 40)
    with caplog.at_level(logging.WARNING, logger="moecast.agent.ingest.writer"):
        assert main(["replay", str(path), "--broker", broker.url, "--columns", "temp"]) == 0
        wait_for(
            lambda: agent.metrics.snapshot()["rejected"].get("too_old") == 30 * 24,
            10,
            "every reading rejected as too_old",
        )
    assert stored_count(agent.settings.readings_db) == 0
    lines = [r.getMessage() for r in caplog.records if "too_old" in r.getMessage()]
    assert lines
    assert "limits.payload.max_age_s" in lines[0]


def test_shift_to_now_brings_an_old_recording_up_to_the_clock(
    start_agent: Callable[..., Agent], broker: Broker, tmp_path: Path, capsys: Any
) -> None:
    """A recording from a year ago, shifted: its last week is within the default max_age_s."""
    agent = start_agent()
    path, _ = month_csv(tmp_path / "hall.csv", 400)
    argv = ["replay", str(path), "--broker", broker.url, "--shift-to-now", "--columns", "temp"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "published 720 readings" in out
    assert "note: the oldest reading will be 30 days old" in out

    def accounted() -> int:
        return stored_count(agent.settings.readings_db) + agent.metrics.snapshot()["rejected"].get(
            "too_old", 0
        )

    wait_for(lambda: accounted() == 720, 10, "every reading stored or rejected")
    assert 7 * 24 - 2 <= stored_count(agent.settings.readings_db) <= 7 * 24 + 1


def test_replay_errors_are_one_clear_line(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "plain.csv"
    pd.DataFrame({"No": [1, 2, 3], "v": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    assert main(["replay", str(path)]) == 2
    assert "no time column found" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
