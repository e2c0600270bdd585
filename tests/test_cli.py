"""The `moecast` command: lazy subcommands, the missing-extra message, `moecast forecast`."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from moecast.cli import main


def run_without(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where importing `module` fails, as on an edge install."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # makes `import {module}` raise ImportError
        from moecast.cli import main
        code = main({argv!r})
        assert {module!r} not in sys.modules or sys.modules[{module!r}] is None
        sys.exit(code)
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_lists_commands_without_importing_torch():
    done = run_without("torch", ["--help"])
    assert done.returncode == 0, done.stderr
    assert "forecast" in done.stdout


def test_a_command_that_needs_torch_names_the_extra():
    done = run_without("torch", ["forecast", "--csv", "x.csv", "--column", "a"])
    assert done.returncode == 3
    assert "pip install 'moecast[train]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture
def hourly_csv(tmp_path):
    t = pd.date_range("2024-01-01", periods=300, freq="h")
    values = 20 + 5 * np.sin(np.arange(300) * 2 * np.pi / 24)
    path = tmp_path / "site.csv"
    pd.DataFrame({"time": t, "temp": values, "label": "x"}).to_csv(path, index=False)
    return path


@pytest.fixture
def nano_checkpoint(tmp_path):
    torch = pytest.importorskip("torch", reason="needs the 'train' extra")
    from moecast.model.checkpoint import save_checkpoint
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(0)
    return save_checkpoint(MoecastModel(preset("nano")), tmp_path / "nano")


def test_forecast_a_csv_column(hourly_csv, nano_checkpoint, tmp_path, capsys):
    out = tmp_path / "forecast.csv"
    argv = ["forecast", "--csv", str(hourly_csv), "--column", "temp", "--horizon", "40"]
    code = main([*argv, "--checkpoint", str(nano_checkpoint), "--holdout", "48", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out 40 points: MAE" in printed
    table = pd.read_csv(out, parse_dates=["timestamp"])
    assert len(table) == 40
    # The held-out block starts right after the visible history, hour by hour.
    assert table["timestamp"].iloc[0] == pd.Timestamp("2024-01-11 12:00")
    assert (table["timestamp"].diff().dropna() == pd.Timedelta("1h")).all()
    quantiles = table[[c for c in table.columns if c.startswith("q")]].to_numpy()
    assert (np.diff(quantiles, axis=1) >= 0).all()
    assert np.isfinite(table["actual"]).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--column", "nope"], "has no column 'nope'"),
        (["--column", "temp", "--holdout", "999"], "--holdout must be between"),
        (["--column", "label"], "column 'label' .* has no numeric values"),
    ],
)
def test_forecast_errors_are_one_clear_line(hourly_csv, nano_checkpoint, capsys, extra, message):
    code = main(
        ["forecast", "--csv", str(hourly_csv), "--checkpoint", str(nano_checkpoint), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:")
    assert re.search(message, err)


def test_forecast_reads_split_date_columns_not_the_row_number(nano_checkpoint, tmp_path, capsys):
    """The Beijing PM2.5 layout: `No` is an integer row number; the time is in four columns."""
    t = pd.date_range("2014-01-01", periods=200, freq="h")
    frame = pd.DataFrame(
        {
            "No": np.arange(1, 201),
            "year": t.year,
            "month": t.month,
            "day": t.day,
            "hour": t.hour,
            "TEMP": 5 + np.sin(np.arange(200) / 4),
        }
    )
    path = tmp_path / "beijing.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "forecast.csv"
    argv = ["forecast", "--csv", str(path), "--column", "TEMP", "--horizon", "8"]
    assert main([*argv, "--checkpoint", str(nano_checkpoint), "--out", str(out)]) == 0
    assert "time from year+month+day+hour" in capsys.readouterr().out
    table = pd.read_csv(out, parse_dates=["timestamp"])
    assert table["timestamp"].iloc[0] == pd.Timestamp("2014-01-09 08:00")


def test_forecast_names_a_bad_time_column(hourly_csv, nano_checkpoint, capsys):
    argv = ["forecast", "--csv", str(hourly_csv), "--column", "temp", "--time-column", "temp"]
    assert main([*argv, "--checkpoint", str(nano_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "does not hold dates" in err


def test_forecast_plots_the_history_and_the_interval(hourly_csv, nano_checkpoint, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    png = tmp_path / "forecast.png"
    argv = ["forecast", "--csv", str(hourly_csv), "--column", "temp", "--horizon", "8"]
    assert main([*argv, "--checkpoint", str(nano_checkpoint), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_plot_without_matplotlib_names_the_extra(
    hourly_csv, nano_checkpoint, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    argv = ["forecast", "--csv", str(hourly_csv), "--column", "temp", "--plot", "x.png"]
    assert main([*argv, "--checkpoint", str(nano_checkpoint)]) == 2
    assert "moecast[demo]" in capsys.readouterr().err
