"""Routing statistics: which experts a checkpoint uses on given series, layer by layer.

    stats = collect_routing(model, series)        # raw series or windows, NaN = missing
    stats.tokens, stats.gate_mass, stats.saliency # [n_layers, n_experts]

Over the observed tokens of the windows (a token is a patch with at least one reading):

- `tokens`: top-k selections; each token selects top_k experts, so a layer sums to top_k
  times the number of tokens.
- `gate_mass`: router probability; the softmax runs over every expert, so a layer sums to the
  number of tokens, pruned experts included.
- `saliency`: over the tokens that selected an expert, the mean of its gate weight times the
  norm of its output, i.e. how far it moves the residual stream when it runs; NaN for an expert
  no token selected.

Forward hooks on the feed-forward layers recompute the routing from each layer's input with
the layer's own `route`, and run each expert again on its tokens: the model's outputs are not
touched, only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from moecast.model.data.corpus import Series
from moecast.model.forecast import SeriesLike
from moecast.model.network import MoecastModel, MoEFeedForward
from moecast.quantization.site_data import context_windows
from torch import Tensor, nn

BATCH_SIZE = 64


@dataclass(frozen=True)
class RoutingStats:
    """Routing of `windows` windows; arrays are `[n_layers, n_experts]` unless stated."""

    tokens: np.ndarray
    gate_mass: np.ndarray
    saliency: np.ndarray
    window_tokens: np.ndarray  # [n_windows, n_layers, n_experts] top-k selections per window
    observed_tokens: int
    top_k: int
    kept_experts: list[list[int]]

    @property
    def token_share(self) -> np.ndarray:
        """Share of each layer's top-k selections that went to each expert (rows sum to 1)."""
        return self.tokens / max(1, self.top_k * self.observed_tokens)

    @property
    def window_token_share(self) -> np.ndarray:
        """`token_share` of each window alone `[n_windows, n_layers, n_experts]`."""
        per_layer = self.window_tokens.sum(-1, keepdims=True)
        return self.window_tokens / np.maximum(per_layer, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (per-window selections left out)."""
        return {
            "windows": int(self.window_tokens.shape[0]),
            "observed_tokens": self.observed_tokens,
            "top_k": self.top_k,
            "kept_experts": self.kept_experts,
            "tokens": self.tokens.tolist(),
            "token_share": self.token_share.tolist(),
            "gate_mass": self.gate_mass.tolist(),
            # JSON has no NaN: an expert no token selected has no saliency.
            "saliency": [[None if np.isnan(v) else float(v) for v in row] for row in self.saliency],
        }


def collect_routing(
    model: MoecastModel,
    series: Sequence[Series] | SeriesLike,
    *,
    max_windows_per_series: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> RoutingStats:
    """Run `model` over `series` (cut into context windows, see `context_windows`) and record
    its routing. Series of exactly `context_length` points are used as they are."""
    config = model.config
    if not config.is_sparse:
        raise ValueError("routing statistics need a mixture-of-experts model, not the dense twin")
    device = next(model.parameters()).device
    windows = torch.from_numpy(
        context_windows(series, config.context_length, max_windows_per_series)
    ).to(device)
    shape = (config.n_layers, config.n_experts)
    gate_mass, salience_sums = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    batch_tokens: dict[int, Tensor] = {}  # layer -> [batch, n_experts] of the current batch
    window_tokens: list[Tensor] = []

    def recorder(layer: int):
        def record(ffn: nn.Module, args: tuple[Tensor, Tensor], _output: object) -> None:
            x, token_observed = args
            x, observed = x.reshape(-1, x.shape[-1]), token_observed.reshape(-1)
            probs, _, chosen = ffn.route(x)
            selected = F.one_hot(chosen, config.n_experts).sum(1) * observed[:, None]
            batch_tokens[layer] = selected.view(*token_observed.shape, -1).sum(1)
            gate_mass[layer] += (probs * observed[:, None]).sum(0)
            salience_sums[layer] += salience(ffn, x[observed])[1]

        return record

    hooks = [
        block.ffn.register_forward_hook(recorder(layer)) for layer, block in enumerate(model.blocks)
    ]
    model.eval()
    try:
        with torch.no_grad():
            for batch in windows.split(batch_size):
                model(batch, last_only=True)
                window_tokens.append(torch.stack([batch_tokens[i] for i in range(len(hooks))], 1))
    finally:
        for hook in hooks:
            hook.remove()

    per_window = torch.cat(window_tokens).double().cpu().numpy()
    tokens = per_window.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        saliency = salience_sums.double().cpu().numpy() / tokens  # 0 / 0: never selected
    patches = windows.isfinite().view(len(windows), -1, config.patch_len)
    return RoutingStats(
        tokens=tokens,
        gate_mass=gate_mass.double().cpu().numpy(),
        saliency=saliency,
        window_tokens=per_window,
        observed_tokens=int(patches.any(-1).sum()),
        top_k=config.top_k,
        kept_experts=model.kept_experts,
    )


def salience(ffn: MoEFeedForward, x: Tensor) -> tuple[Tensor, Tensor]:
    """For tokens `x` `[T, d_model]` of one layer: per expert, how many tokens selected it and
    the sum over them of gate weight times the norm of the expert's output."""
    _, weights, chosen = ffn.route(x)
    counts, sums = x.new_zeros(ffn.n_experts), x.new_zeros(ffn.n_experts)
    for e in ffn.kept_experts:
        token, slot = torch.where(chosen == e)
        output = ffn.experts[e](x.index_select(0, token))
        counts[e] = token.numel()
        sums[e] = (weights[token, slot] * output.norm(dim=-1)).sum()
    return counts, sums
