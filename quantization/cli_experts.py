"""`moecast experts`: which experts fire for which kinds of series, on your data.

    moecast experts --checkpoint model/weights/edge --data site.csv --out experts/

Cuts every series of DATA (a CSV or Parquet file, or a folder of them) into context windows,
measures each window's trend, seasonality, period, noise and gaps, routes it through the
checkpoint, and reports per layer the mean token share of each expert in every feature bin:
printed, and in OUT as experts.json, expert_usage.csv (the table, long format), windows.csv (one
row per window) and experts.png (a heatmap per layer). The same routing statistics drive
`moecast export --calibration` pruning.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
from moecast.model.checkpoint import load_checkpoint
from moecast.model.data.corpus import CorpusError, load_site_series
from moecast.quantization.experts_report import (
    format_table,
    plot_usage,
    usage_by_bin,
    usage_json,
    write_json,
    write_usage_csv,
    write_windows_csv,
)
from moecast.quantization.routing import collect_routing
from moecast.quantization.series_features import series_features
from moecast.quantization.site_data import context_windows

DEFAULT_WINDOWS_PER_SERIES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument(
        "--data", required=True, type=Path, help="CSV/Parquet file, or a folder of them"
    )
    parser.add_argument("--out", required=True, type=Path, help="directory for the report files")
    parser.add_argument(
        "--windows-per-series",
        type=int,
        default=DEFAULT_WINDOWS_PER_SERIES,
        help=f"context windows from the end of each series (default {DEFAULT_WINDOWS_PER_SERIES})",
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        return _fail(
            "the plot needs matplotlib, in the 'export' extra: pip install 'moecast[export]'"
        )
    if args.windows_per_series < 1:
        return _fail("--windows-per-series must be >= 1")
    if not args.checkpoint.is_dir():
        return _fail(f"no checkpoint at {args.checkpoint}")
    try:
        model = load_checkpoint(args.checkpoint)
        series = load_site_series(args.data)
    except (OSError, CorpusError, ValueError) as err:
        return _fail(str(err))
    if not model.config.is_sparse:
        return _fail(f"{args.checkpoint} is a dense model: it has no experts to report on")

    names, windows = [], []
    for s in series:
        cut = context_windows([s.values], model.config.context_length, args.windows_per_series)
        names += [s.name] * len(cut)
        windows += list(cut)
    stats = collect_routing(model, np.stack(windows))
    features = [series_features(window) for window in windows]
    usage = usage_by_bin(features, stats)

    args.out.mkdir(parents=True, exist_ok=True)
    document = {"checkpoint": str(args.checkpoint), "data": str(args.data), "series": len(series)}
    written = [
        write_json({**document, **usage_json(usage, stats)}, args.out / "experts.json"),
        write_usage_csv(usage, stats.kept_experts, args.out / "expert_usage.csv"),
        write_windows_csv(names, features, stats, args.out / "windows.csv"),
        plot_usage(usage, stats.kept_experts, args.out / "experts.png"),
    ]
    print(f"{len(series)} series, {len(windows)} windows of {model.config.context_length} points")
    print(format_table(usage, stats.kept_experts))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
