from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from moecast.model.checkpoint import load_checkpoint, save_checkpoint
from moecast.model.finetune import finetune, training_windows

from moecast.cli import main


def test_windows_cover_the_series_with_the_stride_and_pad_short_ones():
    long, short = np.arange(100, dtype=np.float32), np.arange(30, dtype=np.float32)
    windows = training_windows([long, short], length=40, stride=20)
    assert len(windows) == len(range(0, 61, 20)) + 1
    np.testing.assert_array_equal(windows[1], np.arange(20, 60))
    assert np.isnan(windows[-1][:10]).all()
    np.testing.assert_array_equal(windows[-1][10:], short)


def test_no_observed_window_is_an_error():
    with pytest.raises(ValueError, match="no training window"):
        training_windows([np.full(50, np.nan)], length=40, stride=4)


def sine_series(n: int = 900) -> np.ndarray:
    t = np.arange(n)
    return 30 + 4 * np.sin(2 * math.pi * t / 24) + np.random.default_rng(0).normal(0, 0.3, n)


def test_finetuning_lowers_the_loss(nano):
    losses = finetune(nano, [sine_series()], epochs=3, batch_size=16, lr=3e-3, progress=False)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_finetune_command_saves_an_adapted_checkpoint(nano, tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(nano, tmp_path / "base")
    csv = tmp_path / "site.csv"
    times = pd.date_range("2024-01-01", periods=900, freq="h")
    pd.DataFrame({"time": times, "temp": sine_series()}).to_csv(csv, index=False)
    argv = ["finetune", "--checkpoint", str(tmp_path / "base"), "--data", str(csv)]
    assert main([*argv, "--out", str(tmp_path / "tuned"), "--lr", "3e-3"]) == 0
    assert "fine-tuned on 1 series" in capsys.readouterr().out
    tuned = load_checkpoint(tmp_path / "tuned")
    base = load_checkpoint(tmp_path / "base")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(tuned.state_dict().values(), base.state_dict().values(), strict=True)
    )


def test_finetune_command_missing_data_is_a_clear_error(tmp_path, capsys):
    argv = ["finetune", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "nope.csv")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
