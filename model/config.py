"""Model configuration: one dataclass and the named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_HORIZONS = (1, 8, 32, 64)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a moecast network.

    Feed-forward widths follow Time-MoE: each routed expert is a SwiGLU of width `d_ff // 2`
    and the shared expert has width `d_ff`. With `n_experts == 1` the layer is a plain SwiGLU
    of width `d_ff` with no router and no shared expert: the dense twin.
    """

    context_length: int = 512
    patch_len: int = 8
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 352
    n_experts: int = 8
    top_k: int = 2
    shared_expert: bool = True
    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    balance_loss_weight: float = 0.02
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    # Each head adds a learned per-step multiple of the last observed (normalised) value to its
    # output, so persistence is one weight away. False in checkpoints written before it existed.
    last_value_skip: bool = False
    # Decode sample-and-hold behaviour exactly (`network.hold_decode`): where the context shows
    # the value unchanged k steps later in over half of its pairs, the k-step quantiles whose
    # levels that atom must cover are the last value itself. Decoding only: no weights.
    hold_decoding: bool = True
    # Judge "held" by the pairs that start at the last value only (`network.hold_probability`):
    # a context that repeats overall (night-time zeros) but not at its current level is not
    # held. Decoding only: no weights.
    hold_by_level: bool = False
    # Skill-weighted combination in `predict` (`network.skill_combine`): every token is a
    # forecast origin, so one pass scores the network, naive and seasonal naive (best of
    # `combine_periods`) on what the context shows happened next, and each head's median is
    # their mix with weights (error relative to the network's) ** -combine_power. Decoding
    # only: no weights.
    skill_combine: bool = False
    combine_periods: tuple[int, ...] = (12, 24, 48, 96, 144, 168, 288)
    # Drift candidates: the last value plus the slope over each of these many points (the best
    # one joins the mix); none by default.
    combine_drifts: tuple[int, ...] = ()
    # Holt's trend candidates: the last value plus the exponentially weighted mean of the
    # one-step changes, one per smoothing constant beta, damped by each of `combine_damping`
    # (AutoETS' damped trend with alpha 1). They join the drift family; none by default.
    combine_trends: tuple[float, ...] = ()
    # Also seasonal naive carrying the level change since the repeated cycle (the best period
    # joins the mix): after a level shift plain seasonal naive repeats the old level for a
    # whole period, and one that scored well before the shift would hold the mix down.
    combine_shifted: bool = False
    # Also the mean of the same phase over the last this many cycles (statsforecast's
    # SeasonalWindowAverage; the best period joins the mix): seasonal naive with one cycle's
    # noise averaged out, for the long horizons of noisy daily cycles. 0 or 1: none.
    combine_cycles: int = 0
    # With shifted candidates: the seasonal means get no weight where, at the last origin, the
    # level has moved by more than this many times plain seasonal naive's mean error in the
    # context (`network.level_moved`; they average the cycles before the move); 0: never.
    combine_cycles_guard: float = 0.0
    # With shifted candidates: plain seasonal naive gets no weight where, at the last origin,
    # the level has moved by more than this many times its mean error in the context
    # (`network.level_moved`); 0: never.
    combine_guard: float = 0.0
    # Linear exponential smoothing candidates (Brown's), one per smoothing constant alpha:
    # level and trend from exponentially weighted means, the smooth trend-following forecast
    # AutoETS finds on slowly drifting sensors (the best one joins the mix); none by default.
    combine_smoothing: tuple[float, ...] = ()
    # Their trend damped per step (AutoETS' damped trend): k steps ahead add
    # d + d ** 2 + ... + d ** k trends for a damping d; 1: undamped. Each alpha comes with each
    # damping listed, the best in the context joins the mix. A single number is read as one.
    combine_damping: tuple[float, ...] = (1.0,)
    # One power for every head, or one per head (in `horizons` order): a near-hard choice
    # wins a step or eight ahead, while far ahead the context's record of an extrapolation
    # says less (`benchmarks/COMBINE.md`).
    combine_power: float | tuple[float, ...] = 4.0
    # Learned weights instead (`network.SkillGate`, fitted by `moecast fit-gate` with the
    # network frozen): per head and candidate family, from every head's error ratios. These
    # are weights: a checkpoint with the gate holds them.
    combine_gate: bool = False
    # Also shrink the quantiles' spread by the mix's in-context error ratio to the network.
    combine_narrow: bool = False
    # Origins before this many points (at most half the context) are not scored: the
    # network has seen too little there.
    combine_min_origin: int = 128
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Tuples survive a JSON round trip as lists; normalise so equality and hashing hold.
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        object.__setattr__(self, "combine_periods", tuple(int(p) for p in self.combine_periods))
        object.__setattr__(self, "combine_drifts", tuple(int(w) for w in self.combine_drifts))
        smoothing = tuple(float(a) for a in self.combine_smoothing)
        damping = self.combine_damping
        damping = tuple(map(float, damping)) if isinstance(damping, list | tuple) else (damping,)
        object.__setattr__(self, "combine_damping", damping)
        object.__setattr__(self, "combine_smoothing", smoothing)
        object.__setattr__(self, "combine_trends", tuple(float(b) for b in self.combine_trends))
        power = self.combine_power
        power = tuple(map(float, power)) if isinstance(power, list | tuple) else float(power)
        object.__setattr__(self, "combine_power", power)
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def _problems(self):
        if self.patch_len < 1:
            yield f"patch_len must be >= 1, got {self.patch_len}"
        elif self.context_length < self.patch_len or self.context_length % self.patch_len:
            yield (
                f"context_length ({self.context_length}) must be a positive multiple of "
                f"patch_len ({self.patch_len})"
            )
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            yield f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer"
        if self.n_layers < 1:
            yield f"n_layers must be >= 1, got {self.n_layers}"
        if self.n_experts < 1:
            yield f"n_experts must be >= 1, got {self.n_experts}"
        elif not 1 <= self.top_k <= self.n_experts:
            yield f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}"
        if self.n_experts > 1 and self.d_ff < 2:
            yield f"d_ff must be >= 2 for routed experts of width d_ff // 2, got {self.d_ff}"
        if not self.horizons or any(h < 1 for h in self.horizons):
            yield f"horizons must be positive, got {self.horizons}"
        elif list(self.horizons) != sorted(set(self.horizons)) or 1 not in self.horizons:
            # Horizon 1 guarantees the greedy schedule can always finish any horizon.
            yield f"horizons must be strictly increasing and include 1, got {self.horizons}"
        if any(p < 1 for p in self.combine_periods):
            yield f"combine_periods must be positive, got {self.combine_periods}"
        if self.combine_cycles < 0:
            yield f"combine_cycles must be >= 0, got {self.combine_cycles}"
        if self.combine_cycles_guard < 0:
            yield f"combine_cycles_guard must be >= 0, got {self.combine_cycles_guard}"
        if any(w < 1 for w in self.combine_drifts):
            yield f"combine_drifts must be positive, got {self.combine_drifts}"
        if any(not 0.0 < b < 1.0 for b in self.combine_trends):
            yield f"combine_trends must lie in (0, 1), got {self.combine_trends}"
        if any(not 0.0 < a < 1.0 for a in self.combine_smoothing):
            yield f"combine_smoothing must lie in (0, 1), got {self.combine_smoothing}"
        if not self.combine_damping or not all(0.0 < d <= 1.0 for d in self.combine_damping):
            yield f"combine_damping must lie in (0, 1], got {self.combine_damping}"
        if any(p < 0 for p in self.head_powers):
            yield f"combine_power must be >= 0, got {self.combine_power}"
        if isinstance(self.combine_power, tuple) and len(self.combine_power) != len(self.horizons):
            yield (
                f"combine_power needs one power per horizon {self.horizons} or a single one, "
                f"got {self.combine_power}"
            )
        if self.combine_guard < 0:
            yield f"combine_guard must be >= 0, got {self.combine_guard}"
        qs = self.quantiles
        if not qs or any(not 0.0 < q < 1.0 for q in qs) or list(qs) != sorted(set(qs)):
            yield f"quantiles must be strictly increasing in (0, 1), got {qs}"

    @property
    def is_sparse(self) -> bool:
        return self.n_experts > 1

    @property
    def expert_d_ff(self) -> int:
        return self.d_ff // 2 if self.is_sparse else self.d_ff

    @property
    def head_powers(self) -> tuple[float, ...]:
        """The combination's power for each head."""
        power = self.combine_power
        return power if isinstance(power, tuple) else (power,) * len(self.horizons)

    @property
    def combine_slots(self) -> int:
        """Forecasts the combination mixes: the network, naive, seasonal naive, then the
        shifted seasonal, seasonal mean, drift (with Holt's trend) and smoothing families where
        configured."""
        families = (
            self.combine_shifted,
            self.combine_cycles > 1,
            bool(self.combine_drifts or self.combine_trends),
            bool(self.combine_smoothing),
        )
        return 3 + sum(families)

    @property
    def max_horizon(self) -> int:
        return self.horizons[-1]

    @property
    def median_index(self) -> int:
        """Index of the quantile closest to 0.5: the point forecast and the monotone anchor."""
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)


