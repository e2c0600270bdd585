"""The moecast network in one file.

A decoder-only transformer over patches of a univariate series (Time-MoE, Shi et al. 2025):
in-model z-score over the observed points, a gated embedding of values and observed-mask,
pre-norm blocks (RMSNorm, RoPE, causal attention) whose feed-forward layers are sparse
mixtures of experts, and one quantile head per forecast horizon. Every position is a forecast
origin: the head at token i predicts the points after the end of patch i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from moecast.model.config import ModelConfig
from torch import Tensor, nn


@dataclass
class MoecastOutput:
    """What one forward pass returns.

    `forecasts[h]` holds normalised quantiles `[batch, tokens, h, n_quantiles]` (`tokens` is 1
    with `last_only`); `loc` and `scale` (`[batch, 1]`) map them back to the raw scale.
    `expert_load[l, e]` is the router probability mass that layer l gave expert e, summed over
    observed tokens (each layer's row sums to the number of observed tokens);
    `expert_tokens[l, e]` counts the observed tokens that selected expert e among their top-k.
    With `medians_from=t`, `medians[h]` `[batch, tokens - t, h]` holds each head's median from
    every token t.. (normalised): the forecast origins the combination scores.
    """

    forecasts: dict[int, Tensor]
    loc: Tensor
    scale: Tensor
    balance_loss: Tensor
    expert_load: Tensor
    expert_tokens: Tensor
    token_observed: Tensor
    medians: dict[int, Tensor] | None = None


def observed_zscore(values: Tensor, observed: Tensor, min_scale: float = 1e-6):
    """Mean and standard deviation over the observed points of each row.

    A constant series gets the floor `min_scale`, so its forecast stays (almost) constant
    instead of dividing by zero; a row with nothing observed gets loc 0, scale `min_scale`.
    """
    count = observed.sum(-1, keepdim=True).clamp_min(1)
    loc = torch.where(observed, values, 0.0).sum(-1, keepdim=True) / count
    centred = torch.where(observed, values - loc, 0.0)
    scale = (centred.square().sum(-1, keepdim=True) / count).sqrt().clamp_min(min_scale)
    return loc, scale


def rope_tables(n: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.arange(n, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class PatchEmbedding(nn.Module):
    """Gated (SwiGLU-style, as Time-MoE) embedding of a patch's values and its observed-mask.

    The mask is an input, not only a multiplier: the model must tell a missing point from a
    point that happens to equal the mean.
    """

    def __init__(self, patch_len: int, d_model: int) -> None:
        super().__init__()
        self.value = nn.Linear(2 * patch_len, d_model)
        self.gate = nn.Linear(2 * patch_len, d_model)

    def forward(self, values: Tensor, observed: Tensor) -> Tensor:
        z = torch.cat([values, observed.to(values.dtype)], dim=-1)
        return F.silu(self.gate(z)) * self.value(z)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, width: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * width, bias=False)
        self.down = nn.Linear(width, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, n, head_dim]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d))


@dataclass
class Routing:
    """Per-layer routing record over the observed tokens."""

    balance_loss: Tensor  # scalar
    load: Tensor  # [n_experts] router probability mass
    tokens: Tensor  # [n_experts] top-k selections


class MoEFeedForward(nn.Module):
    """Softmax router, top-k routed SwiGLU experts, plus a shared expert behind a sigmoid gate.

    Dispatch is grouped per expert: each expert runs once on the tokens that chose it.
    Top-k weights are the raw softmax probabilities (not renormalised), as in Time-MoE.

    Experts can be pruned for a site (`prune`): the softmax still runs over every expert, so a
    pruned expert's probability is lost rather than shared out among the others, but top-k
    chooses among the kept experts only. A pruned expert keeps its weights, never runs, and is
    left out of an ONNX export.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(
            SwiGLU(config.d_model, config.expert_d_ff) for _ in range(config.n_experts)
        )
        self.shared = SwiGLU(config.d_model, config.d_ff) if config.shared_expert else None
        self.shared_gate = (
            nn.Linear(config.d_model, 1, bias=False) if config.shared_expert else None
        )
        # The same set twice: a tensor for the router (it follows .to(device)) and a tuple for
        # the dispatch loop, which export traces, so pruned experts never reach the graph. Not
        # in the state dict: model.checkpoint keeps the kept lists in config.json, and
        # checkpoints saved before pruning existed still load.
        self.register_buffer(
            "kept_mask", torch.ones(config.n_experts, dtype=torch.bool), persistent=False
        )
        self.kept_experts: tuple[int, ...] = tuple(range(config.n_experts))

    def prune(self, kept_experts: Sequence[int]) -> None:
        """Route only to `kept_experts` (indices into `experts`); all indices undo pruning."""
        kept = sorted({int(e) for e in kept_experts})
        if len(kept) != len(kept_experts):
            raise ValueError(f"kept experts repeat an index: {list(kept_experts)}")
        if kept and not 0 <= kept[0] <= kept[-1] < self.n_experts:
            raise ValueError(f"kept experts {kept} are not all in [0, {self.n_experts})")
        if len(kept) < self.top_k:
            raise ValueError(f"keep at least top_k={self.top_k} experts, got {kept}")
        self.kept_mask.copy_(torch.isin(torch.arange(self.n_experts), torch.tensor(kept)))
        self.kept_experts = tuple(kept)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router probabilities over all experts `[T, n_experts]`, and the top-k weights and
        expert indices `[T, top_k]` among the kept experts."""
        probs = F.softmax(self.router(x), dim=-1, dtype=torch.float32)
        # -1 is below every probability: a pruned expert is never chosen.
        weights, chosen = torch.where(self.kept_mask, probs, -1.0).topk(self.top_k, dim=-1)
        return probs, weights, chosen

    def forward(self, x: Tensor, token_observed: Tensor) -> tuple[Tensor, Routing]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, weights, chosen = self.route(x)
        weights = weights.to(x.dtype)

        out = torch.zeros_like(x)
        for e in self.kept_experts:
            token, slot = torch.where(chosen == e)
            # index_select (not x[token]): its backward is an index_add, several times faster
            # on CPU than the scatter behind advanced indexing.
            picked = self.experts[e](x.index_select(0, token)) * weights[token, slot, None]
            out.index_add_(0, token, picked)
        if self.shared is not None:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)

        routing = self._routing(probs, chosen, token_observed.reshape(-1))
        return out.view(shape), routing

    def _routing(self, probs: Tensor, chosen: Tensor, observed: Tensor) -> Routing:
        weight = observed.to(probs.dtype)[:, None]
        n_tokens = weight.sum().clamp_min(1.0)
        selected = F.one_hot(chosen, self.n_experts).sum(1).to(probs.dtype) * weight  # [T, E]
        load = (probs * weight).sum(0)
        tokens = selected.sum(0)
        # Switch / Time-MoE balance loss: N * sum_i f_i * P_i with f_i the share of the T*k
        # assignments that went to expert i and P_i its mean router probability. It is 1 for
        # perfectly uniform routing and grows towards N as routing collapses.
        f = tokens / (n_tokens * self.top_k)
        p = load / n_tokens
        return Routing(balance_loss=self.n_experts * (f * p).sum(), load=load, tokens=tokens)


class DenseFeedForward(nn.Module):
    """The dense twin's feed-forward: one SwiGLU, no router."""

    kept_experts: tuple[int, ...] = (0,)  # the one SwiGLU counts as one expert, never pruned

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ffn = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x: Tensor, token_observed: Tensor) -> tuple[Tensor, Routing]:
        n = token_observed.sum().to(x.dtype).reshape(1)
        return self.ffn(x), Routing(balance_loss=x.new_zeros(()), load=n, tokens=n)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.ffn = MoEFeedForward(config) if config.is_sparse else DenseFeedForward(config)

    def forward(self, x, cos, sin, attn_mask, token_observed) -> tuple[Tensor, Routing]:
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask)
        y, routing = self.ffn(self.ffn_norm(x), token_observed)
        return x + y, routing


