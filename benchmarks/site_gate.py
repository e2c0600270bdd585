"""Learned combination weights for one site: fitted on its early history, scored on the rest.

    python benchmarks/site_gate.py                                  # every site in SITES
    python benchmarks/site_gate.py --site weather/weather.csv.gz    # one site

A gate fitted on the pretraining mixture does not transfer to held-out sensors
(`benchmarks/COMBINE.md`). This asks whether one fitted on a site's own history does, the way
per-site pruning is calibrated (`benchmarks/bundle.py`). For each site (one data file of one
place's sensors, never trained on): every series is cut at three quarters; `moecast fit-gate
--data` fits a gate on crops of the first part with the network frozen (`--windows` windows,
group-8 loss), once with the whole gate and once with powers and priors only; then the shipped
decoding (the fixed rule) and both gates forecast from `--origins` origins spread over the last
quarter, which no fit saw. Per horizon: MASE of the median per window (the context's naive
one-step scale), averaged over a series' windows, geometric mean over the site's series; the
ratio to the fixed rule, and the share of series on which a gate is better. PyTorch, shipped
weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from moecast.model.checkpoint import load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.data.corpus import Series, default_data_root, load_series_file
from moecast.model.fit_gate import FIT_SEED, draw_examples, fit, load_frozen, site_sampler
from moecast.model.metrics import geometric_mean
from moecast.model.network import MoecastModel
from timing import cpu_description

SITES = (
    "weather/weather.csv.gz",  # Jena: 21 sensors, 10 min
    "pvlib/723170TYA.CSV.gz",  # TMY3 station: irradiance, temperature, humidity, wind; 1 h
    "pvlib/703165TY.csv.gz",
    "uci_air_quality/AirQualityUCI.csv",  # an Italian city's air-quality monitor, 1 h
    "uci_occupancy/datatraining.txt",  # one office's light, CO2, temperature, humidity; 1 min
    "ett/ETTh1.csv",  # one transformer station's loads and oil temperature, 1 h
    "ett/ETTm2.csv.gz",  # another, 15 min
)
HORIZONS = (1, 8, 32, 64)
HOLDOUT = 0.25
GROUP = 8
VARIANTS = {"gate": False, "priors": True}  # name -> prior_only


def cut(series: list[Series], context: int, horizon: int) -> list[Series]:
    """Each series' first three quarters (those long enough to crop a window from)."""
    early = [
        dataclasses.replace(s, values=s.values[: int(s.values.size * (1 - HOLDOUT))])
        for s in series
    ]
    return [s for s in early if s.values.size >= context + horizon]


def held_out_windows(
    values: np.ndarray, context: int, horizon: int, origins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts `[m, context]` (NaN-padded on the left) and targets `[m, horizon]` from origins
    spread over the last quarter; windows without a usable MASE scale are left out."""
    start = int(values.size * (1 - HOLDOUT))
    contexts, targets = [], []
    for origin in np.unique(np.linspace(start, values.size - horizon, origins).astype(int)):
        window = values[max(0, origin - context) : origin].astype(np.float64)
        window = np.concatenate([np.full(context - window.size, np.nan), window])
        target = values[origin : origin + horizon].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scale = np.nanmean(np.abs(np.diff(window)))
        if np.isfinite(scale) and scale > 0 and np.isfinite(target).any():
            contexts.append(window)
            targets.append(target)
    return np.array(contexts).reshape(-1, context), np.array(targets).reshape(-1, horizon)


def series_mase(model: MoecastModel, contexts: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """Per head: the mean over the windows of the median's MASE (NaN when no window scores)."""
    with torch.no_grad():
        forecasts = model.predict(torch.from_numpy(contexts.astype(np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmean(np.abs(np.diff(contexts, axis=1)), axis=1)
        out = {}
        for h in HORIZONS:
            median = forecasts[h][..., model.config.median_index].numpy().astype(np.float64)
            error = np.nanmean(np.abs(median - targets[:, :h]), axis=1) / scale
            out[h] = float(np.nanmean(error))
    return out


def run_site(
    site: str, root: Path, shipped: MoecastModel, windows: int, steps: int, origins: int
) -> dict:
    started = time.perf_counter()
    cfg = shipped.config
    series = load_series_file(root / site)
    early = cut(series, cfg.context_length, cfg.max_horizon)
    if not early:
        raise ValueError(f"{site}: no series is long enough to fit on")
    frozen = load_frozen(SHIPPED_WEIGHTS)
    examples = draw_examples(frozen, site_sampler(cfg, early, FIT_SEED), windows, 64, site)
    gated = {}
    for name, prior_only in VARIANTS.items():
        model = load_frozen(SHIPPED_WEIGHTS)
        fit(model.gate, examples, steps, 1024, 3e-3, 0, GROUP, prior_only)
        gated[name] = model.eval()
    rows = []
    for s in series:
        contexts, targets = held_out_windows(s.values, cfg.context_length, cfg.max_horizon, origins)
        if not len(contexts):
            continue
        row = {
            "series": s.name,
            "windows": len(contexts),
            "fixed": series_mase(shipped, contexts, targets),
        }
        for name, model in gated.items():
            row[name] = series_mase(model, contexts, targets)
        rows.append(row)
    summary = summarise(rows)
    return {
        "site": site,
        "series": rows,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for variant in ("fixed", *VARIANTS):
        out[variant] = {h: geometric_mean([r[variant][h] for r in rows]) for h in HORIZONS}
    for variant in VARIANTS:
        out[f"{variant}_wins"] = {
            h: float(np.mean([r[variant][h] < r["fixed"][h] for r in rows])) for h in HORIZONS
        }
    return out


def print_summary(name: str, n: int, summary: dict) -> None:
    fixed = summary["fixed"]
    print(f"\n{name} ({n} series)  MASE h=" + " / ".join(map(str, HORIZONS)))
    print("  fixed rule  " + " / ".join(f"{fixed[h]:.3f}" for h in HORIZONS))
    for variant in VARIANTS:
        scores, wins = summary[variant], summary[f"{variant}_wins"]
        ratio = " / ".join(f"{scores[h] / fixed[h]:.3f}" for h in HORIZONS)
        share = " / ".join(f"{wins[h]:.0%}" for h in HORIZONS)
        print(
            f"  {variant:<10}  "
            + " / ".join(f"{scores[h]:.3f}" for h in HORIZONS)
            + f"   ratio {ratio}   better on {share}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--site", action="append", help="a data file under the data root (repeatable)"
    )
    parser.add_argument("--windows", type=int, default=4096, help="fit windows per site")
    parser.add_argument("--steps", type=int, default=1000, help="gate optimiser steps")
    parser.add_argument("--origins", type=int, default=16, help="held-out origins per series")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "site_gate.json"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.data_root or default_data_root()
    if not root.is_dir():
        print(f"no data at {root}: pass --data-root or set MOECAST_DATA", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    shipped = load_checkpoint(SHIPPED_WEIGHTS)
    results = [
        run_site(site, root, shipped, args.windows, args.steps, args.origins)
        for site in (args.site or SITES)
    ]
    for result in results:
        print_summary(result["site"], len(result["series"]), result["summary"])
    pooled = [row for result in results for row in result["series"]]
    print_summary("all sites", len(pooled), summarise(pooled))
    command = " ".join(["python", *sys.argv])
    print(f"\n{command}\nCPU: {cpu_description()}; torch threads {torch.get_num_threads()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "cpu": cpu_description(), "sites": results}
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