def _edge() -> ModelConfig:
    return ModelConfig(name="edge", last_value_skip=True)


def _dense_twin(name: str, d_ff: int) -> ModelConfig:
    return _edge().replace(name=name, n_experts=1, top_k=1, shared_expert=False, d_ff=d_ff)


# Dense twins: the MoE's active FFN is top_k experts of d_ff/2 plus the shared expert of d_ff,
# i.e. a SwiGLU of width (top_k/2 + 1) * d_ff; its total FFN is (n_experts/2 + 1) * d_ff.
_EDGE = _edge()
_ACTIVE_FFN = (_EDGE.top_k * _EDGE.expert_d_ff) + _EDGE.d_ff
_TOTAL_FFN = (_EDGE.n_experts * _EDGE.expert_d_ff) + _EDGE.d_ff

PRESETS: dict[str, ModelConfig] = {
    "nano": ModelConfig(
        name="nano",
        context_length=128,
        patch_len=4,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        n_experts=4,
        top_k=2,
        last_value_skip=True,
    ),
    "edge": _EDGE,
    "edge-dense-active": _dense_twin("edge-dense-active", _ACTIVE_FFN),
    "edge-dense-total": _dense_twin("edge-dense-total", _TOTAL_FFN),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields changed (e.g. `preset("edge", patch_len=1)`)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base
