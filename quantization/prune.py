"""Per-site expert pruning: keep K experts per layer, chosen on the site's own series.

    report = prune_for_site(model, series)          # K = "auto": smallest within 2 % MASE
    report = prune_for_site(model, series, keep=4)
    print(report.table()); model.kept_experts       # the model is left pruned
    prune_by_load(model, load)                      # from agents' expert_load, no series

Layer by layer, the kept set is the one whose output best reconstructs the layer's unpruned
output on the calibration tokens (as Lu et al. 2024, "Not All Experts are Equal", do for
Mixtral): every subset of K of the layer's experts when there are at most `max_subsets` (8
experts give at most 70), else the K most salient experts (`quantization.routing`). Earlier
layers are pruned first, so each layer is fitted on the inputs it will see. Accuracy is the
geometric-mean MASE of the median forecast at one horizon on held-out windows of the site's
series (`quantization.site_data.split_site`); `auto` picks the smallest K whose MASE is within
`tolerance` of the unpruned model's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from moecast.model.data.corpus import Series
from moecast.model.forecast import SeriesLike
from moecast.model.network import MoecastModel, MoEFeedForward
from moecast.quantization.routing import salience
from moecast.quantization.site_data import SiteSplit, split_site
from torch import Tensor

DEFAULT_TOLERANCE = 0.02
DEFAULT_HORIZON = 32
MAX_SUBSETS = 1000
MAX_CALIBRATION_WINDOWS_PER_SERIES = 8
# Every expert's output on every calibration token is held at once: 128 windows of the edge
# model are 8k tokens, 34 MB; plenty to rank 70 subsets, and each K costs a forward per layer.
MAX_CALIBRATION_WINDOWS = 128
BATCH_SIZE = 64


@dataclass(frozen=True)
class LayerChoice:
    kept: list[int]
    reconstruction_error: float  # squared error of the layer output / its squared norm
    searched: str  # "subsets" or "saliency"


@dataclass(frozen=True)
class KeepOption:
    """The model pruned to `keep` experts per layer, and its held-out accuracy."""

    keep: int
    layers: list[LayerChoice]
    mase: float

    @property
    def kept_experts(self) -> list[list[int]]:
        return [layer.kept for layer in self.layers]


@dataclass(frozen=True)
class PruneReport:
    options: list[KeepOption]  # by increasing K; the last one is the unpruned model
    chosen: KeepOption
    tolerance: float | None  # None when K was given
    horizon: int
    calibration_windows: int
    evaluation_windows: int

    @property
    def baseline_mase(self) -> float:
        return self.options[-1].mase

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "baseline_mase": self.baseline_mase,
            "chosen_keep": self.chosen.keep,
            "kept_experts": self.chosen.kept_experts,
        }

    def table(self) -> str:
        """One line per K: MASE, its change against the unpruned model, layer errors."""
        lines = [
            f"held-out gmean MASE at horizon {self.horizon} ({self.evaluation_windows} windows; "
            f"experts chosen on {self.calibration_windows} calibration windows)",
            f"{'keep':>4}  {'MASE':>7}  {'change':>7}  reconstruction error per layer",
        ]
        for option in self.options:
            change = option.mase / self.baseline_mase - 1.0
            errors = " ".join(f"{layer.reconstruction_error:.3f}" for layer in option.layers)
            mark = "  <- chosen" if option is self.chosen else ""
            lines.append(f"{option.keep:>4}  {option.mase:>7.4f}  {change:>+7.2%}  {errors}{mark}")
        if self.tolerance is not None:
            lines.append(f"auto: the smallest K within {self.tolerance:.1%} of the unpruned MASE")
        return "\n".join(lines)


def prune_for_site(
    model: MoecastModel,
    series: Sequence[Series] | SeriesLike,
    *,
    keep: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    horizon: int = DEFAULT_HORIZON,
    max_subsets: int = MAX_SUBSETS,
    max_calibration_per_series: int = MAX_CALIBRATION_WINDOWS_PER_SERIES,
) -> PruneReport:
    """Prune `model` in place for the site whose `series` are given: to `keep` experts per
    layer, or (`keep=None`) to the smallest K within `tolerance` (relative MASE increase)."""
    config = model.config
    if not config.is_sparse:
        raise ValueError("the dense twin has no experts to prune")
    if horizon not in config.horizons:
        raise ValueError(f"horizon {horizon} is not one of the model's heads {config.horizons}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    start = model.kept_experts
    n_kept = min(len(kept) for kept in start)
    if keep is not None and not config.top_k <= keep <= n_kept:
        raise ValueError(f"keep must be in [top_k={config.top_k}, {n_kept}], got {keep}")
    split = split_site(
        series,
        config.context_length,
        horizon,
        max_calibration_per_series=max_calibration_per_series,
    )

    unpruned = KeepOption(
        n_kept, [LayerChoice(kept, 0.0, "unpruned") for kept in start], _mase(model, split, horizon)
    )
    if not np.isfinite(unpruned.mase):
        raise ValueError("no held-out window could be scored (MASE needs a varying context)")
    calibration = _evenly(split.calibration, MAX_CALIBRATION_WINDOWS)
    options = []
    for k in range(config.top_k, n_kept) if keep is None else [keep]:
        if k == n_kept:
            continue  # keeping them all is the unpruned option, measured once
        layers = prune_layers(model, calibration, k, max_subsets=max_subsets)
        options.append(KeepOption(k, layers, _mase(model, split, horizon)))
        model.prune_experts(start)
    options.append(unpruned)

    if keep is None:
        bound = unpruned.mase * (1.0 + tolerance)
        chosen = next(option for option in options if option.mase <= bound)
    else:
        chosen = options[0]
    model.prune_experts(chosen.kept_experts)
    return PruneReport(
        options=options,
        chosen=chosen,
        tolerance=tolerance if keep is None else None,
        horizon=horizon,
        calibration_windows=len(calibration),
        evaluation_windows=len(split.contexts),
    )


def prune_layers(
    model: MoecastModel, calibration: np.ndarray, keep: int, *, max_subsets: int = MAX_SUBSETS
) -> list[LayerChoice]:
    """Prune every layer of `model` to `keep` experts, first layer first, each fitted on the
    observed tokens that reach it from `calibration` windows `[n, context_length]`."""
    choices = []
    for block in model.blocks:
        x = _layer_input(model, block.ffn, calibration)
        choice = choose_experts(block.ffn, x, keep, max_subsets=max_subsets)
        block.ffn.prune(choice.kept)
        choices.append(choice)
    return choices


def choose_experts(
    ffn: MoEFeedForward, x: Tensor, keep: int, *, max_subsets: int = MAX_SUBSETS
) -> LayerChoice:
    """The `keep` of the layer's kept experts whose routed output best reconstructs the
    layer's output on tokens `x` `[T, d_model]`; leaves the layer as it found it."""
    candidates = ffn.kept_experts
    with torch.no_grad():
        reference = ffn(x[None], x.new_ones(1, len(x), dtype=torch.bool))[0]
        outputs = x.new_zeros(ffn.n_experts, *x.shape)  # only the candidates are ever read
        for e in candidates:
            outputs[e] = ffn.experts[e](x)
        routed = _routed(ffn, x, outputs)
        energy = reference.square().sum().clamp_min(1e-12)

        def error(subset: Sequence[int]) -> float:
            ffn.prune(subset)
            try:
                return float((_routed(ffn, x, outputs) - routed).square().sum() / energy)
            finally:
                ffn.prune(candidates)

        if math.comb(len(candidates), keep) <= max_subsets:
            best = min(itertools.combinations(candidates, keep), key=error)
            return LayerChoice(list(best), error(best), "subsets")
        counts, sums = salience(ffn, x)
        saliency = torch.where(counts > 0, sums / counts.clamp_min(1), 0.0)
        ranked = sorted(candidates, key=lambda e: -float(saliency[e]))
        kept = sorted(ranked[:keep])
        return LayerChoice(kept, error(kept), "saliency")


