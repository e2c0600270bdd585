"""Sensor short-horizon zero-shot benchmark against statsforecast baselines, per kind of sensor.

    pip install 'moecast[train,bench,export]'
    python benchmarks/zero_shot_sensor.py                                 # shipped weights
    python benchmarks/zero_shot_sensor.py --bundle agent/default_bundle   # + the int8 bundle
    python benchmarks/zero_shot_sensor.py --bundle agent/default_bundle --no-checkpoint --quick
    python benchmarks/zero_shot_sensor.py --hold-ablation --no-baselines --sources pretrain

Series: `SENSOR_BENCHMARK_SERIES` (model/data/corpus.py), all held out from pretraining: NAB
realKnownCause and realTraffic, UCI occupancy and air quality, and continuous physical sensors
added so that sample-and-hold rooms do not carry the table: two TMY3 weather stations
(irradiance, temperature, dew point, humidity, wind, pressure; 1 h), an hourly PM2.5 / PM10 /
rain record (pvlib), the Jena weather station (10 min) and two transformer stations' loads and
oil temperature (ETTh1, 1 h; ETTm2, 15 min). Raw scale, horizons 1, 8, 32, 64. For each series,
`--windows` forecast origins (8; 1 with `--quick`) spread evenly over its last 40 %; every
forecaster sees the same 512-point context, with 0 % and 30 % of the readings dropped at random
(the baselines get the gaps linearly interpolated; the models see NaN).

Each series gets one class, from its history before the first forecast origin (its first
60 %, never the scored targets), cut into context-sized blocks (512 points, at least half
observed, or a tenth where no block is; gaps interpolated). In each block a classical
decomposition: trend = centred moving average over the daily period p (when two periods fit
in the context, as for SeasonalNaive), else over 25 points; seasonal = the mean of the
detrended block at each phase of p (none without p); remainder = the rest. The rules,
first match wins:

- `hold` (sample-and-hold): at least half of the observed consecutive pairs of the history
  repeat the previous reading exactly;
- `seasonal`: daily seasonal strength 1 - var(remainder) / var(seasonal + remainder) (Wang,
  Smith & Hyndman 2006), median over blocks, at least 0.6;
- `noisy`: remainder share var(remainder) / var(block), median over blocks, at least 0.25;
- `trending`: R^2 of a straight line through each block, median over blocks, at least 0.3;
- `smooth`: the rest (slow, low-noise changes without a daily cycle or a steady slope).

Thresholds were set from these features of the series alone, before any forecast was scored.

Scores per series: MASE (scaled by the seasonal-naive error of the undamaged context, season =
the daily period as above, else 1) averaged over its windows, and the weighted quantile loss
(WQL, a CRPS proxy) pooled over its windows. Reported, per horizon, for every model and
baseline, for each class and for all series: the geometric mean of MASE over series; the WQL
relative to SeasonalNaive (GIFT-Eval: each series' WQL over SeasonalNaive's on the same
series, then the geometric mean); and, for each model, the share of series on which its MASE is
strictly lower than each baseline's (ties, e.g. both exact on a flat stretch, are not wins;
their share is printed beside). Beside them a hindsight bound, per horizon: on each series the
lowest MASE among the baselines, and among each model and the baselines, as if the right one
had been picked for that series knowing its scores; the geometric mean over the best single
baseline's. It says how far choosing well among these forecasters could go on a class: where
even it stays near 1, the baselines are near one another and the series near their limit for
them.
Scores are floored at `SCORE_FLOOR` before logarithms: an exact forecast of a flat stretch
counts as that floor for every forecaster alike instead of being left out or dominating.
Then each class split by source dataset (NAB by category): the series count, each model's
geometric-mean MASE and its ratio to the best baseline there, so a class that is mostly one site
shows it. Lastly the series where the (first) model loses most against the best baseline on that
series.

`--bundle DIR` scores a signed ONNX bundle (verified with the development key) through ONNX
Runtime on one thread, as the agent runs it: raw values with NaN in, its h1/h8/h32/h64 heads out.
`--hold-ablation` adds the checkpoint without hold decoding (`network.hold_decode`);
`--sources pretrain` scores the pretraining series instead (seen in training: only for
comparisons between decodings of one model, never against the benchmark). Results go to
`--out` (JSON, with the command, the CPU, per-series features, classes and scores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from moecast.model.baselines import StatsBaseline, fill_gaps, statsforecast_baselines
from moecast.model.checkpoint import load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.data.corpus import (
    PRETRAIN_SOURCES,
    SENSOR_BENCHMARK_SERIES,
    Series,
    default_data_root,
    load_corpus,
    load_selection,
)
from moecast.model.forecast import Forecast, Forecaster
from moecast.model.metrics import geometric_mean, mae, seasonal_scale, weighted_quantile_loss
from timing import cpu_description

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle

HORIZONS = (1, 8, 32, 64)
DROPS = (0.0, 0.3)
BASELINES = ("Naive", "SeasonalNaive", "AutoETS", "AutoTheta")
SHORT = {"Naive": "N", "SeasonalNaive": "SN", "AutoETS": "ETS", "AutoTheta": "Theta"}
CLASSES = ("seasonal", "smooth", "noisy", "trending", "hold")
SCORE_FLOOR = 1e-3
WINDOWS = 8
HOLD_SHARE = 0.5
SEASONAL_STRENGTH = 0.6
NOISE_SHARE = 0.25
TREND_R2 = 0.3
NO_SEASON_WINDOW = 25  # trend window (points) of a block without a visible daily period
BLOCK_OBSERVED = 0.5
SPARSE_BLOCK_OBSERVED = 0.1
HISTORY_SHARE = 0.6  # forecast origins lie after it; classes are read before it
WORST_SHOWN = 10


class Predictor(Protocol):
    def __call__(self, contexts: np.ndarray) -> dict[int, Forecast]: ...


def season_of(interval_s: float | None, context: int) -> int:
    """The daily period in points when the context holds two of them, else 1 (none)."""
    if not interval_s:
        return 1
    daily = round(86_400 / interval_s)
    return daily if daily > 1 and 2 * daily <= context else 1


def origins(values: np.ndarray, context: int, n: int) -> list[int]:
    first = max(context, int(values.size * HISTORY_SHARE))
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


@dataclass(frozen=True)
class Features:
    repeat_share: float
    seasonal_strength: float
    noise_share: float
    trend_r2: float
    blocks: int

    @property
    def kind(self) -> str:
        if self.repeat_share >= HOLD_SHARE:
            return "hold"
        if self.seasonal_strength >= SEASONAL_STRENGTH:
            return "seasonal"
        if self.noise_share >= NOISE_SHARE:
            return "noisy"
        if self.trend_r2 >= TREND_R2:
            return "trending"
        return "smooth"


def features(values: np.ndarray, period: int, context: int) -> Features:
    """The classification features of one series' history (see the module docstring)."""
    history = values[: int(values.size * HISTORY_SHARE)].astype(np.float64)
    now, before = history[1:], history[:-1]
    pairs = np.isfinite(now) & np.isfinite(before)
    repeat = float(np.mean(now[pairs] == before[pairs])) if pairs.any() else 0.0
    window = period if period > 1 else NO_SEASON_WINDOW
    blocks = [history[i : i + context] for i in range(0, history.size - context + 1, context)]
    observed = np.array([np.isfinite(b).mean() for b in blocks])
    # Sparse sensors (NAB traffic) may have no half-observed block: then every block with a
    # tenth observed rather than no class at all.
    enough = BLOCK_OBSERVED if (observed >= BLOCK_OBSERVED).any() else SPARSE_BLOCK_OBSERVED
    per_block = []
    for block, share in zip(blocks, observed, strict=True):
        found = _block_features(fill_gaps(block), period, window) if share >= enough else None
        if found is not None:
            per_block.append(found)
    if not per_block:
        return Features(repeat, float("nan"), float("nan"), float("nan"), 0)
    strength, noise, r2 = np.median(np.array(per_block), axis=0)
    return Features(repeat, float(strength), float(noise), float(r2), len(per_block))


