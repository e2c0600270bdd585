"""Forecasting with a moecast model: raw series in, raw-scale quantile forecasts out.

    forecaster = Forecaster.from_pretrained("model/weights/edge")
    fc = forecaster.predict([temperature, humidity], horizon=96)
    fc.median            # [2, 96]
    fc.quantile(0.9)     # [2, 96]

Series may have any length (only the last `context_length` points are read) and NaN for
missing readings. Horizons beyond the longest head follow Time-MoE's greedy schedule: the
largest head that fits, its median fed back as context, repeat. A series with no observed value
gets an all-NaN forecast rather than failing the whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from moecast.model.checkpoint import load_checkpoint
from moecast.model.network import MoecastModel

SeriesLike = np.ndarray | Sequence[float] | Sequence[np.ndarray] | Sequence[Sequence[float]]


@dataclass(frozen=True)
class Forecast:
    """Quantile forecasts `[batch, horizon, n_quantiles]` on the raw scale of each series."""

    quantiles: np.ndarray
    levels: tuple[float, ...]
    steps: tuple[int, ...]  # the heads used, in order (their sum is the horizon)

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    def head(self, steps: int) -> Forecast:
        """The first `steps` steps of this forecast."""
        return Forecast(self.quantiles[:, :steps], self.levels, self.steps)

    def quantile(self, level: float) -> np.ndarray:
        """One quantile level `[batch, horizon]`; it must be one of the model's levels."""
        matches = [i for i, q in enumerate(self.levels) if abs(q - level) < 1e-9]
        if not matches:
            raise ValueError(f"quantile {level} is not among the model's levels {self.levels}")
        return self.quantiles[..., matches[0]]


def greedy_schedule(horizon: int, heads: Sequence[int]) -> list[int]:
    """Time-MoE's schedule: repeatedly take the largest head that fits what is left."""
    if not isinstance(horizon, int | np.integer) or isinstance(horizon, bool) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    if min(heads) != 1:
        raise ValueError(f"heads must include 1 to reach every horizon, got {list(heads)}")
    steps, left = [], int(horizon)
    while left:
        step = max(h for h in heads if h <= left)
        steps.append(step)
        left -= step
    return steps


def as_batch(series: SeriesLike) -> list[np.ndarray]:
    """Validate user input into a list of 1-D float64 arrays, with errors that name the row."""
    if isinstance(series, torch.Tensor):
        series = series.detach().cpu().numpy()
    if isinstance(series, np.ndarray):
        if series.ndim == 1:
            rows = [series]
        elif series.ndim == 2:
            rows = list(series)
        else:
            raise ValueError(
                f"series must be 1-D (one series) or 2-D [batch, time], got shape {series.shape}"
            )
    elif isinstance(series, Sequence) and not isinstance(series, str | bytes):
        if len(series) and all(np.ndim(s) == 0 for s in series):
            rows = [np.asarray(series)]
        else:
            rows = list(series)
    else:
        raise ValueError(f"series must be an array or a sequence of arrays, got {type(series)}")
    if not rows:
        raise ValueError("the batch of series is empty")

    batch = []
    for i, row in enumerate(rows):
        try:
            arr = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"series {i} is not numeric: {err}") from None
        if arr.ndim != 1:
            raise ValueError(f"series {i} must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"series {i} is empty")
        infinite = np.flatnonzero(np.isinf(arr))
        if infinite.size:
            raise ValueError(
                f"series {i} has infinite values (first at position {infinite[0]}); "
                "use NaN for missing readings"
            )
        batch.append(arr)
    return batch


def _left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(rows), length), np.nan)
    for i, row in enumerate(rows):
        tail = row[-length:]
        out[i, length - tail.size :] = tail
    return out


class Forecaster:
    """One small class users call: wraps a model, handles batching, scaling and long horizons."""

    def __init__(self, model: MoecastModel, batch_size: int = 256) -> None:
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **kwargs) -> Forecaster:
        return cls(load_checkpoint(path, device=device), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, series: SeriesLike, horizon: int) -> Forecast:
        cfg = self.config
        steps = greedy_schedule(horizon, cfg.horizons)
        rows = as_batch(series)
        longest = min(max(r.size for r in rows), cfg.context_length)
        context = _left_pad(rows, -(-longest // cfg.patch_len) * cfg.patch_len)

        # Standardise in float64 before the float32 network: readings such as 1.7e9 ± 3 keep
        # their detail. The network is affine equivariant, so this changes nothing else.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN forecast below
            loc = np.nan_to_num(np.nanmean(context, axis=1, keepdims=True))
            scale = np.nan_to_num(np.nanstd(context, axis=1, keepdims=True))
        scale[scale == 0] = 1.0
        z = torch.from_numpy(((context - loc) / scale).astype(np.float32)).to(self.device)

        pieces = []
        for step in steps:
            q = self._predict_head(z, step)
            pieces.append(q)
            z = self._extend(z, q[..., cfg.median_index])
        quantiles = torch.cat(pieces, dim=1).double().cpu().numpy()
        quantiles = quantiles * scale[:, :, None] + loc[:, :, None]
        return Forecast(quantiles=quantiles, levels=cfg.quantiles, steps=tuple(steps))

    def _predict_head(self, context: torch.Tensor, head: int) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(
                [self.model.predict(chunk)[head] for chunk in context.split(self.batch_size, dim=0)]
            )

    def _extend(self, context: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Append forecast values, keep at most context_length points, re-align to patches."""
        cfg = self.config
        context = torch.cat([context, values.to(context.dtype)], dim=1)[:, -cfg.context_length :]
        short = -context.shape[1] % cfg.patch_len
        if short:
            context = torch.nn.functional.pad(context, (short, 0), value=float("nan"))
        return context
