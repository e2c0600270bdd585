"""Fit the combination's learned weights (`network.SkillGate`) with the network frozen.

    moecast fit-gate --export runs/gate/edge                      # on the pretraining mixture
    moecast fit-gate --data site.csv --export runs/gate/site      # on one site's own history

1. Draw windows: of the pretraining mixture (synthetic families, crops of the real pretraining
   series, TSMixup, damage) from seeds that pretraining does not use, or with `--data` crops of
   one site's own series (damaged the same way).
2. Run the frozen network over each once and keep what the combination weighs
   (`MoecastModel.combination_inputs`: every head's in-context error ratios and the forecasts
   it mixes) with the window's future, normalised, and its MASE scale. This is the slow part,
   and the only one that runs the network (`--cache` keeps it for refits).
3. Fit the gate on those: per head, the loss is the log of the mixed median's MASE averaged
   over groups of `--group` windows (`head_losses`), the way the sensor benchmark averages a
   series' windows before its geometric mean over series.
4. Check it on windows from another seed against the fixed rule it starts as, and write a
   checkpoint with `combine_gate` on. The held-out benchmarks see it only after that
   (`benchmarks/COMBINE.md`: on the mixture it does not transfer; `benchmarks/site_gate.py`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from moecast.model.checkpoint import (
    WEIGHTS_FILE,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from moecast.model.config import ModelConfig
from moecast.model.data.corpus import (
    Series,
    default_data_root,
    load_pretraining_corpus,
    load_site_series,
)
from moecast.model.data.mixture import SyntheticMixture
from moecast.model.data.windows import WindowSampler
from moecast.model.network import MoecastModel, SkillGate
from torch import Tensor
from tqdm import tqdm

FIT_SEED, CHECK_SEED = 9_001, 9_002  # pretraining's seeds are small integers * 1000 + rank
ERROR_FLOOR = 1e-3  # MASE: a perfect forecast of a flat future is not -inf
SCALE_FLOOR = 1e-2  # normalised units: a flat context's MASE would be unbounded


@dataclass
class Examples:
    """What the gate sees and what it is judged on, for N windows."""

    ratios: Tensor  # [N, heads, slots]
    mixes: list[Tensor]  # per head [N, slots, h], normalised
    future: Tensor  # [N, max_horizon], normalised, NaN where not observed
    scale: Tensor  # [N]: MASE's denominator, the context's mean absolute step (normalised)

    def __len__(self) -> int:
        return self.ratios.shape[0]

    def take(self, index: Tensor) -> Examples:
        mixes = [m[index] for m in self.mixes]
        return Examples(self.ratios[index], mixes, self.future[index], self.scale[index])


def load_frozen(checkpoint: Path) -> MoecastModel:
    """The checkpoint's network with a fresh gate (the fixed rule) on top; only the gate
    trains. A checkpoint that already has a gate starts from it."""
    model = load_checkpoint(checkpoint)
    if not model.config.skill_combine:
        raise ValueError(f"{checkpoint}: the combination is off (skill_combine), nothing to fit")
    if model.gate is None:
        network = model
        model = MoecastModel(network.config.replace(combine_gate=True)).eval()
        model.load_state_dict(network.state_dict(), strict=False)  # all but the new gate
        if network.is_pruned:
            model.prune_experts(network.kept_experts)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("gate."))
    return model


def draw_examples(
    model: MoecastModel, sampler: WindowSampler, windows: int, batch_size: int, desc: str
) -> Examples:
    cfg = model.config
    ratios, mixes, futures, scales = [], [[] for _ in cfg.horizons], [], []
    batches = math.ceil(windows / batch_size)
    for step in tqdm(range(batches), desc=desc, unit="batch"):
        batch = torch.from_numpy(sampler.batch(step, batch_size))
        context, future = batch[:, : cfg.context_length], batch[:, cfg.context_length :]
        r, m, loc, scale = model.combination_inputs(context)
        ratios.append(r)
        for kept, head in zip(mixes, m, strict=True):
            kept.append(head)
        futures.append((future - loc) / scale)
        steps = ((context[:, 1:] - context[:, :-1]) / scale).abs()
        scales.append(steps.nanmean(-1).nan_to_num(0.0))
    return Examples(
        torch.cat(ratios)[:windows],
        [torch.cat(m)[:windows] for m in mixes],
        torch.cat(futures)[:windows],
        torch.cat(scales)[:windows],
    )


def cached_examples(
    model: MoecastModel,
    sampler: WindowSampler,
    windows: int,
    cache: Path | None,
    desc: str,
    source: str = "",
) -> Examples:
    """`draw_examples`, kept in `cache` (a file) when given: the network's pass is the slow
    part, and a refit with other settings need not repeat it. The cache is keyed by `source`
    (what the windows and the network come from) and the sampler's seed and mixture; a
    mismatch draws again and overwrites it."""
    key = [source, sampler.seed, sampler.real_weight, sampler.mixup_probability]
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        if saved.pop("key") == key and len(saved["ratios"]) >= windows:
            return Examples(**saved).take(torch.arange(windows))
    examples = draw_examples(model, sampler, windows, 64, desc)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, **vars(examples)}, cache)
    return examples


def head_losses(gate: SkillGate, examples: Examples, group: int = 1) -> Tensor:
    """`[heads]`: the mean over groups of `group` windows of log(mean MASE of the mixed median).

    With `group` 1, every window counts alike: the geometric mean of MASE. The sensor
    benchmark averages MASE over 8 windows of a series before its geometric mean over series,
    so there one badly wrong window costs more than one very good one gains; groups of 8
    windows ask the same of the fit."""
    weights = gate(examples.ratios)  # [N, heads, slots]
    floor = examples.scale.clamp_min(SCALE_FLOOR)
    losses = []
    for i, mix in enumerate(examples.mixes):
        h = mix.shape[-1]
        median = (weights[:, i, :, None] * mix).sum(1)
        truth = examples.future[:, :h]
        seen = torch.isfinite(truth)
        error = torch.where(seen, (median - truth.nan_to_num()).abs(), 0.0).sum(-1)
        count = seen.sum(-1)
        scaled = error / count.clamp_min(1) / floor
        kept = count > 0
        n = int(kept.sum()) // group * group
        grouped = scaled[kept][:n].view(-1, group).mean(-1)
        losses.append(torch.log(grouped + ERROR_FLOOR).mean())
    return torch.stack(losses)


def fit(
    gate: SkillGate,
    examples: Examples,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    group: int = 1,
    prior_only: bool = False,
) -> None:
    """Adam on `head_losses` summed over heads. With `prior_only`, only the powers and the
    priors per head and candidate (the MLP's output bias) move."""
    generator = torch.Generator().manual_seed(seed)
    params = [gate.log_power, gate.out.bias] if prior_only else list(gate.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc="fit", unit="step"):
        index = torch.randint(len(examples), (batch_size,), generator=generator)
        loss = head_losses(gate, examples.take(index), group).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()


def sampler_for(
    config: ModelConfig,
    data_root: Path | None,
    seed: int,
    real_weight: float = 0.3,
    mixup: float = 0.1,
) -> WindowSampler:
    """The pretraining mixture (by default as stage 3 drew it: real 30 %, TSMixup 10 %) from
    another seed."""
    real = load_pretraining_corpus(data_root or default_data_root())
    return WindowSampler(
        config.context_length,
        config.max_horizon,
        real=real,
        synthetic=SyntheticMixture(),
        real_weight=real_weight,
        mixup_probability=mixup,
        seed=seed,
    )


def site_sampler(config: ModelConfig, series: Sequence[Series], seed: int) -> WindowSampler:
    """Windows of one site's own series (crops, damaged as in pretraining), no synthetic ones."""
    sampler = WindowSampler(config.context_length, config.max_horizon, real=series, seed=seed)
    if not sampler.real:
        raise ValueError(
            f"no series has a window's worth of points: fitting needs series of at least "
            f"{sampler.length} readings (the context and the longest horizon)"
        )
    return sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=Path("model/weights/edge"))
    parser.add_argument("--export", type=Path, required=True, help="write the checkpoint here")
    parser.add_argument("--windows", type=int, default=32_768, help="windows to fit on")
    parser.add_argument("--check-windows", type=int, default=8_192, help="windows to check on")
    parser.add_argument("--steps", type=int, default=3_000, help="gate optimiser steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--group", type=int, default=8, help="windows whose mean MASE the loss takes the log of"
    )
    parser.add_argument(
        "--prior-only", action="store_true", help="fit the powers and priors, not the MLP"
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="fit on one site's own series (a CSV/Parquet file or a folder) instead of the "
        "pretraining mixture",
    )
    parser.add_argument("--real-weight", type=float, default=0.3, help="share of real windows")
    parser.add_argument("--mixup", type=float, default=0.1, help="TSMixup share")
    parser.add_argument("--data-root", type=Path, help="default: ../shared/data or $MOECAST_DATA")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument(
        "--cache", type=Path, help="keep the network's outputs here (a folder) for refits"
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as err:  # bad data or checkpoint: say so, no trace
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_frozen(args.checkpoint)
    assert model.gate is not None
    cache = args.cache
    site = load_site_series(args.data) if args.data else None
    weights = (args.checkpoint / WEIGHTS_FILE).stat()
    source = f"{args.checkpoint.resolve()}@{weights.st_mtime_ns}:{args.data or 'mixture'}"

    def examples(seed: int, windows: int, name: str) -> Examples:
        if site is not None:
            sampler = site_sampler(model.config, site, seed)
        else:
            sampler = sampler_for(model.config, args.data_root, seed, args.real_weight, args.mixup)
        path = cache and cache / f"{name}.pt"
        return cached_examples(model, sampler, windows, path, name, source)

    fit_set = examples(FIT_SEED, args.windows, "fit")
    check_set = examples(CHECK_SEED, args.check_windows, "check")
    with torch.no_grad():
        before = head_losses(model.gate, check_set, args.group)
    fit(model.gate, fit_set, args.steps, 1024, args.lr, 0, args.group, args.prior_only)
    with torch.no_grad():
        after = head_losses(model.gate, check_set, args.group)
    horizons = model.config.horizons
    if site is not None:
        print("check windows are other crops of the same series, not a held-out test")
    print(f"check windows, geometric mean over groups of {args.group} of the mix's mean MASE:")
    for h, b, a in zip(horizons, before.exp().tolist(), after.exp().tolist(), strict=True):
        print(f"  h={h:<3} fixed rule {b:.4f}  gate {a:.4f}  ({100 * (a / b - 1):+.1f} %)")
    metadata = checkpoint_metadata(args.checkpoint)
    metadata["gate"] = {
        "windows": args.windows,
        "steps": args.steps,
        "lr": args.lr,
        "group": args.group,
        "data": str(args.data) if args.data else "pretraining mixture",
        "real_weight": args.real_weight,
        "mixup": args.mixup,
        "prior_only": args.prior_only,
        "seeds": [FIT_SEED, CHECK_SEED],
        "check_before": dict(zip(map(str, horizons), before.exp().tolist(), strict=True)),
        "check_after": dict(zip(map(str, horizons), after.exp().tolist(), strict=True)),
    }
    save_checkpoint(model, args.export, metadata=metadata, dtype=torch.float16)
    print(f"wrote {args.export}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
