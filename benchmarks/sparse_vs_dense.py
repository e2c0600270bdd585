"""Sparse vs dense: the MoE and its dense twins, trained on the same data and steps.

    # the three checkpoints come from the same command with another preset:
    moecast train --preset edge              --steps 8000 --run runs/edge
    moecast train --preset edge-dense-active --steps 8000 --run runs/edge-dense-active
    moecast train --preset edge-dense-total  --steps 8000 --run runs/edge-dense-total
    python benchmarks/sparse_vs_dense.py --model moe=runs/edge/last \
        --model dense-active=runs/edge-dense-active/last \
        --model dense-total=runs/edge-dense-total/last

For each checkpoint: parameters, zero-shot ETTh1 MSE/MAE (Time-MoE protocol, horizon 96 by
default, strided test windows), then one epoch of fine-tuning on the ETTh1 train split (every
channel, normalised with train statistics) and the same test again. Training throughput and
latency are measured by benchmarks/model_speed.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from moecast.model.checkpoint import load_checkpoint
from moecast.model.data.corpus import default_data_root
from moecast.model.evaluation import evaluate, split
from moecast.model.finetune import finetune
from moecast.model.forecast import Forecaster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--stride", type=int, default=8, help="test window stride")
    parser.add_argument("--finetune-stride", type=int, default=8, help="train window stride")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "sparse_vs_dense.json",
    )
    args = parser.parse_args()

    data = split("ETTh1", args.data_root or default_data_root())
    train_series = [data.train[:, c] for c in range(data.train.shape[1])]
    print(f"$ python {' '.join(sys.argv)}\n")
    print(
        f"{'model':<14} {'total':>9} {'active':>9} {'zero-shot MSE':>14} {'MAE':>6} "
        f"{'1 epoch MSE':>12} {'MAE':>6} {'ft steps':>8} {'ft s':>6}"
    )
    rows = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        model = load_checkpoint(path)
        counts = model.parameter_counts()
        before = evaluate(Forecaster(model), data, args.horizon, args.stride)
        started = time.perf_counter()
        losses = finetune(
            model, train_series, epochs=1, lr=args.lr, stride=args.finetune_stride, progress=False
        )
        seconds = time.perf_counter() - started
        after = evaluate(Forecaster(model), data, args.horizon, args.stride)
        rows.append(
            {
                "model": name,
                "checkpoint": path,
                **counts,
                "zero_shot": before,
                "finetuned": after,
                "finetune_steps": len(losses),
                "finetune_s": seconds,
            }
        )
        print(
            f"{name:<14} {counts['total']:>9,} {counts['active']:>9,} {before['mse']:>14.3f} "
            f"{before['mae']:>6.3f} {after['mse']:>12.3f} {after['mae']:>6.3f} "
            f"{len(losses):>8} {seconds:>6.0f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
