"""Pretraining speed: does the data or the network set a run's pace?

    python benchmarks/train_speed.py [--batch-sizes 256 1024 4096] [--workers N] [--seconds 15]
        [--profile]

1. Data: windows per second that `WindowSampler` draws (the default synthetic mixture, 30 %
   real crops when the corpus is found, TSMixup 10 %, as `model/pretrain_gpu.sh` trains) on
   one core, and through `--workers` processes the way `moecast train --workers` draws them.
2. Network: optimiser steps per second of the `edge` preset on windows already on the device,
   per batch size (bf16 autocast on CUDA, float32 on the CPU): loss, backward, clipping, AdamW.

A run goes at the slower of the two. Runs on CUDA when there is one, else on the CPU (give it
small batch sizes there). On a machine without the package installed, run it as
model/pretrain_gpu.sh runs training (the repository on PYTHONPATH as `moecast`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from moecast.model.config import preset
from moecast.model.data.corpus import default_data_root
from moecast.model.loss import sequence_loss
from moecast.model.network import MoecastModel
from moecast.model.train import TrainConfig, batch_stream, build_sampler, make_optimizer
from timing import cpu_description


def data_rate(cfg: TrainConfig, seconds: float) -> tuple[float, float]:
    """(windows/s on one core, windows/s through cfg.workers processes)."""
    sampler = build_sampler(cfg, 512, 64, rank=0)
    step, drawn, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        drawn += sampler.batch(step, cfg.batch_size).shape[0]
        step += 1
    one_core = drawn / (time.perf_counter() - start)
    if cfg.workers <= 0:
        return one_core, float("nan")
    batches = batch_stream(sampler, cfg, 0, 10**9, pin=False)
    for _ in range(2 * cfg.workers):  # every worker has started and delivered once
        next(batches)
    drawn, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        drawn += next(batches).shape[0]
    return one_core, drawn / (time.perf_counter() - start)


def network_rate(
    batch_size: int, device: torch.device, seconds: float, cfg: TrainConfig, profile: bool = False
) -> float:
    """Optimiser steps per second of the edge preset at `batch_size`; with `profile`, also
    print where three more steps spend their time (torch.profiler, the top operators)."""
    sampler = build_sampler(cfg, 512, 64, rank=0)
    window = torch.from_numpy(sampler.batch(0, batch_size)).to(device)
    model = MoecastModel(preset("edge")).to(device)
    opt = make_optimizer(model, cfg)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def step() -> None:
        with autocast:
            loss = sequence_loss(model, window).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(3):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                step()
        key = "cuda_time_total" if cuda else "cpu_time_total"
        print(f"profile of 3 steps at batch {batch_size}, by {key}:")
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=50))
    return 1.0 / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--data-batch", type=int, default=256, help="windows per drawn batch")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument(
        "--profile", action="store_true", help="profile the step at the largest batch size"
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "train_speed.json"
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes = args.batch_sizes or ([256, 1024, 4096] if cuda else [8, 32])
    root = args.data_root or default_data_root()
    real = 0.3 if (root / "nab").is_dir() else 0.0
    cfg = TrainConfig(
        batch_size=args.data_batch, workers=args.workers, real_weight=real, mixup=0.1, seed=2
    )
    cfg.data_root = root
    accelerator = torch.cuda.get_device_name(device) if cuda else "none"
    print(f"$ python {' '.join(sys.argv)}")
    print(f"cpu: {cpu_description()}, {os.cpu_count()} cores; accelerator: {accelerator}")
    print(f"torch {torch.__version__}; real crops {real * 100:.0f} %, TSMixup 10 %")

    one_core, pooled = data_rate(cfg, args.seconds)
    print(
        f"data: {one_core:,.0f} windows/s on one core, {pooled:,.0f} through {cfg.workers} workers"
    )
    rows = []
    for size in sizes:
        steps = network_rate(size, device, args.seconds, cfg, args.profile and size == sizes[-1])
        rows.append({"batch_size": size, "steps_per_s": steps, "windows_per_s": steps * size})
        pace = "data" if pooled < steps * size else "network"
        print(
            f"network, batch {size:>5}: {steps:6.2f} steps/s = {steps * size:9,.0f} windows/s"
            f"  (with {cfg.workers} workers the {pace} sets the pace)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "cpu": cpu_description(),
                "cores": os.cpu_count(),
                "accelerator": accelerator,
                "torch": torch.__version__,
                "data_windows_per_s": {
                    "one_core": one_core,
                    "workers": cfg.workers,
                    "pooled": pooled,
                },
                "network": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