def _block_features(x: np.ndarray, period: int, window: int) -> tuple[float, float, float] | None:
    """(seasonal strength, remainder share, straight-line R^2) of one block; None if flat."""
    trend = np.convolve(x, np.ones(window) / window, mode="valid")
    offset = (window - 1) // 2
    centred = x[offset : offset + trend.size]
    if centred.var() == 0:
        return None
    detrended = centred - trend
    if period > 1:
        phase = (np.arange(detrended.size) + offset) % period
        seasonal = (np.bincount(phase, detrended) / np.bincount(phase))[phase]
    else:
        seasonal = np.zeros_like(detrended)
    remainder = detrended - seasonal
    strength = max(0.0, 1.0 - remainder.var() / (seasonal + remainder).var()) if period > 1 else 0.0
    noise = remainder.var() / centred.var()
    r2 = np.corrcoef(np.arange(x.size), x)[0, 1] ** 2
    return float(strength), float(noise), float(r2)


def torch_predictor(forecaster: Forecaster) -> Predictor:
    return lambda contexts: {h: forecaster.predict(contexts, h) for h in HORIZONS}


def bundle_predictor(path: Path) -> Predictor:
    """An ONNX bundle as the agent runs it: one thread, all heads from one run."""
    bundle = load_bundle(path, [DEV_PUBLIC_KEY], threads=1)
    length, levels = bundle.manifest.context_length, tuple(bundle.manifest.quantiles)

    def predict(contexts: np.ndarray) -> dict[int, Forecast]:
        values = np.full((len(contexts), length), np.nan, dtype=np.float32)
        tail = contexts[:, -length:]
        values[:, length - tail.shape[1] :] = tail
        outputs = bundle.run(values)
        return {h: Forecast(outputs[f"h{h}"].astype(np.float64), levels, (h,)) for h in HORIZONS}

    return predict


