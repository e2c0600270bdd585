"""Sensor short-horizon zero-shot benchmark against statsforecast baselines.

    pip install 'moecast[train,bench]'
    python benchmarks/zero_shot_sensor.py                                   # shipped weights
    python benchmarks/zero_shot_sensor.py --model dense=runs/dense/last --windows 8
    python benchmarks/zero_shot_sensor.py --hold-ablation --no-baselines --sources pretrain

Real sensor series never trained on (NAB realKnownCause and realTraffic, UCI occupancy and
air quality), raw scale, horizons 1, 8, 32, 64. For each series, `--windows` forecast origins
spread over its last 40 %; each model sees the same 512-point context, with 0 %, 10 % and 30 %
of the readings dropped at random (baselines get the gaps linearly interpolated). Scores:
MASE (scaled by the seasonal-naive error of the undamaged context) averaged over each series'
windows, and the weighted quantile loss (CRPS proxy) pooled over each series' windows; each
then summarised by the geometric mean over series (as Chronos aggregates over datasets), so a
series whose targets are near zero or flat cannot dominate the table. Scores are floored at
`SCORE_FLOOR` (a thousandth of the naive error) before the geometric mean: an exact forecast of a
flat stretch (an idle relay, an empty room) counts as that floor for every model alike, instead
of being left out or, at 1e-9, outweighing every other series.

`--hold-ablation` adds the same checkpoint without hold decoding (`network.hold_decode`);
`--sources pretrain` scores the pretraining series instead (seen in training: only for
comparisons between decodings of one model, never against the benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from moecast.model.baselines import statsforecast_baselines
from moecast.model.checkpoint import load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.data.corpus import (
    PRETRAIN_SOURCES,
    SENSOR_BENCHMARK_SOURCES,
    default_data_root,
    load_corpus,
)
from moecast.model.forecast import Forecaster
from moecast.model.metrics import geometric_mean, mae, seasonal_scale, weighted_quantile_loss

HORIZONS = (1, 8, 32, 64)
DROPS = (0.0, 0.1, 0.3)
SCORE_FLOOR = 1e-3


def season_of(interval_s: float | None, context: int) -> int:
    """The daily period in points when the context holds two of them, else 1 (none)."""
    if not interval_s:
        return 1
    daily = round(86_400 / interval_s)
    return daily if daily > 1 and 2 * daily <= context else 1


def origins(values: np.ndarray, context: int, n: int) -> list[int]:
    first = max(context, int(values.size * 0.6))
    last = values.size - max(HORIZONS)
    if last <= first:
        return []
    candidates = np.linspace(first, last, n).astype(int)
    good = [
        t
        for t in candidates
        if np.isfinite(values[t - context : t]).mean() >= 0.5
        and np.isfinite(values[t : t + max(HORIZONS)]).mean() >= 0.5
    ]
    return sorted(set(good))


def print_win_rates(mase_of: dict, names: list[str], drop: float) -> None:
    """Share of series on which the first model's MASE is lower than each other model's: unlike
    the geometric mean, it does not hinge on how exact forecasts of flat stretches are."""
    first, others = names[0], names[1:]
    for other in others:
        shares = [
            np.mean(np.array(mase_of[first, drop, h]) < np.array(mase_of[other, drop, h]))
            for h in HORIZONS
        ]
        print(
            f"  {first} better than {other:<13} on "
            + ", ".join(f"{share:.0%}" for share in shares)
            + " of series"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT, repeatable")
    parser.add_argument("--windows", type=int, default=4, help="forecast origins per series")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument(
        "--hold-ablation", action="store_true", help="also score the model without hold decoding"
    )
    parser.add_argument("--sources", choices=("sensor", "pretrain"), default="sensor")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/zero_shot_sensor.json")
    )
    args = parser.parse_args()

    root = args.data_root or default_data_root()
    if not (root / "nab").is_dir():
        print(f"no benchmark data under {root} (set MOECAST_DATA)", file=sys.stderr)
        return 2
    models = {"moecast": Forecaster.from_pretrained(args.checkpoint)}
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = Forecaster.from_pretrained(path)
    if args.hold_ablation:
        models["no-hold"] = Forecaster(load_checkpoint(args.checkpoint, hold_decoding=False))

    sources = SENSOR_BENCHMARK_SOURCES if args.sources == "sensor" else PRETRAIN_SOURCES
    series = load_corpus(root, sources)
    print(f"$ python {' '.join(sys.argv)}")
    # (model, drop, horizon) -> one score per series
    mase_of: dict[tuple, list[float]] = defaultdict(list)
    wql_of: dict[tuple, list[float]] = defaultdict(list)
    n_windows, started = 0, time.perf_counter()
    labels: list[str] = []  # the series, in the order of each score list
    rng = np.random.default_rng(args.seed)
    for s in series:
        season = season_of(s.interval_s, args.context)
        starts = origins(s.values.astype(np.float64), args.context, args.windows)
        if not starts:
            continue
        contexts = np.stack([s.values[t - args.context : t] for t in starts]).astype(np.float64)
        targets = np.stack([s.values[t : t + max(HORIZONS)] for t in starts]).astype(np.float64)
        scales = np.array([seasonal_scale(c, season) for c in contexts])
        usable = np.isfinite(scales) & (scales > 0)
        if not usable.any():
            continue
        contexts, targets, scales = contexts[usable], targets[usable], scales[usable]
        n_windows += len(contexts)
        labels.append(f"{s.source}:{s.name}")
        forecasters = dict(models)
        if not args.no_baselines:
            forecasters |= {b.name: b for b in statsforecast_baselines(season, args.context)}
        for drop in DROPS:
            damaged = contexts.copy()
            damaged[rng.random(damaged.shape) < drop] = np.nan
            for name, forecaster in forecasters.items():
                if name in models:
                    per_h = {h: forecaster.predict(damaged, h) for h in HORIZONS}
                else:  # statistical paths do not depend on h: forecast once, read prefixes
                    full = forecaster.predict(damaged, max(HORIZONS))
                    per_h = {h: full.head(h) for h in HORIZONS}
                for h, fc in per_h.items():
                    y = targets[:, :h]
                    seen = np.isfinite(y).any(axis=1)
                    errors = [mae(fc.median[i], y[i]) / scales[i] for i in np.flatnonzero(seen)]
                    mase_of[name, drop, h].append(float(np.mean(errors)))
                    if np.nansum(np.abs(y)) > 0:
                        wql_of[name, drop, h].append(
                            weighted_quantile_loss(fc.quantiles, y, fc.levels)
                        )
        print(
            f"  {s.source}:{s.name.split('/')[-1]}  {len(contexts)} windows, season {season}",
            flush=True,
        )

    names = list(models) + (
        [] if args.no_baselines else ["Naive", "SeasonalNaive", "AutoETS", "AutoTheta"]
    )
    rows = []
    print(f"\n{len(series)} series, {n_windows} windows, {time.perf_counter() - started:.0f} s")
    for drop in DROPS:
        print(f"\nMASE / WQL (geometric means over series), {drop:.0%} of readings dropped")
        print(f"{'model':<14}" + "".join(f"{'h=' + str(h):>16}" for h in HORIZONS))
        for name in names:
            cells = []
            for h in HORIZONS:
                m = geometric_mean(mase_of[name, drop, h], SCORE_FLOOR)
                w = geometric_mean(wql_of[name, drop, h], SCORE_FLOOR)
                rows.append({"model": name, "drop": drop, "horizon": h, "gmean_mase": m, "wql": w})
                cells.append(f"{m:>8.3f} / {w:.3f}")
            print(f"{name:<14}" + "".join(f"{c:>16}" for c in cells))
        print_win_rates(mase_of, names, drop)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "windows": n_windows,
                "rows": rows,
                "series": labels,
                "mase_per_series": {f"{n}|{d}|{h}": v for (n, d, h), v in mase_of.items()},
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