def monotone_quantiles(raw: Tensor, anchor: int) -> Tensor:
    """Quantiles that cannot cross: the anchor (median) is free, the others are reached from it
    by cumulative softplus steps upwards and downwards."""
    centre = raw[..., anchor : anchor + 1]
    up = short_cumsum(F.softplus(raw[..., anchor + 1 :]))
    down = short_cumsum(F.softplus(raw[..., :anchor]).flip(-1)).flip(-1)
    return torch.cat([centre - down, centre, centre + up], dim=-1)


def short_cumsum(x: Tensor, unrolled: bool | None = None) -> Tensor:
    """`x.cumsum(-1)` for a last dimension of a few elements (the quantile levels on one side
    of the median). CUDA's scan kernel for the innermost dimension is built for long rows: on
    an H200 the heads' eight such scans over `[1024 windows, 64 tokens, h, 4]` took 84 % of the GPU
    time of a training forward and backward pass (10 ms each, in torch.profiler). There, or
    with `unrolled`, the sum is unrolled into adds; elsewhere (the CPU, the ONNX export, whose
    graph stays one CumSum) it is a plain cumsum."""
    if not (x.is_cuda if unrolled is None else unrolled):
        return x.cumsum(-1)
    parts = [x[..., :1]]
    for i in range(1, x.shape[-1]):
        parts.append(parts[-1] + x[..., i : i + 1])
    return torch.cat(parts, dim=-1)


def last_observed(z: Tensor, observed: Tensor, patch_len: int) -> Tensor:
    """`[batch, tokens]`: the last observed value up to the end of each patch (0, the context
    mean, where none is yet).

    A running maximum of observed positions, taken per patch and then carried forward as a
    masked max over a lower triangle: `cummax` has no ONNX export, and the triangle is only
    tokens x tokens.
    """
    b, length = z.shape
    n = length // patch_len
    position = torch.arange(length, device=z.device).expand(b, length)
    last_in_patch = torch.where(observed, position, -1).view(b, n, patch_len).amax(-1)
    earlier = torch.ones(n, n, dtype=torch.bool, device=z.device).tril()
    last = torch.where(earlier, last_in_patch[:, None, :], -1).amax(-1)
    value = z.gather(1, last.clamp_min(0))
    return torch.where(last >= 0, value, 0.0)


def hold_probability(
    values: Tensor, observed: Tensor, horizon: int, last: Tensor | None = None
) -> Tensor:
    """`[batch, horizon]`: for each lag k = 1 .. horizon, the share of the context's observed
    pairs k steps apart whose values are exactly equal (0 where there is no such pair). With
    `last` `[batch]` (the last observed value), only pairs that start at that value count: how
    often the current level itself held for k steps (`hold_by_level`; not shipped: on the
    sensor benchmark's sample-and-hold series it is 26-51 % worse, `benchmarks/COMBINE.md`).

    Sensors that report on change, hold their last reading, or take a few discrete states
    (occupancy, relays, coarse ADC steps) repeat values exactly; continuous ones almost never.
    One gather of `[batch, horizon, length]` rather than a loop, so the ONNX graph stays small.
    """
    length = values.shape[1]
    # A zero computed from the input: built from constants alone, the index table below would
    # be folded into the exported graph, 256 KB of int64 in every bundle.
    zero = observed[:1, :1].sum() * 0
    lag = torch.arange(1, horizon + 1, device=values.device)[:, None] + zero
    later = torch.arange(length, device=values.device)[None, :] + lag  # [horizon, length]
    inside = later < length
    later = later.clamp_max(length - 1)
    pairs = observed[:, None, :] & observed[:, later] & inside
    if last is not None:
        # A radiation sensor's nights repeat zero for hours, so the context as a whole looks
        # held while a daytime level never repeats: judged by its own level, it is not.
        pairs = pairs & (values == last[:, None])[:, None, :]
    same = pairs & (values[:, later] == values[:, None, :])
    # Counted in the values' dtype (exact: at most `length`), not the int64 a boolean sum
    # gives: half the bytes at the model's largest moment.
    return same.to(values.dtype).sum(-1) / pairs.to(values.dtype).sum(-1).clamp_min(1)


