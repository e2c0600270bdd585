"""Missing and irregular readings derived from a regular series.

`drop_readings` keeps the regular grid and marks lost readings NaN (what the model sees after
binning). `irregular_sample` produces what a sensor actually sends: jittered timestamps and
no entry at all for lost readings (what the agent receives).
"""

from __future__ import annotations

import numpy as np
from moecast.model.data._validation import require_fraction


def drop_readings(
    series: np.ndarray,
    rng: np.random.Generator,
    drop_rate: float,
    gap_rate: float = 0.0,
    max_gap: int = 1,
) -> np.ndarray:
    """A copy of `series` with NaN where readings were lost.

    Each reading is dropped on its own with probability `drop_rate` (radio loss); in addition a
    gap (outage) starts at each reading with probability `gap_rate` and lasts a uniform
    1..`max_gap` readings. Integer input comes back as float64, float input keeps its dtype.
    """
    require_fraction("drop_rate", drop_rate)
    require_fraction("gap_rate", gap_rate)
    if max_gap < 1:
        raise ValueError(f"max_gap must be at least 1, got {max_gap}")
    out = np.array(series, dtype=np.result_type(series, np.float32))
    lost = (rng.random(out.size) < drop_rate) | _gap_mask(rng, out.size, gap_rate, max_gap)
    out[lost] = np.nan
    return out


def irregular_sample(
    series: np.ndarray,
    rng: np.random.Generator,
    interval_s: float,
    jitter: float = 0.0,
    drop_rate: float = 0.0,
    *,
    start_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Readings of `series` (reading i due at start_s + i * interval_s) as a sensor sends them.

    Each timestamp moves by a uniform offset in +-jitter/2 intervals and the value is the
    series interpolated at that moment; a reading is lost with probability `drop_rate`, and
    readings where the series is NaN are never sent. With jitter < 1 timestamps strictly
    increase. Returns (timestamps in seconds, float64; values, float32).
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    require_fraction("jitter", jitter)
    require_fraction("drop_rate", drop_rate)
    values = np.asarray(series, dtype=np.float64)
    due = np.arange(values.size, dtype=np.float64)
    position = due + rng.uniform(-jitter / 2.0, jitter / 2.0, size=values.size)
    readings = np.interp(position, due, values)
    sent = np.isfinite(readings) & (rng.random(values.size) >= drop_rate)
    timestamps = start_s + interval_s * position[sent]
    return timestamps, readings[sent].astype(np.float32)


def _gap_mask(rng: np.random.Generator, size: int, gap_rate: float, max_gap: int) -> np.ndarray:
    starts = np.flatnonzero(rng.random(size) < gap_rate)
    ends = np.minimum(starts + rng.integers(1, max_gap + 1, size=starts.size), size)
    # +1 at each gap start, -1 after its end: a positive running sum means "inside a gap".
    edges = np.zeros(size + 1, dtype=np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    return np.cumsum(edges[:-1]) > 0
