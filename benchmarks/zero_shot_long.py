"""Long-horizon zero-shot benchmark (the Time-MoE protocol) on ETT and Weather.

    python benchmarks/zero_shot_long.py                         # shipped edge weights
    python benchmarks/zero_shot_long.py --checkpoint runs/edge/last --stride 1
    python benchmarks/zero_shot_long.py --datasets Weather --no-hold   # ablation

Prints MSE and MAE per dataset and horizon (normalised scale), the per-dataset average next to
Time-MoE base's, and writes JSON. Stride 1 is the paper's; on a CPU the default samples about
200 window starts per channel and horizon (`--starts`; the stride used is printed per dataset).
`--combine on|off` overrides the checkpoint's skill-weighted combination (`network.skill_combine`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from moecast.model.checkpoint import load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.data.corpus import default_data_root
from moecast.model.evaluation import (
    LONG_HORIZON_DATASETS,
    LONG_HORIZONS,
    TIME_MOE_BASE_MSE,
    TTM_R2_MSE,
    evaluate,
    split,
)
from moecast.model.forecast import Forecaster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--datasets", nargs="+", default=list(LONG_HORIZON_DATASETS))
    parser.add_argument("--horizons", type=int, nargs="+", default=list(LONG_HORIZONS))
    parser.add_argument("--stride", type=int, default=0, help="0: about 200 starts per channel")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--no-hold", action="store_true", help="turn hold decoding off")
    parser.add_argument(
        "--combine",
        choices=("on", "off", "config"),
        default="config",
        help="skill-weighted combination (network.skill_combine): as the checkpoint says, or not",
    )
    parser.add_argument(
        "--starts", type=int, default=200, help="window starts per channel with --stride 0"
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "zero_shot_long.json",
    )
    args = parser.parse_args()

    root = args.data_root or default_data_root()
    if not (root / "ett").is_dir():
        print(f"no benchmark data under {root} (set MOECAST_DATA)", file=sys.stderr)
        return 2
    overrides = {"hold_decoding": not args.no_hold}
    if args.combine != "config":
        overrides["skill_combine"] = args.combine == "on"
    forecaster = Forecaster(load_checkpoint(args.checkpoint, **overrides))
    counts = forecaster.model.parameter_counts()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"model: {args.checkpoint} ({forecaster.config.name}, {counts['total']:,} params, "
        f"{counts['active']:,} active, hold decoding {'off' if args.no_hold else 'on'}, "
        f"combination {'on' if forecaster.config.skill_combine else 'off'}); "
        f"machine: {machine}\n"
    )
    print(f"{'dataset':<8} {'horizon':>7} {'stride':>6} {'windows':>8} {'MSE':>7} {'MAE':>7}")

    rows, summary = [], {}
    started = time.perf_counter()
    for name in args.datasets:
        data = split(name, root, context=args.context)
        per_dataset = []
        for horizon in args.horizons:
            test_points = len(data.test) - data.context - horizon + 1
            stride = args.stride or max(1, math.ceil(test_points / args.starts))
            result = evaluate(forecaster, data, horizon, stride)
            rows.append({"dataset": name, "horizon": horizon, "stride": stride, **result})
            per_dataset.append(result)
            print(
                f"{name:<8} {horizon:>7} {stride:>6} {result['windows']:>8} "
                f"{result['mse']:>7.3f} {result['mae']:>7.3f}",
                flush=True,
            )
        summary[name] = {
            "mse": float(np.mean([r["mse"] for r in per_dataset])),
            "mae": float(np.mean([r["mae"] for r in per_dataset])),
        }

    print(f"\n{'dataset':<8} {'MSE':>7} {'MAE':>7} {'Time-MoE base MSE':>18} {'TTM-r2 MSE':>11}")
    for name, s in summary.items():
        print(
            f"{name:<8} {s['mse']:>7.3f} {s['mae']:>7.3f} {TIME_MOE_BASE_MSE[name]:>18.3f}"
            f" {TTM_R2_MSE[name]:>11.3f}"
        )
    mean_mse = float(np.mean([s["mse"] for s in summary.values()]))
    paper = float(np.mean([TIME_MOE_BASE_MSE[n] for n in summary]))
    ttm = float(np.mean([TTM_R2_MSE[n] for n in summary]))
    print(f"{'mean':<8} {mean_mse:>7.3f} {'':>7} {paper:>18.3f} {ttm:>11.3f}")
    print(f"\n{time.perf_counter() - started:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "checkpoint": str(args.checkpoint),
                "machine": machine,
                "params": counts,
                "rows": rows,
                "summary": summary,
                "mean_mse": mean_mse,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
