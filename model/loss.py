"""Training objective: pinball loss of every head at every position, plus expert balance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moecast.model.network import MoecastModel
from torch import Tensor, nn


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Tensor, valid: Tensor) -> Tensor:
    """Mean quantile loss over valid targets.

    `pred` is `[..., n_quantiles]`, `target` and `valid` are `[...]`; invalid targets (missing
    readings, steps past the end of the window) contribute nothing.
    """
    diff = torch.where(valid, target, 0.0)[..., None] - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).mean(-1)
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def future_targets(window: Tensor, context_length: int, patch_len: int, horizon: int) -> Tensor:
    """Targets of the head `horizon` at every token: row i holds the points after patch i.

    `window` is `[batch, context_length + max_horizon]`; the result is
    `[batch, context_length // patch_len, horizon]`.
    """
    n_tokens = context_length // patch_len
    return window[:, patch_len:].unfold(1, horizon, patch_len)[:, :n_tokens]


@dataclass
class LossParts:
    total: Tensor
    quantile: Tensor
    balance: Tensor


def sequence_loss(model: MoecastModel | nn.Module, window: Tensor) -> LossParts:
    """Loss of one batch of training windows `[batch, context_length + max_horizon]` (NaN =
    missing). The model reads the first `context_length` points; targets are normalised with
    the context's own statistics, so the loss is scale free. `model` may be a DDP wrapper."""
    cfg = getattr(model, "module", model).config
    if window.shape[1] != cfg.context_length + cfg.max_horizon:
        raise ValueError(
            f"training windows must have {cfg.context_length + cfg.max_horizon} points "
            f"(context {cfg.context_length} + horizon {cfg.max_horizon}), got {window.shape[1]}"
        )
    out = model(window[:, : cfg.context_length])
    normalised = (window - out.loc) / out.scale
    quantiles = torch.tensor(cfg.quantiles, dtype=window.dtype, device=window.device)
    per_head = []
    for h, pred in out.forecasts.items():
        target = future_targets(normalised, cfg.context_length, cfg.patch_len, h)
        per_head.append(pinball_loss(pred, target, quantiles, ~torch.isnan(target)))
    quantile = torch.stack(per_head).mean()
    total = quantile + cfg.balance_loss_weight * out.balance_loss
    return LossParts(total=total, quantile=quantile, balance=out.balance_loss)
