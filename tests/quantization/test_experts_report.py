"""Series features, and `moecast experts`: the table, its files and the plot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from moecast.model.checkpoint import save_checkpoint
from moecast.quantization.series_features import FEATURES, series_features

from moecast.cli import main
from tests.quantization.helpers import site_series

T = np.arange(512)
RNG = np.random.default_rng(0)


def bins(window: np.ndarray) -> dict[str, str | None]:
    features = series_features(window)
    return {feature.name: feature.label(features) for feature in FEATURES}


def test_a_daily_cycle_is_strongly_seasonal_with_its_period():
    window = 5 * np.sin(2 * np.pi * T / 24) + RNG.normal(0, 0.3, T.size)
    assert series_features(window).period == 24
    assert bins(window) == {
        "trend": "weak",
        "seasonality": "strong",
        "period": "17-64",
        "noise": "low",
        "gaps": "none",
    }


def test_a_ramp_is_trend_and_white_noise_is_noise():
    assert bins(0.05 * T + RNG.normal(0, 0.3, T.size))["trend"] == "strong"
    noise = bins(RNG.normal(size=T.size))
    assert (noise["noise"], noise["seasonality"], noise["period"]) == ("high", "weak", "none")


def test_gaps_count_after_the_first_reading_only():
    window = np.sin(2 * np.pi * T / 12)
    window[:256] = np.nan  # a short history, not a gap
    window[300:320] = np.nan
    features = series_features(window)
    assert features.gap_share == pytest.approx(20 / 256)
    assert features.period == 12
    assert bins(window)["gaps"] == "some"


def test_too_few_readings_have_gaps_but_no_shape():
    window = np.full(64, np.nan)
    window[-5:] = [1.0, 2.0, 3.0, 2.0, 1.0]
    assert bins(window) == {
        "trend": None,
        "seasonality": None,
        "period": "none",
        "noise": None,
        "gaps": "none",
    }


def test_experts_command_writes_its_table_and_plot(nano, tmp_path, capsys):
    checkpoint = save_checkpoint(nano, tmp_path / "ckpt")
    data = tmp_path / "data"
    data.mkdir()
    for i, rows in enumerate([site_series(4, seed=1), site_series(2, length=300, seed=2)]):
        frame = pd.DataFrame({f"s{j}": row for j, row in enumerate(rows)})
        frame.insert(0, "timestamp", pd.date_range("2024-01-01", periods=len(rows[0]), freq="h"))
        frame.to_csv(data / f"site{i}.csv", index=False)
    out = tmp_path / "report"

    argv = ["experts", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--windows-per-series", "2"]) == 0
    printed = capsys.readouterr().out
    assert "6 series, 12 windows of 128 points" in printed
    assert "layer 1: token share per expert" in printed
    assert "seasonality:strong" in printed

    document = json.loads((out / "experts.json").read_text())
    assert document["routing"]["windows"] == 12
    trend_windows = sum(b["windows"] for b in document["bins"] if b["feature"] == "trend")
    assert trend_windows == 12
    with (out / "expert_usage.csv").open() as file:
        table = list(csv.DictReader(file))
    assert len(table) == len(document["bins"]) * 2 * 4  # bins x layers x experts
    for layer in ("0", "1"):
        shares = [
            float(r["token_share"])
            for r in table
            if r["layer"] == layer and r["bin"] == "none" and r["feature"] == "gaps"
        ]
        assert sum(shares) == pytest.approx(1.0)
    assert len((out / "windows.csv").read_text().splitlines()) == 1 + 12
    assert (out / "experts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experts_command_refuses_a_dense_checkpoint(tmp_path, capsys):
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    checkpoint = save_checkpoint(MoecastModel(preset("nano", n_experts=1, top_k=1)), tmp_path / "d")
    csv_path = tmp_path / "x.csv"
    pd.DataFrame({"v": np.sin(np.arange(200) / 3)}).to_csv(csv_path, index=False)
    argv = ["experts", "--checkpoint", str(checkpoint), "--data", str(csv_path)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "no experts to report on" in capsys.readouterr().err
