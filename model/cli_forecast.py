"""`moecast forecast`: forecast one column of a CSV file and print (or save) the quantiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from moecast.model.forecast import Forecast, Forecaster

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
        "--time-column", help="timestamp column (default: the first column, if it holds dates)"
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hide the last N points, forecast them and score the forecast against them",
    )
    parser.add_argument("--out", type=Path, help="write the forecast to this CSV file")
    parser.add_argument("--rows", type=int, default=12, help="forecast rows to print")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _timestamps(frame: pd.DataFrame, column: str | None) -> pd.Series | None:
    candidate = column or frame.columns[0]
    if candidate not in frame.columns:
        raise KeyError(candidate)
    parsed = pd.to_datetime(frame[candidate], errors="coerce", format="mixed")
    if column is None and parsed.notna().mean() < 0.9:
        return None  # the first column is not a time axis
    return parsed


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
    try:
        frame = pd.read_csv(args.csv)
    except (OSError, ValueError) as err:
        return _fail(f"cannot read {args.csv}: {err}")
    if args.column not in frame.columns:
        return _fail(f"{args.csv} has no column {args.column!r}; columns: {list(frame.columns)}")
    try:
        times = _timestamps(frame, args.time_column)
    except KeyError:
        return _fail(f"{args.csv} has no time column {args.time_column!r}")
    values = pd.to_numeric(frame[args.column], errors="coerce").to_numpy(
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
        f"({forecaster.config.name} model, heads {'+'.join(map(str, forecast.steps))})"
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
    return 0
