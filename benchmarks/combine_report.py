"""Tables for the combination variants from one or more `zero_shot_sensor.py` result files.

    python benchmarks/combine_report.py RUN.json [MORE.json ...] --models moecast comb-p2

Runs with the same seed score the same windows with the same damage, so a run of extra models
with `--no-baselines` joins an earlier run with them. Per class and drop: geometric-mean MASE
and WQL relative to SeasonalNaive per horizon; then the series where the second model loses
most against the first (MASE ratio, averaged over horizons, no drops).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from moecast.model.metrics import geometric_mean

HORIZONS = (1, 8, 32, 64)
FLOOR = 1e-3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--worst", type=int, default=8)
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    series = [s["series"] for s in runs[0]["series"]]
    kinds = np.array([s["class"] for s in runs[0]["series"]])
    mase, wql = {}, {}
    for run in runs:
        assert [s["series"] for s in run["series"]] == series, "runs scored different series"
        mase |= run["mase_per_series"]
        wql |= run["wql_per_series"]
    drops = sorted({float(k.split("|")[1]) for k in mase})
    for drop in drops:
        for group in ("all", "seasonal", "smooth", "noisy", "trending", "hold"):
            chosen = np.ones(len(series), bool) if group == "all" else kinds == group
            if not chosen.any():
                continue
            print(f"\n{group} ({chosen.sum()} series), {drop:.0%} dropped: MASE / WQL vs SN")
            for name in args.models:
                cells = []
                for h in HORIZONS:
                    m = np.array(mase[f"{name}|{drop}|{h}"])[chosen]
                    w = np.array(wql[f"{name}|{drop}|{h}"])[chosen]
                    sn = np.array(wql[f"SeasonalNaive|{drop}|{h}"])[chosen]
                    ok = np.isfinite(w) & np.isfinite(sn) & (sn > 0)
                    rel = geometric_mean(list(w[ok] / sn[ok]), FLOOR) if ok.any() else np.nan
                    cells.append(f"{geometric_mean(list(m), FLOOR):.3f} / {rel:.3f}")
                print(f"  {name:<14}" + "".join(f"{c:>17}" for c in cells))
    first, second = args.models[0], args.models[1]
    ratio = np.mean(
        [
            np.log(
                np.maximum(np.array(mase[f"{second}|0.0|{h}"]), FLOOR)
                / np.maximum(np.array(mase[f"{first}|0.0|{h}"]), FLOOR)
            )
            for h in HORIZONS
        ],
        axis=0,
    )
    print(f"\nseries where {second} loses most against {first} (MASE ratio, mean over h):")
    for i in np.argsort(-ratio)[: args.worst]:
        per_h = " ".join(
            f"{mase[f'{first}|0.0|{h}'][i]:.3f}->{mase[f'{second}|0.0|{h}'][i]:.3f}"
            for h in HORIZONS
        )
        print(f"  {np.exp(ratio[i]):.3f}  {series[i]:<55} {kinds[i]:<9} {per_h}")


if __name__ == "__main__":
    main()
