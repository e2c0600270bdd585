"""A weighted mixture of the synthetic generator families, in raw units and with gaps.

The families: KernelSynth GP samples, trend + seasonality + ARMA, sensor-like series,
piecewise-constant regimes, repeated daily profiles (cycles) and Ornstein-Uhlenbeck processes.
Daily profiles weigh most: real sensors with a strong daily cycle are where the model has
trailed seasonal naive.

Each sample picks a family by weight, standardises its output, then applies a random scale and
offset spanning the units real sensors report in (0.01 .. 1e5, offsets up to a few hundred
scales, e.g. 1013 hPa +- 5 or 21.5 degC +- 2): the model z-scores internally and must be
indifferent to raw units. Some samples lose readings (NaN) the way real streams do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from moecast.model.data._validation import require_fraction
from moecast.model.data.cycles import cycles
from moecast.model.data.gaps import drop_readings
from moecast.model.data.kernel_synth import kernel_synth
from moecast.model.data.ou import ou_series
from moecast.model.data.regimes import regime_series
from moecast.model.data.sensor import sensor_like
from moecast.model.data.trend_seasonal import trend_seasonal

SeriesGenerator = Callable[[np.random.Generator, int], np.ndarray]

GENERATORS: Mapping[str, SeriesGenerator] = {
    "kernel_synth": kernel_synth,
    "trend_seasonal": trend_seasonal,
    "sensor": sensor_like,
    "regimes": regime_series,
    "cycles": cycles,
    "ou": ou_series,
}
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "kernel_synth": 0.15,
    "trend_seasonal": 0.15,
    "sensor": 0.2,
    "regimes": 0.1,
    "cycles": 0.25,
    "ou": 0.15,
}

LOG10_SCALE_RANGE = (-2.0, 5.0)
LOG10_OFFSET_RATIO_MAX = 2.5  # |offset| up to ~300 scales
MAX_DROP_RATE = 0.3
MAX_GAP_RATE = 0.01
MAX_GAP_SHARE = 0.1  # longest gap as a share of the series
FLAT_SPREAD = 1e-6


class SyntheticMixture:
    """Draws series from the generator families in proportion to `weights`."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, *, gap_probability: float = 0.3
    ) -> None:
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(GENERATORS))
        if unknown:
            raise ValueError(f"unknown generator families {unknown}; known: {sorted(GENERATORS)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        require_fraction("gap_probability", gap_probability, upper_inclusive=True)
        self.families: tuple[str, ...] = tuple(weights)
        total = sum(weights.values())
        self.probabilities = np.array([weights[f] / total for f in self.families])
        self.gap_probability = gap_probability

    def sample_with_family(self, rng: np.random.Generator, length: int) -> tuple[str, np.ndarray]:
        """(family name, float32 series of `length` points in raw units, NaN = missing)."""
        family = self.families[rng.choice(len(self.families), p=self.probabilities)]
        values = to_raw_units(rng, standardise(GENERATORS[family](rng, length)))
        if rng.random() < self.gap_probability:
            values = _with_gaps(rng, values)
        return family, values

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        return self.sample_with_family(rng, length)[1]


def standardise(values: np.ndarray) -> np.ndarray:
    """z-scores (float64) over the observed points; NaN stays NaN, a flat series becomes 0."""
    values = values.astype(np.float64)
    observed = values[np.isfinite(values)]
    if observed.size == 0:
        return values
    mean, std = observed.mean(), observed.std()
    # A spread this small against the level is float32 rounding of a constant series (a
    # constant kernel, a held reading at an offset); dividing by it would blow rounding up
    # into noise.
    if std <= FLAT_SPREAD * max(1.0, abs(mean)):
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - mean) / std


def to_raw_units(rng: np.random.Generator, standard: np.ndarray) -> np.ndarray:
    scale = 10 ** rng.uniform(*LOG10_SCALE_RANGE)
    offset = scale * rng.uniform(-1.0, 1.0) * 10 ** rng.uniform(0.0, LOG10_OFFSET_RATIO_MAX)
    return (standard * scale + offset).astype(np.float32)


def _with_gaps(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    gapped = drop_readings(
        values,
        rng,
        drop_rate=rng.uniform(0.0, MAX_DROP_RATE),
        gap_rate=rng.uniform(0.0, MAX_GAP_RATE),
        max_gap=int(rng.integers(1, int(values.size * MAX_GAP_SHARE) + 2)),
    )
    # A series with nothing observed teaches nothing (and has no scale to normalise by).
    return values if np.isnan(gapped).all() else gapped