def baseline_predictor(baseline: StatsBaseline) -> Predictor:
    # Statistical paths do not depend on h: forecast once, read prefixes.
    def predict(contexts: np.ndarray) -> dict[int, Forecast]:
        full = baseline.predict(contexts, max(HORIZONS))
        return {h: full.head(h) for h in HORIZONS}

    return predict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="do not score --checkpoint in PyTorch"
    )
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="ONNX bundle")
    parser.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT, repeatable")
    parser.add_argument("--windows", type=int, default=None, help=f"origins per series ({WINDOWS})")
    parser.add_argument("--quick", action="store_true", help="one window per series")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--drops", type=float, nargs="+", default=list(DROPS))
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument(
        "--hold-ablation", action="store_true", help="also score the model without hold decoding"
    )
    parser.add_argument("--sources", choices=("sensor", "pretrain"), default="sensor")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "zero_shot_sensor.json",
    )
    args = parser.parse_args()
    windows = args.windows or (1 if args.quick else WINDOWS)

    root = args.data_root or default_data_root()
    if not (root / "nab").is_dir():
        print(f"no benchmark data under {root} (set MOECAST_DATA)", file=sys.stderr)
        return 2
    models: dict[str, Predictor] = {}
    if not args.no_checkpoint:
        models["moecast"] = torch_predictor(Forecaster.from_pretrained(args.checkpoint))
    for path in args.bundle:
        name = "bundle" if len(args.bundle) == 1 else f"bundle:{path.name}"
        models[name] = bundle_predictor(path)
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = torch_predictor(Forecaster.from_pretrained(path))
    if args.hold_ablation:
        models["no-hold"] = torch_predictor(
            Forecaster(load_checkpoint(args.checkpoint, hold_decoding=False))
        )
    if not models:
        print("nothing to score: drop --no-checkpoint or add --bundle / --model", file=sys.stderr)
        return 2

    if args.sources == "sensor":
        series = load_selection(root, SENSOR_BENCHMARK_SERIES)
    else:
        series = load_corpus(root, PRETRAIN_SOURCES)
    cpu = f"{cpu_description()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    print(f"$ python {' '.join(sys.argv)}\ncpu: {cpu}\n{windows} windows per series\n")
    names = list(models) + ([] if args.no_baselines else list(BASELINES))
    # (forecaster, drop, horizon) -> one score per scored series, in the order of `scored`
    mase_of: dict[tuple, list[float]] = defaultdict(list)
    wql_of: dict[tuple, list[float]] = defaultdict(list)
    scored: list[dict] = []
    started = time.perf_counter()
    for index, s in enumerate(series):
        row = score_series(s, index, args, windows, models, mase_of, wql_of)
        if row is not None:
            scored.append(row)
            print(
                f"  {row['series']:<58} {row['class']:<9} {row['windows']} windows, "
                f"season {row['season']}",
                flush=True,
            )
    runtime = time.perf_counter() - started
    kinds = np.array([row["class"] for row in scored])
    print(
        f"\n{len(scored)} of {len(series)} series scored, "
        f"{sum(r['windows'] for r in scored)} windows, {runtime:.0f} s; classes: "
        + ", ".join(f"{k} {int(np.sum(kinds == k))}" for k in CLASSES)
    )

    rows, wins, vs_best, hindsight = [], [], [], []
    for drop in args.drops:
        for group in ("all", *CLASSES):
            chosen = np.ones(len(scored), bool) if group == "all" else kinds == group
            if not chosen.any():
                continue
            table = summarise(names, list(models), drop, group, chosen, mase_of, wql_of)
            rows += table["rows"]
            wins += table["wins"]
            vs_best += [
                {"model": m, "drop": drop, "group": group, "horizon": h, "best": b, "ratio": r}
                for m, per_h in table["vs_best"].items()
                for h, (b, r) in zip(HORIZONS, per_h, strict=True)
            ]
            hindsight += [
                {"members": label, "drop": drop, "group": group, "horizon": h, "ratio": r}
                for label, per_h in table["hindsight"].items()
                for h, r in zip(HORIZONS, per_h, strict=True)
            ]
            print_group(group, int(chosen.sum()), drop, table)
    by_source = sources_within_classes(scored, names, list(models), args.drops[0], mase_of)
    worst = {
        model: worst_series(scored, model, args.drops[0], mase_of)
        for model in ([] if args.no_baselines else models)
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python " + " ".join(sys.argv),
                "cpu": cpu,
                "windows_per_series": windows,
                "runtime_s": runtime,
                "rules": {
                    "hold_share": HOLD_SHARE,
                    "seasonal_strength": SEASONAL_STRENGTH,
                    "noise_share": NOISE_SHARE,
                    "trend_r2": TREND_R2,
                },
                "series": scored,
                "rows": rows,
                "wins": wins,
                "vs_best_baseline": vs_best,
                "hindsight_vs_best_baseline": hindsight,
                "worst": worst,
                "sources_within_classes": by_source,
                "mase_per_series": {f"{n}|{d}|{h}": v for (n, d, h), v in mase_of.items()},
                "wql_per_series": {f"{n}|{d}|{h}": v for (n, d, h), v in wql_of.items()},
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


def score_series(
    s: Series,
    index: int,
    args: argparse.Namespace,
    windows: int,
    models: dict[str, Predictor],
    mase_of: dict[tuple, list[float]],
    wql_of: dict[tuple, list[float]],
) -> dict | None:
    """Score every forecaster on one series, appending to the score lists; None if unusable."""
    season = season_of(s.interval_s, args.context)
    values = s.values.astype(np.float64)
    starts = origins(values, args.context, windows)
    if not starts:
        return None
    contexts = np.stack([values[t - args.context : t] for t in starts])
    targets = np.stack([values[t : t + max(HORIZONS)] for t in starts])
    scales = np.array([seasonal_scale(c, season) for c in contexts])
    usable = np.isfinite(scales) & (scales > 0)
    if not usable.any():
        return None
    contexts, targets, scales = contexts[usable], targets[usable], scales[usable]
    found = features(values, season, args.context)
    predictors = dict(models)
    if not args.no_baselines:
        predictors |= {
            b.name: baseline_predictor(b) for b in statsforecast_baselines(season, args.context)
        }
    # One generator per series: the dropped readings do not depend on which series or
    # forecasters came before.
    rng = np.random.default_rng([args.seed, index])
    for drop in args.drops:
        damaged = contexts.copy()
        damaged[rng.random(damaged.shape) < drop] = np.nan
        for name, predict in predictors.items():
            for h, fc in predict(damaged).items():
                y = targets[:, :h]
                seen = np.flatnonzero(np.isfinite(y).any(axis=1))
                errors = [mae(fc.median[i], y[i]) / scales[i] for i in seen]
                mase_of[name, drop, h].append(float(np.mean(errors)))
                wql = (
                    weighted_quantile_loss(fc.quantiles[seen], y[seen], fc.levels)
                    if np.nansum(np.abs(y)) > 0
                    else float("nan")
                )
                wql_of[name, drop, h].append(wql)
    return {
        "series": f"{s.source}:{s.name.split('/', 1)[1]}",
        "interval_s": s.interval_s,
        "season": season,
        "windows": len(contexts),
        "class": found.kind,
        "repeat_share": found.repeat_share,
        "seasonal_strength": found.seasonal_strength,
        "noise_share": found.noise_share,
        "trend_r2": found.trend_r2,
        "blocks": found.blocks,
    }


def summarise(
    names: list[str],
    model_names: list[str],
    drop: float,
    group: str,
    chosen: np.ndarray,
    mase_of: dict[tuple, list[float]],
    wql_of: dict[tuple, list[float]],
) -> dict:
    """Rows (geometric-mean MASE, relative WQL) and win shares of one group at one drop."""
    rows, wins = [], []
    for name in names:
        for h in HORIZONS:
            mase = np.array(mase_of[name, drop, h])[chosen]
            rel_wql = float("nan")
            if "SeasonalNaive" in names:
                ours = np.maximum(np.array(wql_of[name, drop, h])[chosen], SCORE_FLOOR)
                theirs = np.maximum(np.array(wql_of["SeasonalNaive", drop, h])[chosen], SCORE_FLOOR)
                rel_wql = geometric_mean(ours / theirs)
            rows.append(
                {
                    "forecaster": name,
                    "drop": drop,
                    "group": group,
                    "horizon": h,
                    "series": int(chosen.sum()),
                    "gmean_mase": geometric_mean(mase, SCORE_FLOOR),
                    "rel_wql": rel_wql,
                }
            )
    for model in model_names:
        for baseline in (n for n in names if n not in model_names):
            for h in HORIZONS:
                ours = np.array(mase_of[model, drop, h])[chosen]
                theirs = np.array(mase_of[baseline, drop, h])[chosen]
                both = np.isfinite(ours) & np.isfinite(theirs)
                wins.append(
                    {
                        "model": model,
                        "baseline": baseline,
                        "drop": drop,
                        "group": group,
                        "horizon": h,
                        "share": float(np.mean(ours[both] < theirs[both])),
                        "tie_share": float(np.mean(ours[both] == theirs[both])),
                    }
                )
    vs_best: dict[str, list[tuple[str, float]]] = {}
    # Per horizon, what choosing per series (knowing the scores) among the baselines, and among
    # each model and the baselines, would give, over the best single baseline.
    hindsight: dict[str, list[float]] = {}
    baselines = [n for n in names if n not in model_names]
    choices = [("baselines", baselines)] + [
        (f"{m} + baselines", [m, *baselines]) for m in model_names
    ]
    for h in HORIZONS if baselines else []:
        mase = {r["forecaster"]: r["gmean_mase"] for r in rows if r["horizon"] == h}
        best = min(baselines, key=mase.__getitem__)
        for model in model_names:
            vs_best.setdefault(model, []).append((best, mase[model] / mase[best]))
        for label, members in choices:
            bound = hindsight_choice(mase_of, members, drop, h, chosen)
            hindsight.setdefault(label, []).append(bound / mase[best])
    return {"rows": rows, "wins": wins, "vs_best": vs_best, "hindsight": hindsight}


def hindsight_choice(
    mase_of: dict[tuple, list[float]], members: list[str], drop: float, h: int, chosen: np.ndarray
) -> float:
    """Geometric-mean MASE of the best of `members` on each series, chosen knowing its scores:
    a bound no per-series choice among them can pass."""
    scores = np.array([np.array(mase_of[m, drop, h], dtype=float)[chosen] for m in members])
    scores = np.where(np.isfinite(scores), scores, np.inf).min(0)
    return geometric_mean(np.where(np.isinf(scores), np.nan, scores), SCORE_FLOOR)


def print_group(group: str, n_series: int, drop: float, table: dict) -> None:
    print(f"\n== {group} ({n_series} series), {drop:.0%} of readings dropped ==")
    print(
        f"{'':<15}"
        + "".join(f"{'h=' + str(h):>17}" for h in HORIZONS)
        + "   (geometric-mean MASE / WQL relative to SeasonalNaive)"
    )
    cells: dict[str, list[str]] = defaultdict(list)
    for row in table["rows"]:
        cells[row["forecaster"]].append(f"{row['gmean_mase']:.3f} / {row['rel_wql']:.3f}")
    for name, texts in cells.items():
        print(f"{name:<15}" + "".join(f"{t:>17}" for t in texts))
    for model, per_h in table["vs_best"].items():
        print(
            f"{model + ' / best':<15}"
            + "".join(f"{f'{ratio:.3f} ({SHORT[best]})':>17}" for best, ratio in per_h)
            + "   (its MASE over the best baseline's, per horizon)"
        )
    for label, ratios in table["hindsight"].items():
        print(
            f"{'hindsight':<15}"
            + "".join(f"{r:>17.3f}" for r in ratios)
            + f"   (per series the best of {label}, picked in hindsight, over the best baseline)"
        )
    shares: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for win in table["wins"]:
        shares[win["model"], win["baseline"]].append((win["share"], win["tie_share"]))
    if shares:
        print("series won (strictly lower MASE), and tied where any:")
    for (model, baseline), pairs in shares.items():
        print(f"  {model + ' vs ' + baseline:<26}" + "".join(f"{w:>8.0%}" for w, _ in pairs))
        if any(t > 0 for _, t in pairs):
            print(f"  {'  tied':<26}" + "".join(f"{t:>8.0%}" for _, t in pairs))


def source_of(series: str) -> str:
    """The dataset a series comes from (NAB by category): one place, or one kind of place."""
    parts = series.split(":")[0].split("/")
    return "/".join(parts[:3]) if parts[0] == "nab" else parts[0]


def sources_within_classes(
    scored: list[dict],
    names: list[str],
    model_names: list[str],
    drop: float,
    mase_of: dict[tuple, list[float]],
) -> list[dict]:
    """Each class split by source (first `--drops`): a class's geometric mean can be one
    site's (the trending class is mostly one office's humidity and CO2), so every source's
    series count and geometric-mean MASE per forecaster, and the models' ratio to the best
    baseline there."""
    print(f"\n== sources within each class, {drop:.0%} of readings dropped ==")
    sources = np.array([source_of(row["series"]) for row in scored])
    kinds = np.array([row["class"] for row in scored])
    baselines = [n for n in names if n not in model_names]
    out = []
    for kind in CLASSES:
        for source in sorted(set(sources[kinds == kind])):
            chosen = (kinds == kind) & (sources == source)
            gmean = {
                n: [
                    geometric_mean(np.array(mase_of[n, drop, h])[chosen], SCORE_FLOOR)
                    for h in HORIZONS
                ]
                for n in names
            }
            entry = {"class": kind, "source": source, "series": int(chosen.sum()), "mase": gmean}
            text = "  ".join(f"{n} " + "/".join(f"{v:.3f}" for v in gmean[n]) for n in model_names)
            if baselines:
                best = [min(gmean[b][i] for b in baselines) for i in range(len(HORIZONS))]
                entry["vs_best"] = {
                    m: [gmean[m][i] / best[i] for i in range(len(HORIZONS))] for m in model_names
                }
                first = model_names[0]
                text += (
                    f"  ({first} / best: "
                    + "/".join(f"{r:.2f}" for r in entry["vs_best"][first])
                    + ")"
                )
            print(f"  {kind:<9} {source:<28} {int(chosen.sum()):>3}  {text}")
            out.append(entry)
    return out


def worst_series(
    scored: list[dict], model: str, drop: float, mase_of: dict[tuple, list[float]]
) -> list:
    """The series where `model` loses most against the best baseline on that series: its MASE
    summed over the horizons over the best baseline's at each horizon (first `--drops`).
    Sums, not ratios per horizon: a baseline that is exact at h=1 (a zero at night) would
    otherwise make any error look infinitely worse."""
    ours = np.sum([mase_of[model, drop, h] for h in HORIZONS], axis=0)
    best_of = {h: np.min([mase_of[b, drop, h] for b in BASELINES], axis=0) for h in HORIZONS}
    ratio = ours / np.maximum(np.sum(list(best_of.values()), axis=0), SCORE_FLOOR)
    print(f"\n{model}: series lost most against the best baseline on each ({drop:.0%} dropped)")
    worst = []
    for i in np.argsort(-ratio)[:WORST_SHOWN]:
        per_h = {h: mase_of[model, drop, h][i] for h in HORIZONS}
        best_name = [min(BASELINES, key=lambda b, h=h: mase_of[b, drop, h][i]) for h in HORIZONS]
        worst.append({**scored[i], "ratio": float(ratio[i]), "mase": per_h})
        print(
            f"  {scored[i]['series']:<58} {scored[i]['class']:<9} {ratio[i]:.2f}x  MASE "
            + ", ".join(f"{per_h[h]:.2f}/{best_of[h][i]:.2f}" for h in HORIZONS)
            + f"  (best {'/'.join(best_name)})"
        )
    return worst


if __name__ == "__main__":
    sys.exit(main())