def hold_decode(quantiles: Tensor, last: Tensor, held: Tensor, levels: Tensor) -> Tensor:
    """Quantiles `[batch, h, n_levels]` of a forecast whose step k repeats `last` `[batch]`
    exactly with probability `held[:, k]` (`hold_probability`).

    The predictive distribution then has an atom of mass p at the last value. Whatever the rest
    of the distribution, when p > 1/2 the atom covers every level in [1 - p, p] (the median
    among them), so those quantiles are the last value exactly; the others keep the network's
    value, clipped to their side of it. A quantile head alone can only come close to an atom,
    and on a held sensor "close" is all of its error.
    """
    p = held[..., None]
    atom = last[:, None, None].expand_as(quantiles)
    clipped = torch.where(
        levels < 1 - p,
        torch.minimum(quantiles, atom),
        torch.where(levels > p, torch.maximum(quantiles, atom), atom),
    )
    return torch.where(p > 0.5, clipped, quantiles)


def take_points(x: Tensor, index: Tensor) -> Tensor:
    """`x[..., index]` for a flat `index`: gathered as rows of the table with the points first,
    then turned back. ONNX Runtime copies a row per index along the first axis, but one
    element per index along the last."""
    return x.movedim(-1, 0).index_select(0, index).movedim(0, -1)


