"""Training windows: `[batch, context + horizon]` crops of synthetic and real series.

Every window is damaged the way sensor histories are: readings dropped at random, contiguous
gaps, and sometimes a short history (the start of the context is NaN, as when an agent has only
just started). The forecast part keeps only the data's own NaN, which the loss skips.
Batches are a pure function of (seed, step), so a resumed run sees the data it would have seen.

With `mixup_probability`, a window is instead TSMixup (Chronos, Ansari et al., 2024): a convex
combination of 2 or 3 independent draws, each standardised first so that no part dominates by
its units, then put back in random raw units the way the synthetic mixture does. Mixing makes
new patterns from real ones (a daily cycle under another series' drift) at no cost. The mixed
window is missing wherever any part is; it is damaged like any other afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from moecast.model.data._validation import require_fraction
from moecast.model.data.corpus import Series
from moecast.model.data.gaps import drop_readings
from moecast.model.data.mixture import SyntheticMixture, standardise, to_raw_units

MIN_OBSERVED = 8  # context points a window needs to be worth learning from
MIXUP_PARTS = (2, 3)  # TSMixup combines this many draws


def tsmixup(rng: np.random.Generator, parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, weights): the parts standardised, then combined with Dirichlet(1, ..) weights.

    The mixture is in standard units (float64) and NaN wherever any part is NaN.
    """
    weights = rng.dirichlet(np.ones(len(parts)))
    mixed = sum(w * standardise(p) for w, p in zip(weights, parts, strict=True))
    return mixed, weights


class WindowSampler:
    def __init__(
        self,
        context_length: int,
        horizon: int,
        real: Sequence[Series] = (),
        synthetic: SyntheticMixture | None = None,
        real_weight: float = 0.3,
        seed: int = 0,
        damage_probability: float = 0.5,
        short_history_probability: float = 0.1,
        mixup_probability: float = 0.0,
    ) -> None:
        if synthetic is None and not real:
            raise ValueError("a WindowSampler needs synthetic data, real series, or both")
        require_fraction("mixup_probability", mixup_probability, upper_inclusive=True)
        self.context_length, self.horizon = context_length, horizon
        self.length = context_length + horizon
        # Real series shorter than one window cannot be cropped; they are left out.
        self.real = [s.values for s in real if s.values.size >= self.length]
        self.synthetic = synthetic
        self.real_weight = (
            real_weight if self.real and synthetic is not None else float(bool(self.real))
        )
        self.seed = seed
        self.damage_probability = damage_probability
        self.short_history_probability = short_history_probability
        self.mixup_probability = mixup_probability
        # Longer real series are drawn more often, in proportion to how many windows they hold.
        sizes = np.array([v.size - self.length + 1 for v in self.real], dtype=np.float64)
        self.real_p = sizes / sizes.sum() if self.real else None

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        out = np.empty((batch_size, self.length), dtype=np.float32)
        for i in range(batch_size):
            out[i] = self._window(rng)
        return out

    def _window(self, rng: np.random.Generator) -> np.ndarray:
        while True:
            # Without mixup no random number is spent here: batches stay as they were.
            if self.mixup_probability > 0 and rng.random() < self.mixup_probability:
                window = self._mixup(rng)
            else:
                window = self._draw(rng)
            context = window[: self.context_length]
            if rng.random() < self.damage_probability:
                context[:] = self._damage(rng, context)
            if rng.random() < self.short_history_probability:
                keep = int(rng.integers(MIN_OBSERVED, self.context_length))
                context[: self.context_length - keep] = np.nan
            future = window[self.context_length :]
            if np.isfinite(context).sum() >= MIN_OBSERVED and np.isfinite(future).any():
                return window

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.real and rng.random() < self.real_weight:
            values = self.real[rng.choice(len(self.real), p=self.real_p)]
            start = int(rng.integers(0, values.size - self.length + 1))
            return values[start : start + self.length].astype(np.float32, copy=True)
        return self.synthetic.sample(rng, self.length).astype(np.float32, copy=True)

    def _mixup(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.choice(MIXUP_PARTS))
        mixed, _ = tsmixup(rng, [self._draw(rng) for _ in range(k)])
        return to_raw_units(rng, mixed)

    def _damage(self, rng: np.random.Generator, context: np.ndarray) -> np.ndarray:
        damaged = drop_readings(
            context,
            rng,
            drop_rate=rng.uniform(0.0, 0.3),
            gap_rate=rng.uniform(0.0, 0.02),
            max_gap=int(rng.integers(1, self.context_length // 4)),
        )
        return context if np.isfinite(damaged).sum() < MIN_OBSERVED else damaged
