"""`moecast forecast`: forecast one column of a CSV file and print (or save, or plot) the
quantiles. The time axis is found by `moecast.csvtime` (or named with `--time-column`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from moecast.model.forecast import Forecast, Forecaster

from moecast.csvtime import TimeColumnError, find_time_axis, read_csv_columns

SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "edge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, type=Path, help="CSV file (.csv or .csv.gz)")
    parser.add_argument("--column", required=True, help="the column to forecast")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=SHIPPED_WEIGHTS,
        help="checkpoint directory (default: the shipped edge weights)",
    )
    parser.add_argument("--horizon", type=int, default=96, help="steps ahead (default 96)")
    parser.add_argument(
        "--time-column",
        help="timestamp column (default: detected: split year/month/day[/hour] columns, a "
        "date and a time column, or the first column of dates; never a row number)",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hide the last N points, forecast them and score the forecast against them",
    )
    parser.add_argument("--out", type=Path, help="write the forecast to this CSV file")
    parser.add_argument("--rows", type=int, default=12, help="forecast rows to print")
    parser.add_argument(
        "--plot",
        type=Path,
        help="draw the recent history, the median and the 80%% interval to this PNG "
        "(needs matplotlib: the 'demo' extra)",
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _timestamps(columns: dict[str, list[str]], name: str | None) -> tuple[pd.Series | None, str]:
    """Each row's time (NaT where it did not parse) and how it was found. Raises
    TimeColumnError for a named column that is missing or holds no times."""
    axis = find_time_axis(columns, name)
    if axis is None:
        return None, "no time column found: steps are numbered (name one with --time-column)"
    times = pd.Series(pd.to_datetime(axis.ts, unit="s", errors="coerce"))
    return times, f"time from {axis.describe()}"


def _future_index(times: pd.Series | None, horizon: int) -> pd.Index:
    if times is None or times.notna().sum() < 2:
        return pd.RangeIndex(1, horizon + 1, name="step")
    step = times.dropna().diff().median()
    last = times.dropna().iloc[-1]
    return pd.DatetimeIndex([last + step * (k + 1) for k in range(horizon)], name="timestamp")


def _table(forecast: Forecast, index: pd.Index, actual: np.ndarray | None) -> pd.DataFrame:
    columns = {
        f"q{round(q * 100):02d}": forecast.quantiles[0, :, i] for i, q in enumerate(forecast.levels)
    }
    table = pd.DataFrame(columns, index=index)
    if actual is not None:
        table["actual"] = actual
    return table


def run(args: argparse.Namespace) -> int:
    if not args.checkpoint.exists():
        return _fail(f"no checkpoint at {args.checkpoint}; pass --checkpoint DIR")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        return _fail("--plot needs matplotlib, in the 'demo' extra: pip install 'moecast[demo]'")
    try:
        columns = read_csv_columns(args.csv)
    except (OSError, ValueError) as err:
        return _fail(f"cannot read {args.csv}: {getattr(err, 'strerror', None) or err}")
    if args.column not in columns:
        return _fail(f"{args.csv} has no column {args.column!r}; columns: {list(columns)}")
    try:
        times, time_source = _timestamps(columns, args.time_column)
    except TimeColumnError as err:
        return _fail(f"{args.csv}: --time-column: {err}")
    values = pd.to_numeric(pd.Series(columns[args.column]), errors="coerce").to_numpy(
        dtype=np.float64, copy=True
    )
    values[~np.isfinite(values)] = np.nan
    if np.isnan(values).all():
        return _fail(f"column {args.column!r} of {args.csv} has no numeric values")

    horizon, actual = args.horizon, None
    if args.holdout:
        if not 0 < args.holdout < values.size:
            return _fail(f"--holdout must be between 1 and {values.size - 1}")
        actual = values[-args.holdout :][:horizon]
        horizon = min(horizon, args.holdout)
        values = values[: -args.holdout]
        times = times.iloc[: -args.holdout] if times is not None else None

    forecaster = Forecaster.from_pretrained(args.checkpoint)
    try:
        forecast = forecaster.predict(values, horizon)
    except ValueError as err:
        return _fail(str(err))

    table = _table(forecast, _future_index(times, horizon), actual)
    context = min(np.isfinite(values).sum(), forecaster.config.context_length)
    print(
        f"{args.csv.name}:{args.column}  {horizon} steps ahead from {context} points of context "
        f"({forecaster.config.name} model, heads {'+'.join(map(str, forecast.steps))}); "
        f"{time_source}"
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.head(args.rows).round(4).to_string())
    if len(table) > args.rows:
        print(f"... {len(table) - args.rows} more rows")
    if actual is not None:
        last = values[np.isfinite(values)][-1]
        mae = np.nanmean(np.abs(forecast.median[0] - actual))
        naive = np.nanmean(np.abs(last - actual))
        inside = np.nanmean(
            (forecast.quantile(0.1)[0] <= actual) & (actual <= forecast.quantile(0.9)[0])
        )
        print(
            f"held-out {horizon} points: MAE {mae:.4f} (last-value forecast {naive:.4f}); "
            f"{inside:.0%} inside the 80% interval"
        )
    if args.out:
        table.to_csv(args.out)
        print(f"wrote {args.out}")
    if args.plot:
        _plot(args.plot, f"{args.csv.name}: {args.column}", values, times, table, horizon)
        print(f"wrote {args.plot}")
    return 0


def _plot(
    path: Path,
    title: str,
    history: np.ndarray,
    times: pd.Series | None,
    table: pd.DataFrame,
    horizon: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    shown = min(history.size, 3 * horizon)
    past: pd.Index | np.ndarray = np.arange(-shown + 1, 1)
    if isinstance(table.index, pd.DatetimeIndex) and times is not None:
        past = pd.DatetimeIndex(times.iloc[-shown:])
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot(past, history[-shown:], color="black", linewidth=1, label="history")
    axes.fill_between(table.index, table["q10"], table["q90"], alpha=0.3, label="80% interval")
    axes.plot(table.index, table["q50"], label="median")
    if "actual" in table:
        axes.plot(table.index, table["actual"], color="grey", linewidth=1, label="held out")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