def fill_forward(z: Tensor, observed: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """`[batch, length]` each point's value, or where it is missing the last observed value
    at most `window - 1` points before it; and whether there was one.

    A masked max over a `[length, window]` band rather than `cummax` (no ONNX export).
    """
    length = z.shape[1]
    zero = observed[:1, :1].sum() * 0  # keeps the index table out of the graph's constants
    back = torch.arange(window, device=z.device)[None, :] + zero
    position = torch.arange(length, device=z.device)[:, None] - back  # [length, window]
    inside = position >= 0
    position = position.clamp_min(0)
    latest = torch.where(observed[:, position] & inside, position, -1).amax(-1)
    found = latest >= 0
    return torch.where(found, z.gather(1, latest.clamp_min(0)), 0.0), found


@dataclass
class Candidates:
    """The classical forecasts `[batch, classical, origins, horizon]` from every scored
    origin's end (normalised scale) and whether each is defined, and the context's value at
    each target (`truth` `[batch, origins, horizon]`; `scored`: inside the context, observed,
    and from a scored origin). Candidate 0 is naive, then seasonal naive for each of `periods`,
    with `shifted` the same again carrying the level change since a period before the origin,
    with `averaged` the mean over several cycles for each period, then drift for each window,
    then the last `smoothed` are linear exponential smoothing for each smoothing constant.
    The origins are the tokens from `first` to the last, whose targets lie beyond the
    context."""

    forecasts: Tensor
    defined: Tensor
    truth: Tensor
    scored: Tensor
    first: int
    periods: int
    shifted: bool = False
    smoothed: int = 0
    averaged: bool = False

    def families(self) -> list[tuple[int, int, bool]]:
        """[start, stop) of each family that sends its best member into the mix (seasonal,
        then shifted seasonal, seasonal mean, drift and smoothing: whichever there are), and
        whether it weighs in one step ahead.

        One step ahead, drift is naive plus one slope, a near copy of naive that would double
        naive's weight (measured: 5 % worse on noisy series at h=1), the shifted seasonal
        adds the noise of two levels to a one-step forecast (4.8 % worse on seasonal series
        at h=1), smoothing cost 3.5 % on noisy series at h=1, and the seasonal mean one step
        ahead won 18 % on traffic sensors but lost 10 % on solar ones: all weigh in from two
        steps on."""
        bounds = [(1, 1 + self.periods, True)]
        for present in (self.shifted, self.averaged):
            if present:
                start = bounds[-1][1]
                bounds.append((start, start + self.periods, False))
        stop = self.forecasts.shape[1] - self.smoothed
        if stop > bounds[-1][1]:
            bounds.append((bounds[-1][1], stop, False))
        if self.smoothed:
            bounds.append((stop, stop + self.smoothed, False))
        return bounds


def first_origin(min_origin: int, patch_len: int, tokens: int) -> int:
    """The first token whose end has `min_origin` points behind it (at most the last)."""
    return min(max(-(-min_origin // patch_len) - 1, 0), tokens - 1)


def classical_candidates(
    z: Tensor,
    observed: Tensor,
    last: Tensor,
    patch_len: int,
    periods: Sequence[int],
    min_origin: int,
    horizon: int,
    drifts: Sequence[int] = (),
    shifted: bool = False,
    smoothing: Sequence[float] = (),
    dampings: Sequence[float] = (1.0,),
    cycles: int = 0,
    trends: Sequence[float] = (),
) -> Candidates:
    """Naive, seasonal naive (with `shifted`, also level-shifted; with `cycles` > 1, also
    averaged over that many cycles), drift (over `drifts` windows, then Holt's trend for each
    of `trends` and `dampings`) and linear exponential smoothing forecasts of
    `horizon` steps from the end of every token that can be scored, with the targets to score
    them on. `last` `[batch, tokens]` is the last observed value up to each token's end."""
    b, length = z.shape
    n = length // patch_len
    first = first_origin(min_origin, patch_len, n)
    zero = observed[:1, :1].sum() * 0  # keeps the index tables out of the graph's constants
    end = (torch.arange(first, n, device=z.device) + 1 + zero) * patch_len  # [origins]
    step = torch.arange(1, horizon + 1, device=z.device) + zero  # [horizon]
    target = end[:, None] + step[None, :] - 1  # [origins, horizon]; the last's lie beyond
    inside = target < length
    within = target.clamp_max(length - 1)
    # An origin is scored once it has min_origin points behind it (every one from `first`
    # on), half of them observed.
    seen = observed.to(z.dtype).view(b, n, patch_len).sum(-1).cumsum(-1)[:, first:]
    scored = inside & observed[:, within] & (seen >= min_origin // 2)[..., None]

    # Seasonal naive for step k repeats the value p * ceil(k / p) points before the target:
    # last period's, or for p < k the latest full period's. A missing one is taken a period
    # earlier still, else filled forward over a short gap. All periods in one gather.
    p = (torch.tensor(periods, device=z.device) + zero)[:, None, None]  # [periods, 1, 1]
    repeated = target - p * ((step + p - 1) // p)  # [periods, origins, horizon]
    earlier = (repeated - p).clamp_min(0)
    both = torch.stack([repeated.clamp_min(0), earlier]).flatten()
    seen_at = take_points(observed, both).view(b, 2, *repeated.shape)
    use_earlier = ~seen_at[:, 0] & seen_at[:, 1] & (repeated >= p)
    source = torch.where(use_earlier, earlier, repeated)  # [batch, periods, origins, horizon]
    filled, found = fill_forward(z, observed, 4 * patch_len)
    index = source.clamp_min(0).flatten(1)
    seasonal = filled.gather(1, index).view(source.shape)
    defined = found.gather(1, index).view(source.shape) & (source >= 0)
    naive = last[:, None, first:, None].expand(b, 1, n - first, horizon)
    forecasts, defined = [naive, seasonal], [torch.ones_like(defined[:, :1]), defined]
    if shifted:
        # Seasonal naive after a level change (a failed chiller, a moved sensor) repeats the
        # old level until a period has passed. The shifted one adds the change of the level
        # (the mean over the last patch) from the repeated point's cycle to the origin's:
        # x[s] + level(end) - level(end - (target - s)).
        level, known = _patch_levels(filled, found, patch_len)
        back = end[:, None] - 1 - (target - source)  # [batch, periods, origins, horizon]
        before = back.clamp_min(0).flatten(1)
        now = level.index_select(1, end - 1)[:, None, :, None]
        shift = now - level.gather(1, before).view(back.shape)
        forecasts.append(seasonal + shift)
        ok = known.gather(1, before).view(back.shape) & (back >= patch_len - 1)
        defined.append(defined[1] & ok & known.index_select(1, end - 1)[:, None, :, None])
    if cycles > 1:
        # Seasonal naive repeats one cycle's noise. The mean of the same phase over the last
        # `cycles` cycles (statsforecast's SeasonalWindowAverage) averages it out: at every
        # point a causal sum over the cycles (a dilated convolution), read where seasonal
        # naive reads. As many cycles as the context holds; a missing reading filled
        # forward as seasonal naive's is (measured: with 30 % dropped, readings alone were
        # 0.5 % worse at h=8 to 64).
        table = torch.stack([filled, found.to(z.dtype)], 1)  # [batch, 2, length]
        sums = []
        for q in periods:
            taps = min(cycles, -(-length // q))
            padded = F.pad(table, ((taps - 1) * q, 0))
            sums.append(F.conv1d(padded, table.new_ones(2, 1, taps), dilation=q, groups=2))
        sums = torch.stack(sums, 2).flatten(2)  # [batch, 2, periods * length]
        offset = (torch.arange(len(periods), device=z.device) + zero)[:, None, None] * length
        at = (repeated.clamp_min(0) + offset).flatten()
        total, count = take_points(sums, at).view(b, 2, *repeated.shape).unbind(1)
        forecasts.append(total / count.clamp_min(1.0))
        defined.append((count > 0) & (repeated >= 0))
    if drifts:
        # Drift over w points: the last value plus the slope from the (filled) value w points
        # before the origin's end to it, per step.
        w = (torch.tensor(drifts, device=z.device) + zero)[:, None]  # [drifts, 1]
        back = end - 1 - w  # [drifts, origins]
        start = back.clamp_min(0).flatten()
        start_value = filled.index_select(1, start).view(b, *back.shape)
        start_found = found.index_select(1, start).view(b, *back.shape) & (back >= 0)
        slope = (last[:, None, first:] - start_value) / w.to(z.dtype)
        forecasts.append(last[:, None, first:, None] + slope[..., None] * step.to(z.dtype))
        defined.append(start_found[..., None].expand(-1, -1, -1, horizon))
    if trends:
        # Into the drift family: the best of drift and Holt's trend joins the mix.
        added, known = holt_trends(
            z, observed, trends, patch_len, first, step.to(z.dtype), dampings
        )
        forecasts.append(last[:, None, first:, None] + added)
        defined.append(known)
    if smoothing:
        smoothed, known = linear_smoothing(
            z, observed, smoothing, patch_len, first, step.to(z.dtype), dampings
        )
        forecasts.append(smoothed)
        defined.append(known)
    return Candidates(
        torch.cat(forecasts, 1),
        torch.cat(defined, 1),
        z[:, within],
        scored,
        first,
        len(periods),
        shifted,
        len(smoothing) * len(dampings),
        cycles > 1,
    )


SMOOTHING_TAIL = 1e-4  # the weight an exponential mean gives what lies before its kernel


def linear_smoothing(
    z: Tensor,
    observed: Tensor,
    alphas: Sequence[float],
    patch_len: int,
    first: int,
    step: Tensor,
    dampings: Sequence[float] = (1.0,),
) -> tuple[Tensor, Tensor]:
    """Brown's linear exponential smoothing from the end of every token from `first` on, one
    per smoothing constant and damping (all the alphas with the first damping, then with the
    next): `[batch, alphas * dampings, origins, horizon]` forecasts and whether each is
    defined.

    With s1 the exponentially weighted mean of the observed values and s2 that of s1, the
    level is 2 s1 - s2 and the trend alpha / (1 - alpha) (s1 - s2) per step (k steps ahead,
    d + ... + d ** k of them for a damping d): undamped, exact on a straight line; a level
    that follows slow drift with the noise averaged out. The means are over the observed
    points only (weights renormalised over them, so a gap or the start of the context is no
    bias), cut where the weights fall below `SMOOTHING_TAIL`: causal convolutions (no
    recurrence in the graph), s2 only at the tokens' ends. Undefined where no observed point
    carries weight."""
    reach = smoothing_reach(alphas, patch_len, z.shape[1])

    def mean(x: Tensor, weight: Tensor, stride: int) -> tuple[Tensor, Tensor]:
        return exponential_means(x, weight, alphas, reach, stride)

    s1, known = mean(z[:, None], observed.to(z.dtype)[:, None], 1)  # [batch, alphas, length]
    # Where s1 is known at a token's end, so is s2 (s1 there has weight 1 in it).
    s2, _ = mean(s1, known.to(z.dtype), patch_len)  # [batch, alphas, tokens]
    s1, known = s1[..., patch_len - 1 :: patch_len], known[..., patch_len - 1 :: patch_len]
    s1, s2 = s1[..., first:], s2[..., first:]  # [batch, alphas, origins]
    gain = torch.tensor([a / (1 - a) for a in alphas], device=z.device, dtype=z.dtype)
    trend = gain[:, None] * (s1 - s2)
    level = (2 * s1 - s2)[..., None]
    forecasts = torch.cat(
        [
            level + trend[..., None] * (torch.pow(d, step).cumsum(-1) if d < 1 else step)
            for d in dampings
        ],
        1,
    )
    return forecasts, known[..., first:, None].repeat(1, len(dampings), 1, step.shape[-1])


def smoothing_reach(alphas: Sequence[float], patch_len: int, length: int) -> int:
    """Taps of the exponential means' kernels: where the smallest alpha's weights fall below
    `SMOOTHING_TAIL`, at least a patch, at most the context."""
    reach = max(math.ceil(math.log(SMOOTHING_TAIL) / math.log1p(-a)) for a in alphas)
    return min(max(reach, patch_len), length)


def exponential_means(
    x: Tensor, weight: Tensor, alphas: Sequence[float], reach: int, stride: int
) -> tuple[Tensor, Tensor]:
    """`x` `[batch, 1 or alphas, length]` and its `weight`s -> the exponentially weighted
    mean for each alpha (`[batch, alphas, length // stride]`; of the one channel, or each
    channel with its own alpha) at the last point of every `stride`, the weights
    renormalised over what carries weight (a gap or the context's start is no bias), and
    whether anything did. A causal convolution cut at `reach` taps: no recurrence in the
    graph."""
    # conv1d correlates: the kernel's last tap meets the newest point.
    lag = torch.arange(reach - 1, -1, -1, device=x.device, dtype=x.dtype)
    decay = torch.tensor([math.log1p(-a) for a in alphas], device=x.device, dtype=x.dtype)
    kernel = (decay[:, None] * lag).exp()[:, None]  # [alphas, 1, reach]
    kernel = torch.cat([kernel, kernel])  # the same for the weighted sums and the weights
    # Sums and weights side by side in the channels (the batch stays one dynamic axis).
    both = F.pad(torch.cat([x * weight, weight], 1), (reach - stride, 0))
    sums = F.conv1d(both, kernel, stride=stride, groups=2 * x.shape[1])
    n = len(alphas)
    total, mass = sums[:, :n], sums[:, n:]
    known = mass > 1e-6
    return total / torch.where(known, mass, 1.0), known


def holt_trends(
    z: Tensor,
    observed: Tensor,
    betas: Sequence[float],
    patch_len: int,
    first: int,
    step: Tensor,
    dampings: Sequence[float] = (1.0,),
) -> tuple[Tensor, Tensor]:
    """What Holt's trend adds to the last value k steps ahead from the end of every token
    from `first` on, one per smoothing constant beta and damping (all the betas with the
    first damping, then with the next): `[batch, betas * dampings, origins, horizon]`, and
    whether each is defined.

    The trend is the exponentially weighted mean of the changes between consecutive
    readings (one across a gap is left out: filled forward, it would read as no change and
    then a jump), times d + ... +
    d ** k for a damping d (k undamped). With the level at the last value, this is Holt's
    method with alpha 1, the damped-trend model AutoETS fits to fast, drifting sensors (CO2,
    humidity, air pressure) with alpha near 1 and beta 0.05 to 0.2: neither drift over a
    fixed window nor Brown's smoothing (whose trend is tied to a smoothed level) is that
    forecast."""
    change = F.pad(z[:, 1:] - z[:, :-1], (1, 0))[:, None]
    both = F.pad((observed[:, 1:] & observed[:, :-1]).to(z.dtype), (1, 0))[:, None]
    reach = smoothing_reach(betas, patch_len, z.shape[1])
    slope, known = exponential_means(change, both, betas, reach, patch_len)
    slope, known = slope[..., first:, None], known[..., first:, None]  # [batch, betas, origins, 1]
    steps = [torch.pow(d, step).cumsum(-1) if d < 1 else step for d in dampings]
    forecasts = torch.cat([slope * k for k in steps], 1)
    return forecasts, known.repeat(1, len(dampings), 1, step.shape[-1])


def _patch_levels(filled: Tensor, found: Tensor, patch_len: int) -> tuple[Tensor, Tensor]:
    """`[batch, length]` the mean of the found values among the `patch_len` points ending at
    each point (a level with a patch's noise averaged out), and whether there was one."""
    weight = found.to(filled.dtype)
    pad = filled.new_zeros(filled.shape[0], 1)
    total = torch.cat([pad, (filled * weight).cumsum(-1)], 1)
    count = torch.cat([pad, weight.cumsum(-1)], 1)
    total = total[:, patch_len:] - total[:, :-patch_len]
    count = count[:, patch_len:] - count[:, :-patch_len]
    head = filled.new_zeros(filled.shape[0], patch_len - 1)
    total, count = torch.cat([head, total], 1), torch.cat([head, count], 1)
    return total / count.clamp_min(1.0), count > 0


def power_weights(ratios: Tensor, power: float | Sequence[float]) -> Tensor:
    """Weights `ratios ** -power`, normalised over the last axis (an inf ratio weighs 0);
    `ratios` `[batch, heads, mix]`, `power` one number or one per head."""
    if not isinstance(power, int | float):
        power = torch.tensor(power, dtype=ratios.dtype, device=ratios.device)[:, None]
    raw = ratios.pow(-power)
    return raw / raw.sum(-1, keepdim=True)


def skill_ratios(
    c: Candidates,
    medians: Sequence[Tensor],
    min_pairs: Sequence[int],
    guard: float = 0.0,
    mean_guard: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """For each head (its network medians `[batch, origins, h]` from the same origins as `c`):
    the error ratios to the network `[batch, heads, mix]` of the network (1), naive and the best
    of each family of `c` (seasonal naive, then shifted seasonal, drift and smoothing where `c`
    has them), inf where not scored, and which member of each family is best (`[batch, heads,
    mix - 2]`, indices into the classical candidates).

    Each classical candidate is scored against the network on the same pairs (origin, step),
    those where both are defined and the context observed the target: its error ratio r is
    its absolute error summed over them over the network's. A candidate with under
    `min_pairs` (of its head) pairs gets inf. With `guard` and shifted candidates, so does
    plain seasonal naive where the level has moved since the cycle it repeats (`level_moved`),
    and with `mean_guard` the seasonal means.
    """
    pairs = c.defined & c.scored[:, None]  # [batch, classical, origins, horizon]
    error = torch.where(pairs, (c.forecasts - c.truth[:, None]).abs(), 0.0)
    # A head's classical forecasts are the first h steps of the longest: its sums are
    # running sums over the steps, read at h.
    ends = [m.shape[-1] - 1 for m in medians]
    mine = error.sum(-2).cumsum(-1)[..., ends]  # [batch, classical, heads]
    # Pairs counted in the forecasts' dtype (exact: at most origins x horizon), not the int64
    # a boolean sum gives: that cast was the largest tensor of the exported graph.
    weight = pairs.to(error.dtype)
    count = weight.sum(-2).cumsum(-1)[..., ends]
    network = torch.stack(
        [
            # sum over the candidate's pairs of the network's error, as one product
            weight[..., : m.shape[-1]].flatten(-2)
            @ (m - c.truth[..., : m.shape[-1]]).abs().flatten(-2)[..., None]
            for m in medians
        ],
        -1,
    )[:, :, 0]
    # A floor on both sums (a hundredth of a standard deviation per pair) keeps flat
    # stretches, where everything is exact, from dividing by zero.
    floor = 1e-2 * count
    ratio = (mine + floor) / (network + floor)
    need = torch.tensor(list(min_pairs), device=count.device, dtype=count.dtype)
    ratio = torch.where(count >= need, ratio, torch.inf)
    # Plain seasonal naive is the first family; the seasonal means, the third.
    guards = [(0, guard), (2, mean_guard if c.averaged else 0.0)]
    if c.shifted and any(limit > 0 for _, limit in guards):
        start, stop, _ = c.families()[0]
        typical = mine[:, start:stop] / count[:, start:stop].clamp_min(1)
        for family, limit in guards:
            if limit > 0:
                f0, f1, _ = c.families()[family]
                moved = level_moved(c, ends, limit, typical)
                kept = ratio[:, f0:f1].masked_fill(moved, torch.inf)
                ratio = torch.cat([ratio[:, :f0], kept, ratio[:, f1:]], 1)
    columns, best = [torch.ones_like(ratio[:, 0]), ratio[:, 0]], []
    longer = torch.tensor([m.shape[-1] > 1 for m in medians], device=ratio.device)
    for start, stop, one_step in c.families():
        family_ratio, index = ratio[:, start:stop].min(1)  # [batch, heads]
        if not one_step:
            family_ratio = torch.where(longer, family_ratio, torch.inf)
        columns.append(family_ratio)
        best.append(index + start)
    return torch.stack(columns, -1), torch.stack(best, -1)


def level_moved(c: Candidates, ends: Sequence[int], guard: float, typical: Tensor) -> Tensor:
    """`[batch, periods, heads]`: whether, at the last origin, shifted and plain seasonal
    naive differ by more than `guard` times plain seasonal naive's mean error per pair in the
    context (`typical`), on average over the head's steps.

    In-context scoring cannot see a level shift until origins after it are scored, a token or
    more later; until then plain seasonal naive (and the seasonal means, which average the
    same cycles) keeps the weight its stable history earned and repeats the old level (the
    demo's cooling failure and bearing fault). The shifted candidate measures the move at
    once: a move far beyond the plain one's usual error means its cycle is no longer the one
    to repeat."""
    (p0, p1, _), (s0, s1, _) = c.families()[:2]  # plain and shifted seasonal naive
    plain, shifted = c.forecasts[:, p0:p1, -1], c.forecasts[:, s0:s1, -1]
    both = c.defined[:, p0:p1, -1] & c.defined[:, s0:s1, -1]
    gap = torch.where(both, (shifted - plain).abs(), 0.0)  # [batch, periods, horizon]
    steps = torch.arange(1, gap.shape[-1] + 1, device=gap.device, dtype=gap.dtype)
    mean_gap = (gap.cumsum(-1) / steps)[..., list(ends)]
    return mean_gap > guard * typical


def skill_mix(
    quantiles: Sequence[Tensor],
    medians: Sequence[Tensor],
    c: Candidates,
    median: int,
    guard: float = 0.0,
    mean_guard: float = 0.0,
) -> tuple[Tensor, list[Tensor]]:
    """What the combination weighs: `skill_ratios`' error ratios `[batch, heads, mix]` and each
    head's forecasts to mix `[batch, mix, h]` from the last origin (the
    network's median, naive, then the best member of each of `c`'s families). Where a family's
    best has no value at the end (a long gap), naive stands in for it. A candidate needs 4 h
    pairs to be weighed."""
    min_pairs = [4 * m.shape[-1] for m in medians]
    ratios, best = skill_ratios(c, medians, min_pairs, guard, mean_guard)
    final = c.forecasts[:, :, -1]  # [batch, classical, horizon]
    b, heads, slots = best.shape
    index = best.flatten(1)[..., None].expand(-1, -1, final.shape[-1])
    chosen = final.gather(1, index).view(b, heads, slots, -1)
    usable = c.defined[:, :, -1].gather(1, index).view(b, heads, slots, -1)
    chosen = torch.where(usable, chosen, final[:, None, :1])
    mixes = []
    for i, q in enumerate(quantiles):
        h = q.shape[1]
        mixes.append(torch.cat([q[:, None, :, median], final[:, :1, :h], chosen[:, i, :, :h]], 1))
    return ratios, mixes


def skill_combine(
    quantiles: Sequence[Tensor],
    medians: Sequence[Tensor],
    c: Candidates,
    power: float | Sequence[float],
    median: int,
    narrow: bool = False,
    guard: float = 0.0,
    gate: SkillGate | None = None,
    mean_guard: float = 0.0,
) -> list[Tensor]:
    """Each head's last-token quantiles `[batch, h, n_quantiles]` (normalised) re-centred on
    the skill-weighted median of the network, naive and the best of each of `c`'s families
    (seasonal naive, shifted seasonal, drift, smoothing); `medians` are the heads' network
    medians from `c`'s origins. The weights are (error ratio) ** -power, or `gate`'s.

    The network's quantiles move with its median. With `narrow`, their spread also shrinks by
    the weighted error ratio (never widens): a mix that scored better than the network in the
    context is less uncertain than the network.
    """
    ratios, mixes = skill_mix(quantiles, medians, c, median, guard, mean_guard)
    weights = power_weights(ratios, power) if gate is None else gate(ratios)
    combined = []
    for i, (q, mix) in enumerate(zip(quantiles, mixes, strict=True)):
        centre = (weights[:, i, :, None] * mix).sum(1)
        spread = q - q[..., median : median + 1]
        if narrow:
            shrink = torch.where(weights[:, i] > 0, weights[:, i] * ratios[:, i], 0.0)
            spread = spread * shrink.sum(-1).clamp_max(1.0)[:, None, None]
        combined.append(centre[..., None] + spread)
    return combined


class SkillGate(nn.Module):
    """Learned weights for the in-context combination, from its error ratios alone.

    The fixed rule weighs a candidate by (error ratio) ** -power per head, on its own ratio.
    How far to trust a candidate's record may depend on more than that: on the head (a
    near-hard choice wins one step ahead and loses 64 steps ahead, `benchmarks/COMBINE.md`),
    on the family (drift's record extrapolates worse than seasonal naive's), and on how the
    others did (seasonal naive scoring well at 8 steps says something about 64). So each
    weight's logit is -power[head] * log r plus a small MLP of every head's log ratios, whose
    output bias is a prior per head and candidate. It starts as the fixed rule (power as
    configured, the MLP's output zero) and is fitted after pretraining with the network frozen
    (`moecast.model.fit_gate`).
    """

    def __init__(
        self, heads: int, slots: int, power: float | Sequence[float], hidden: int = 32
    ) -> None:
        super().__init__()
        powers = [power] * heads if isinstance(power, int | float) else list(power)
        start = [[math.log(max(p, 1e-3))] for p in powers]
        self.log_power = nn.Parameter(torch.tensor(start))
        self.hidden = nn.Linear(2 * heads * slots, hidden)
        self.out = nn.Linear(hidden, heads * slots)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, ratios: Tensor) -> Tensor:
        """`ratios` `[batch, heads, slots]` (inf: not weighed) -> weights summing to 1."""
        usable = torch.isfinite(ratios)
        # Clamped: a candidate e**8 times better or worse than the network in the context
        # gains nothing by being more so.
        log_ratio = torch.where(usable, ratios.clamp(1e-30, 1e30).log(), 0.0).clamp(-8.0, 8.0)
        features = torch.cat([log_ratio.flatten(1), usable.to(ratios.dtype).flatten(1)], 1)
        residual = self.out(F.gelu(self.hidden(features))).view(ratios.shape)
        logits = residual - self.log_power.exp() * log_ratio
        return logits.masked_fill(~usable, -torch.inf).softmax(-1)


class QuantileHead(nn.Module):
    def __init__(
        self, d_model: int, horizon: int, n_quantiles: int, anchor: int, last_value_skip: bool
    ) -> None:
        super().__init__()
        self.horizon, self.n_quantiles, self.anchor = horizon, n_quantiles, anchor
        self.proj = nn.Linear(d_model, horizon * n_quantiles)
        # Zero at first: a checkpoint trained without the skip computes the same function.
        self.last_value_gain = nn.Parameter(torch.zeros(horizon)) if last_value_skip else None

    def forward(self, h: Tensor, last: Tensor, median_only: bool = False) -> Tensor:
        """`h`: `[batch, tokens, d_model]`; `last`: `[batch, tokens]` last observed values.

        With `median_only`, only the median `[batch, tokens, horizon]`: the projection's median
        rows, so scoring many origins costs `horizon` outputs per token, not 9 times as many.
        """
        if median_only:
            rows = slice(self.anchor, None, self.n_quantiles)
            median = F.linear(h, self.proj.weight[rows], self.proj.bias[rows])
            if self.last_value_gain is None:
                return median
            return median + self.last_value_gain * last[..., None]
        raw = self.proj(h).unflatten(-1, (self.horizon, self.n_quantiles))
        quantiles = monotone_quantiles(raw, self.anchor)
        if self.last_value_gain is None:
            return quantiles
        # One shift for all quantiles of a step keeps them from crossing.
        return quantiles + self.last_value_gain[:, None] * last[..., None, None]


class MoecastModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = PatchEmbedding(config.patch_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.heads = nn.ModuleDict(
            {
                str(h): QuantileHead(
                    config.d_model,
                    h,
                    len(config.quantiles),
                    config.median_index,
                    config.last_value_skip,
                )
                for h in config.horizons
            }
        )
        self.apply(self._init_weights)
        self.gate = None
        if config.skill_combine and config.combine_gate:
            self.gate = SkillGate(len(config.horizons), config.combine_slots, config.head_powers)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self,
        values: Tensor,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        last_only: bool = False,
        medians_from: int | None = None,
    ) -> MoecastOutput:
        """`values`: `[batch, length]` raw scale, NaN = missing, length a multiple of patch_len.

        `loc`/`scale` override the z-score statistics (tests of causality use this: with the
        statistics fixed, the network is strictly causal over patches).
        """
        cfg = self.config
        if values.dim() != 2:
            raise ValueError(f"values must be [batch, length], got shape {tuple(values.shape)}")
        b, length = values.shape
        if length == 0 or length % cfg.patch_len:
            raise ValueError(f"length {length} is not a positive multiple of {cfg.patch_len}")
        observed = ~torch.isnan(values)
        if loc is None or scale is None:
            loc, scale = observed_zscore(values, observed)
        z = torch.where(observed, (values - loc) / scale, 0.0)

        n = length // cfg.patch_len
        patch_observed = observed.view(b, n, cfg.patch_len)
        token_observed = patch_observed.any(-1)
        x = self.embed(z.view(b, n, cfg.patch_len), patch_observed)

        # Causal attention that ignores tokens with no observed point (left padding, long
        # gaps), so padding a short series with NaN changes nothing. Each token may still
        # attend to itself, which keeps fully-masked rows well defined.
        causal = torch.ones(n, n, dtype=torch.bool, device=values.device).tril()
        diagonal = torch.eye(n, dtype=torch.bool, device=values.device)
        attn_mask = (causal & (token_observed[:, None, :] | diagonal))[:, None]
        cos, sin = rope_tables(n, cfg.d_model // cfg.n_heads, cfg.rope_theta, x.device, x.dtype)

        routings = []
        for block in self.blocks:
            x, routing = block(x, cos, sin, attn_mask, token_observed)
            routings.append(routing)
        # The heads read the last token, or every token; the medians, every token from
        # `medians_from`. Nothing before the first one read is normalised.
        start = n - 1 if last_only else 0
        if medians_from is not None:
            start = min(start, medians_from)
        x = self.norm(x[:, start:])
        last = last_observed(z, observed, cfg.patch_len)[:, start:]
        heads = dict(zip(cfg.horizons, self.heads.values(), strict=True))
        medians = None
        if medians_from is not None:
            origins = slice(medians_from - start, None)
            medians = {h: head(x[:, origins], last[:, origins], True) for h, head in heads.items()}
        if last_only:
            x, last = x[:, -1:], last[:, -1:]

        return MoecastOutput(
            forecasts={h: head(x, last) for h, head in heads.items()},
            loc=loc,
            scale=scale,
            balance_loss=torch.stack([r.balance_loss for r in routings]).mean(),
            expert_load=torch.stack([r.load for r in routings]),
            expert_tokens=torch.stack([r.tokens for r in routings]),
            token_observed=token_observed,
            medians=medians,
        )

    @torch.no_grad()
    def predict(self, values: Tensor) -> dict[int, Tensor]:
        """Raw-scale quantile forecasts from the end of `values`: `{h: [batch, h, n_quantiles]}`.

        Rows with no observed value get NaN. With `hold_decoding`, steps a held sensor repeats
        (`hold_decode`) give the last value exactly.
        """
        cfg = self.config
        out = self.forward(values, last_only=True, medians_from=self._first_origin(values))
        empty = out.token_observed.any(-1).logical_not()[:, None, None]
        scale, loc = out.scale[:, :, None], out.loc[:, :, None]
        normalised = {h: q[:, -1] for h, q in out.forecasts.items()}
        if cfg.skill_combine:
            normalised = self._combine(values, out)
        forecasts = {h: q * scale + loc for h, q in normalised.items()}
        if cfg.hold_decoding:
            observed = ~torch.isnan(values)
            filled = torch.where(observed, values, 0.0)
            last = last_observed(filled, observed, cfg.patch_len)[:, -1]
            by_level = last if cfg.hold_by_level else None
            held = hold_probability(values, observed, cfg.max_horizon, by_level)
            levels = torch.tensor(cfg.quantiles, dtype=values.dtype, device=values.device)
            forecasts = {h: hold_decode(q, last, held[:, :h], levels) for h, q in forecasts.items()}
        return {h: torch.where(empty, torch.nan, q) for h, q in forecasts.items()}

    def _min_origin(self, values: Tensor) -> int:
        return min(self.config.combine_min_origin, values.shape[1] // 2)

    def _first_origin(self, values: Tensor) -> int | None:
        """The first token the combination scores as a forecast origin (None when off)."""
        if not self.config.skill_combine:
            return None
        tokens = values.shape[1] // self.config.patch_len
        return first_origin(self._min_origin(values), self.config.patch_len, tokens)

    def _candidates(self, values: Tensor, out: MoecastOutput) -> Candidates:
        """The classical candidates the combination scores, from every head's origins."""
        cfg = self.config
        observed = ~torch.isnan(values)
        z = torch.where(observed, (values - out.loc) / out.scale, 0.0)
        last = last_observed(z, observed, cfg.patch_len)
        # Every head's classical candidates are prefixes of the longest head's.
        return classical_candidates(
            z,
            observed,
            last,
            cfg.patch_len,
            cfg.combine_periods,
            self._min_origin(values),
            cfg.max_horizon,
            cfg.combine_drifts,
            cfg.combine_shifted,
            cfg.combine_smoothing,
            cfg.combine_damping,
            cfg.combine_cycles,
            cfg.combine_trends,
        )

    def _combine(self, values: Tensor, out: MoecastOutput) -> dict[int, Tensor]:
        """Each head's last-token quantiles re-centred by `skill_combine` (normalised)."""
        cfg = self.config
        assert out.medians is not None
        combined = skill_combine(
            [q[:, -1] for q in out.forecasts.values()],
            list(out.medians.values()),
            self._candidates(values, out),
            cfg.combine_power,
            cfg.median_index,
            cfg.combine_narrow,
            cfg.combine_guard,
            self.gate,
            cfg.combine_cycles_guard,
        )
        return dict(zip(out.forecasts, combined, strict=True))

    @torch.no_grad()
    def combination_inputs(self, values: Tensor) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """What the combination weighs at the end of `values` (`skill_mix`): the error ratios
        `[batch, heads, slots]`, each head's forecasts to mix `[batch, slots, h]` (normalised),
        and the z-score's loc and scale `[batch, 1]`. Fitting the gate needs nothing else."""
        if not self.config.skill_combine:
            raise ValueError("the combination is off in this model's config (skill_combine)")
        out = self.forward(values, last_only=True, medians_from=self._first_origin(values))
        assert out.medians is not None
        ratios, mixes = skill_mix(
            [q[:, -1] for q in out.forecasts.values()],
            list(out.medians.values()),
            self._candidates(values, out),
            self.config.median_index,
            self.config.combine_guard,
            self.config.combine_cycles_guard,
        )
        return ratios, mixes, out.loc, out.scale

    @property
    def kept_experts(self) -> list[list[int]]:
        """The experts each layer routes to (all of them unless pruned)."""
        return [list(block.ffn.kept_experts) for block in self.blocks]

    @property
    def is_pruned(self) -> bool:
        return any(len(kept) < self.config.n_experts for kept in self.kept_experts)

    def prune_experts(self, kept: Sequence[Sequence[int]]) -> None:
        """Keep, in each layer, only the experts listed for it (`MoEFeedForward.prune`)."""
        if not self.config.is_sparse:
            raise ValueError("the dense twin has no experts to prune")
        if len(kept) != self.config.n_layers:
            raise ValueError(
                f"need kept experts for {self.config.n_layers} layers, got {len(kept)}"
            )
        for block, layer_kept in zip(self.blocks, kept, strict=True):
            block.ffn.prune(layer_kept)

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, less pruned experts (an export leaves them out), and those active
        for one token (top_k of the routed experts)."""
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        if self.config.is_sparse:
            per_expert = sum(p.numel() for p in self.blocks[0].ffn.experts[0].parameters())
            kept = [len(layer) for layer in self.kept_experts]
            total -= per_expert * sum(self.config.n_experts - n for n in kept)
            inactive = per_expert * sum(n - self.config.top_k for n in kept)
        return {"total": total, "active": total - inactive}
