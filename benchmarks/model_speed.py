"""Speed of the sparse `edge` model against its dense twins, on this machine.

For each preset and patch length: parameters (total / active), training throughput (points/s
for batch 32 x context 512, forward + backward + AdamW step) and inference latency (batch 1 and
batch 256, context 512, all four heads from the last position). Prints a table, the time ratios
next to the Time-MoE paper's claims, and writes JSON.

    python benchmarks/model_speed.py                      # full run
    python benchmarks/model_speed.py --patch-lens 8 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from moecast.model.config import preset
from moecast.model.loss import sequence_loss
from moecast.model.network import MoecastModel
from timing import cpu_description, timed

PRESETS = ("edge", "edge-dense-active", "edge-dense-total")
# Time-MoE (Shi et al., ICLR 2025, sec. 4.5): MoE vs a dense model of the same total size,
# training cost -78 %, inference cost -39 %.
PAPER_TIME_REDUCTION = {"train": 0.78, "infer": 0.39}


def measure(name: str, patch_len: int, quick: bool) -> dict[str, float | int | str]:
    torch.manual_seed(0)
    config = preset(name, patch_len=patch_len, context_length=512)
    model = MoecastModel(config)
    budget = 1.0 if quick else 4.0
    g = torch.Generator().manual_seed(0)

    window = torch.randn(32, config.context_length + config.max_horizon, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = sequence_loss(model, window)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    model.train()
    train_s = timed(train_step, budget, 2 if quick else 3)
    model.eval()
    one = torch.randn(1, config.context_length, generator=g)
    many = torch.randn(256, config.context_length, generator=g)
    with torch.inference_mode():
        b1 = timed(lambda: model.predict(one), budget, 10)
        b256 = timed(lambda: model.predict(many), budget, 2 if quick else 3)
    counts = model.parameter_counts()
    return {
        "preset": name,
        "patch_len": patch_len,
        "params_total": counts["total"],
        "params_active": counts["active"],
        "train_points_per_s": 32 * config.context_length / train_s,
        "train_step_ms": 1000 * train_s,
        "infer_b1_ms": 1000 * b1,
        "infer_b256_ms": 1000 * b256,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-lens", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "model_speed.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    machine = (
        f"{cpu_description()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {args.threads} threads"
    )
    print(f"$ python {' '.join(sys.argv)}\nmachine: {machine}\n")
    header = (
        f"{'preset':<18} {'patch':>5} {'total':>9} {'active':>9} {'train pts/s':>12} "
        f"{'step ms':>8} {'b1 ms':>7} {'b256 ms':>8}"
    )
    print(header)
    rows = []
    for patch_len in args.patch_lens:
        for name in PRESETS:
            r = measure(name, patch_len, args.quick)
            rows.append(r)
            print(
                f"{r['preset']:<18} {r['patch_len']:>5} {r['params_total']:>9,} "
                f"{r['params_active']:>9,} {r['train_points_per_s']:>12,.0f} "
                f"{r['train_step_ms']:>8.1f} {r['infer_b1_ms']:>7.2f} {r['infer_b256_ms']:>8.1f}",
                flush=True,
            )

    print(
        "\nMoE time saved vs a dense model of the same total size (paper: train 78 %, infer 39 %)"
    )
    ratios = []
    for patch_len in args.patch_lens:
        by = {r["preset"]: r for r in rows if r["patch_len"] == patch_len}
        moe, total, active = by["edge"], by["edge-dense-total"], by["edge-dense-active"]
        ratio = {
            "patch_len": patch_len,
            "train_saved": 1 - moe["train_step_ms"] / total["train_step_ms"],
            "infer_b1_saved": 1 - moe["infer_b1_ms"] / total["infer_b1_ms"],
            "infer_b256_saved": 1 - moe["infer_b256_ms"] / total["infer_b256_ms"],
            "train_vs_dense_active": moe["train_step_ms"] / active["train_step_ms"],
            "infer_b256_vs_dense_active": moe["infer_b256_ms"] / active["infer_b256_ms"],
        }
        ratios.append(ratio)
        print(
            f"patch {patch_len}: train {ratio['train_saved']:+.0%}, "
            f"infer b1 {ratio['infer_b1_saved']:+.0%}, b256 {ratio['infer_b256_saved']:+.0%}; "
            f"MoE / dense-active time: train {ratio['train_vs_dense_active']:.2f}x, "
            f"b256 {ratio['infer_b256_vs_dense_active']:.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": " ".join(sys.argv), "machine": machine, "rows": rows, "ratios": ratios},
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
