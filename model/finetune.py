"""Fine-tuning (`moecast finetune`): adapt a checkpoint to a user's own series.

    moecast finetune --checkpoint model/weights/edge --data site.csv --epochs 1 --out runs/site

An epoch visits every window of the user's series once (window starts every `stride` points,
shuffled); the learning rate warms up over the first 5 % of steps and decays by cosine.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from moecast.model.checkpoint import load_checkpoint, save_checkpoint
from moecast.model.data.corpus import load_corpus
from moecast.model.loss import sequence_loss
from moecast.model.network import MoecastModel
from tqdm import tqdm


def training_windows(
    series: Sequence[np.ndarray], length: int, stride: int, min_observed: int = 8
) -> np.ndarray:
    """Every `stride`-th window of `length` points; series shorter than a window are left-padded
    with NaN (a short history is still worth learning from)."""
    out = []
    for values in series:
        values = np.asarray(values, dtype=np.float32)
        if values.size < length:
            values = np.concatenate([np.full(length - values.size, np.nan, np.float32), values])
        for start in range(0, values.size - length + 1, stride):
            window = values[start : start + length]
            if np.isfinite(window).sum() >= min_observed:
                out.append(window)
    if not out:
        raise ValueError("no training window with observed values in the fine-tuning data")
    return np.stack(out)


def finetune(
    model: MoecastModel,
    series: Sequence[np.ndarray],
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-4,
    stride: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train `model` in place on windows of `series`; returns the loss of every step."""
    cfg = model.config
    windows = training_windows(
        series, cfg.context_length + cfg.max_horizon, stride or cfg.patch_len
    )
    steps_per_epoch = math.ceil(len(windows) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    losses: list[float] = []
    model.train()
    with tqdm(total=total, disable=not progress, desc="finetune") as bar:
        for _ in range(epochs):
            order = rng.permutation(len(windows))
            for i in range(0, len(order), batch_size):
                batch = torch.from_numpy(windows[order[i : i + batch_size]]).to(device)
                parts = sequence_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                parts.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                schedule.step()
                losses.append(parts.quantile.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a CSV/Parquet file or folder")
    parser.add_argument("--column", action="append", help="only these columns (repeatable)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--stride", type=int, help="window stride (default: patch_len)")
    parser.add_argument("--out", type=Path, required=True, help="where to save the result")


def run(args: argparse.Namespace) -> int:
    if not args.data.exists():
        print(f"error: {args.data} does not exist", file=sys.stderr)
        return 2
    root, include = (
        (args.data.parent, [args.data.name]) if args.data.is_file() else (args.data, ["."])
    )
    series = load_corpus(root, include)
    if args.column:
        series = [s for s in series if s.name.split("/")[-1] in args.column]
    if not series:
        print(f"error: no usable numeric series in {args.data}", file=sys.stderr)
        return 2
    model = load_checkpoint(args.checkpoint)
    losses = finetune(
        model, [s.values for s in series], args.epochs, args.batch_size, args.lr, args.stride
    )
    save_checkpoint(
        model,
        args.out,
        metadata={
            "finetuned_from": str(args.checkpoint),
            "epochs": args.epochs,
            "steps": len(losses),
        },
    )
    print(
        f"fine-tuned on {len(series)} series, {len(losses)} steps "
        f"(loss {np.mean(losses[:10]):.4f} -> {np.mean(losses[-10:]):.4f}); saved {args.out}"
    )
    return 0
