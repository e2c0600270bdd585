"""Pretraining (`moecast train`): AdamW, warmup + cosine, clipping, resumable checkpoints.

    moecast train --preset edge --steps 20000 --run runs/edge --export model/weights/edge

A run directory holds `last/` (weights, config and optimiser state, written atomically every
`--checkpoint-every` steps), `log.jsonl` (one line per logged step) and nothing else; running
the same command again resumes from `last/`. Under `torchrun` each rank draws its own batches
and DDP averages the gradients; only rank 0 writes.

`--workers N` draws batches in N processes (a batch is a pure function of (seed, step), so
workers change nothing but speed; one core cannot feed a GPU, `benchmarks/train_speed.py`),
and `--time-budget S` fits the run to S seconds of wall time: it times steps during warmup and
sets `--steps` from that before the cosine decay starts, so the run ends with a finished
schedule. The log records the steps it chose; `--steps N` alone reproduces the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from moecast.model.checkpoint import load_checkpoint, save_checkpoint
from moecast.model.config import PRESETS, preset
from moecast.model.data.corpus import default_data_root, load_pretraining_corpus
from moecast.model.data.mixture import SyntheticMixture
from moecast.model.data.windows import WindowSampler
from moecast.model.loss import sequence_loss
from moecast.model.network import MoecastModel
from tqdm import tqdm

TRAINER_STATE = "trainer.pt"
# Steps timed by --time-budget: after the first (allocator, worker start-up), before warmup ends.
PROBE_FROM, PROBE_TO = 10, 60
OVERRUN = 1.1  # share of --time-budget after which a run that fell behind stops (checkpointed)


@dataclass
class TrainConfig:
    preset: str = "edge"
    steps: int = 20_000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 500
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    real_weight: float = 0.3  # share of windows cut from the real pretraining corpus
    mixup: float = 0.0  # share of windows that are TSMixup blends of 2-3 draws
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    run: Path = Path("runs/edge")
    export: Path | None = None
    data_root: Path | None = None  # default: ../shared/data (or $MOECAST_DATA)
    patch_len: int | None = None  # override the preset's patch length
    stop_at: int | None = None  # pause here (checkpointed); rerun to continue the same schedule
    init: Path | None = None  # start a new run from these weights (parameters it lacks stay new)
    workers: int = 0  # processes drawing batches (0: in the training process)
    time_budget_s: float | None = None  # fit --steps to this wall time (see the module doc)
    amp: bool = True  # bfloat16 autocast on CUDA (CPU always trains in float32)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Norm gains and biases are not decayed: shrinking them only fights the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _write_state(run: Path, model: MoecastModel, opt, step: int, cfg: TrainConfig) -> None:
    """Replace `run/last` atomically: a kill at any moment leaves a loadable checkpoint."""
    staging = run / "next"
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(model, staging, metadata={"step": step, "train": _jsonable(cfg)})
    torch.save({"step": step, "optimizer": opt.state_dict()}, staging / TRAINER_STATE)
    last, previous = run / "last", run / "previous"
    if last.exists():
        shutil.rmtree(previous, ignore_errors=True)
        last.rename(previous)
    staging.rename(last)
    shutil.rmtree(previous, ignore_errors=True)


def _resume_point(run: Path) -> Path | None:
    for name in ("last", "previous"):  # "previous" only survives a kill mid-swap
        if (run / name / TRAINER_STATE).is_file():
            return run / name
    return None


def warm_start(model: MoecastModel, checkpoint: Path) -> None:
    """Copy a checkpoint's weights into `model`, e.g. to continue pretraining after adding a
    parameter. Every parameter the checkpoint has must fit; those it lacks keep their
    initialisation (new parameters start as the identity, see `QuantileHead`)."""
    source = load_checkpoint(checkpoint).state_dict()
    result = model.load_state_dict(source, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint} has weights this model lacks: {result.unexpected_keys}")
    log_missing = ", ".join(result.missing_keys) or "none"
    print(f"warm start from {checkpoint}; new parameters: {log_missing}", flush=True)


def _jsonable(cfg: TrainConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def build_sampler(cfg: TrainConfig, context_length: int, horizon: int, rank: int) -> WindowSampler:
    real = load_pretraining_corpus(cfg.data_root or default_data_root()) if cfg.real_weight else []
    return WindowSampler(
        context_length,
        horizon,
        real=real,
        synthetic=SyntheticMixture(),
        real_weight=cfg.real_weight,
        mixup_probability=cfg.mixup,
        seed=cfg.seed * 1000 + rank,
    )


class _Batches(torch.utils.data.Dataset):
    """Batch `step` of a sampler, for a DataLoader whose index is the step."""

    def __init__(self, sampler: WindowSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> torch.Tensor:
        return torch.from_numpy(self.sampler.batch(step, self.batch_size))


def batch_stream(sampler: WindowSampler, cfg: TrainConfig, start: int, end: int, pin: bool):
    """The batches of steps start .. end-1, drawn in `cfg.workers` processes or in this one."""
    if cfg.workers <= 0:
        return (torch.from_numpy(sampler.batch(step, cfg.batch_size)) for step in range(start, end))
    return iter(
        torch.utils.data.DataLoader(
            _Batches(sampler, cfg.batch_size),
            sampler=range(start, end),
            batch_size=None,
            num_workers=cfg.workers,
            pin_memory=pin,
            prefetch_factor=4,
        )
    )


def fitted_steps(cfg: TrainConfig, done: int, probe_s: float, elapsed_s: float) -> int:
    """The step count that ends the run within `cfg.time_budget_s`, from `PROBE_TO -
    PROBE_FROM` steps timed at `probe_s` and `elapsed_s` spent so far; never above
    `cfg.steps`, never below the next step."""
    per_step = probe_s / (PROBE_TO - PROBE_FROM)
    left = max(0.0, cfg.time_budget_s - elapsed_s)
    return max(done + 1, min(cfg.steps, done + int(left / per_step)))


def train(cfg: TrainConfig) -> MoecastModel:
    """Train (or resume) per `cfg`; the checkpoint is `cfg.run / 'last'`."""
    rank, world = _distributed()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    overrides = {"patch_len": cfg.patch_len} if cfg.patch_len else {}
    model = MoecastModel(preset(cfg.preset, **overrides)).to(device)
    opt = make_optimizer(model, cfg)

    start = 0
    resume = _resume_point(cfg.run)
    if resume is not None:
        model.load_state_dict(load_checkpoint(resume, device=device).state_dict())
        state = torch.load(resume / TRAINER_STATE, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    elif cfg.init is not None:
        warm_start(model, cfg.init)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else None

    config = model.config
    sampler = build_sampler(cfg, config.context_length, config.max_horizon, rank)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.amp
        else nullcontext()
    )
    cfg.run.mkdir(parents=True, exist_ok=True)
    log = (cfg.run / "log.jsonl").open("a") if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=start, disable=rank != 0, desc=f"train {cfg.preset}")
    points = cfg.batch_size * config.context_length * world
    began = tick = time.perf_counter()
    probe_start = 0.0
    model.train()
    end = min(cfg.steps, cfg.stop_at or cfg.steps)
    batches = batch_stream(sampler, cfg, start, end, pin=device.type == "cuda")
    for step in range(start, end):  # --time-budget may lower `end`: the loop breaks there
        if cfg.time_budget_s and step - start in (PROBE_FROM, PROBE_TO):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            if step - start == PROBE_FROM:
                probe_start = now
            else:
                cfg.steps = fitted_steps(cfg, step, now - probe_start, now - began)
                if dist.is_initialized():  # every rank must stop at rank 0's step
                    agreed = torch.tensor([cfg.steps], device=device)
                    dist.broadcast(agreed, 0)
                    cfg.steps = int(agreed.item())
                end = min(cfg.steps, cfg.stop_at or cfg.steps)
                bar.total = cfg.steps
                print(f"\ntime budget {cfg.time_budget_s:.0f} s: --steps {cfg.steps}", flush=True)
                if log is not None:
                    log.write(json.dumps({"step": step, "fitted_steps": cfg.steps}) + "\n")
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        window = next(batches).to(device, non_blocking=True)
        with autocast:
            parts = sequence_loss(model if ddp is None else ddp, window)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        bar.update(1)

        done = step + 1
        if rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
            elapsed, tick = time.perf_counter() - tick, time.perf_counter()
            record = {
                "step": done,
                "loss": parts.total.item(),
                "quantile_loss": parts.quantile.item(),
                "balance_loss": parts.balance.item(),
                "grad_norm": grad_norm.item(),
                "lr": opt.param_groups[0]["lr"],
                "points_per_s": points * cfg.log_every / elapsed,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(
                loss=f"{record['quantile_loss']:.4f}", pts_s=f"{record['points_per_s']:,.0f}"
            )
        # Only a fitted run can fall behind; before the probe the budget has not been applied.
        overdue = bool(
            cfg.time_budget_s
            and done - start > PROBE_TO
            and time.perf_counter() - began > OVERRUN * cfg.time_budget_s
        )
        if cfg.time_budget_s and dist.is_initialized():  # every rank stops when rank 0 does
            flag = torch.tensor([overdue], device=device)
            dist.broadcast(flag, 0)
            overdue = bool(flag.item())
        if rank == 0 and (done % cfg.checkpoint_every == 0 or done == end or overdue):
            _write_state(cfg.run, model, opt, done, cfg)
        if overdue:
            print(f"\nstopped at step {done}: over the time budget; rerun to finish", flush=True)
        if done == end or overdue:
            break
    bar.close()

    if rank == 0 and cfg.export is not None and end == cfg.steps:
        final = load_checkpoint(cfg.run / "last")
        # Shipped weights are float16: half the bytes, and inference runs in float32 anyway.
        save_checkpoint(
            final,
            cfg.export,
            metadata={"steps": cfg.steps, "train": _jsonable(cfg)},
            dtype=torch.float16,
        )
    if dist.is_initialized():
        dist.barrier()
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--real-weight", type=float, default=defaults.real_weight)
    parser.add_argument("--mixup", type=float, default=defaults.mixup, help="TSMixup share")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--patch-len", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--stop-at", type=int, help="pause at this step; rerun to continue")
    parser.add_argument("--run", type=Path, default=defaults.run, help="run directory (resumes)")
    parser.add_argument("--export", type=Path, help="copy the final weights here")
    parser.add_argument("--init", type=Path, help="start a new run from this checkpoint's weights")
    parser.add_argument("--data-root", type=Path, help="default: ../shared/data or $MOECAST_DATA")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing batches")
    parser.add_argument(
        "--time-budget", type=float, help="seconds: set --steps from the speed of early steps"
    )
    parser.add_argument(
        "--no-amp", dest="amp", action="store_false", help="train in float32 on CUDA too"
    )


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        real_weight=args.real_weight,
        mixup=args.mixup,
        seed=args.seed,
        patch_len=args.patch_len,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        stop_at=args.stop_at,
        run=args.run,
        export=args.export,
        data_root=args.data_root,
        init=args.init,
        workers=args.workers,
        time_budget_s=args.time_budget,
        amp=args.amp,
    )
    train(cfg)
    print(f"checkpoint: {cfg.run / 'last'}" + (f"; exported to {cfg.export}" if cfg.export else ""))
    return 0