def _routed(ffn: MoEFeedForward, x: Tensor, outputs: Tensor) -> Tensor:
    """The routed (not shared) part of the layer's output, from precomputed expert outputs
    `[n_experts, T, d_model]`, with the layer's current routing."""
    _, weights, chosen = ffn.route(x)
    rows = torch.arange(len(x), device=x.device)[:, None]
    return (weights[..., None] * outputs[chosen, rows]).sum(1)


def _layer_input(model: MoecastModel, ffn: MoEFeedForward, windows: np.ndarray) -> Tensor:
    """The observed tokens `[T, d_model]` that reach `ffn` when `model` reads `windows`."""
    captured: list[Tensor] = []

    def capture(_ffn: object, args: tuple[Tensor, Tensor]) -> None:
        x, token_observed = args
        captured.append(x[token_observed])

    hook = ffn.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for batch in torch.from_numpy(windows).split(BATCH_SIZE):
                model(batch, last_only=True)
    finally:
        hook.remove()
    return torch.cat(captured)


def _evenly(windows: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` windows, spread evenly over all of them (and so over the series)."""
    if len(windows) <= limit:
        return windows
    return windows[np.linspace(0, len(windows) - 1, limit).astype(int)]


def _mase(model: MoecastModel, split: SiteSplit, horizon: int) -> float:
    with torch.no_grad():
        median = torch.cat(
            [
                model.predict(batch)[horizon][..., model.config.median_index]
                for batch in torch.from_numpy(split.contexts).split(BATCH_SIZE)
            ]
        )
    return split.mase(median.double().numpy())


# prune-for keeps, in every layer, experts that carried this share of the site's routing mass.
DEFAULT_COVERAGE = 0.99


@dataclass(frozen=True)
class LoadPruning:
    """Experts kept from a site's reported routing mass (`prune_by_load`)."""

    keep: int
    kept_experts: list[list[int]]
    coverage: list[float]  # per layer: the share of the load the kept experts carried

    def table(self) -> str:
        lines = [f"keep {self.keep} experts per layer", "layer  kept experts  load share"]
        for layer, (kept, share) in enumerate(zip(self.kept_experts, self.coverage, strict=True)):
            lines.append(f"{layer:>5}  {kept!s:<12}  {share:>10.2%}")
        return "\n".join(lines)


def prune_by_load(
    model: MoecastModel,
    load: np.ndarray,
    *,
    keep: int | None = None,
    coverage: float = DEFAULT_COVERAGE,
) -> LoadPruning:
    """Prune `model` in place from routing mass measured elsewhere, e.g. the `expert_load` its
    agents report (`[n_layers, n_experts]`, summed): the site's readings never leave it.

    Keeps, per layer, the `keep` experts with the most load; `keep=None`: the fewest (at least
    top_k) that carry `coverage` of every layer's load. Unlike `prune_for_site` this cannot
    measure the accuracy cost; the agents' trial after the update is the check."""
    config = model.config
    if not config.is_sparse:
        raise ValueError("the dense twin has no experts to prune")
    load = np.asarray(load, dtype=np.float64)
    if load.shape != (config.n_layers, config.n_experts):
        raise ValueError(f"load must be [{config.n_layers}, {config.n_experts}], got {load.shape}")
    if not np.isfinite(load).all() or (load < 0).any():
        raise ValueError("load must be finite and non-negative")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    candidates = model.kept_experts
    n_kept = min(len(kept) for kept in candidates)
    totals = [load[layer, kept].sum() for layer, kept in enumerate(candidates)]
    if min(totals) <= 0:
        raise ValueError("no routing load was reported for some layer: nothing to choose by")
    if keep is not None and not config.top_k <= keep <= n_kept:
        raise ValueError(f"keep must be in [top_k={config.top_k}, {n_kept}], got {keep}")
    ranked = [
        sorted(kept, key=lambda e, layer=layer: (-load[layer, e], e))
        for layer, kept in enumerate(candidates)
    ]

    def shares(k: int) -> list[float]:
        return [float(load[layer, r[:k]].sum() / totals[layer]) for layer, r in enumerate(ranked)]

    if keep is None:
        keep = next(
            (k for k in range(config.top_k, n_kept + 1) if min(shares(k)) >= coverage), n_kept
        )
    kept_experts = [sorted(r[:keep]) for r in ranked]
    model.prune_experts(kept_experts)
    return LoadPruning(keep, kept_experts, shares(keep))
