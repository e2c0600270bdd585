"""Put an irregular stream onto a regular grid, the model's input.

Grid convention: bins are aligned to multiples of the interval since the unix epoch, so the same
data gives the same grid on every tick. A bin is right-closed, `(end - interval, end]`, and is
labelled by its end: a sensor that reports exactly on the grid (12:00:00 for one-minute bins)
sees its own timestamps as bin labels, and a bin's value is the mean of the readings of the
interval that ends at the label. Empty bins are NaN, which the model treats as missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Sensor periods are nominally round numbers; measured with jitter, the median interval drifts a
# little from tick to tick, and a drifting interval re-phases the whole epoch-aligned grid.
NICE_INTERVALS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5,
    1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 45, 60, 90,
    120, 180, 240, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400,
)  # fmt: skip
SNAP_TOLERANCE = 0.05


def detect_interval(ts: np.ndarray, min_intervals: int = 3) -> float | None:
    """The sampling interval of ascending timestamps, or None with too few distinct ones.

    The median of the positive differences ignores duplicates, jitter and occasional gaps. It
    is snapped to a nearby round interval (within 5 %) or else rounded to two significant
    digits, so that jitter does not change the result between ticks; still, detect once and
    keep the interval per stream rather than re-detecting on every tick.
    """
    diffs = np.diff(np.asarray(ts, dtype=np.float64))
    diffs = diffs[diffs > 0]
    if diffs.size < min_intervals:
        return None
    median = float(np.median(diffs))
    nearest = min(NICE_INTERVALS_S, key=lambda nice: abs(math.log(nice / median)))
    if abs(nearest - median) <= SNAP_TOLERANCE * nearest:
        return float(nearest)
    return float(f"{median:.2g}")


def to_grid(
    ts: np.ndarray,
    values: np.ndarray,
    interval_s: float,
    length: int,
    end_ts: float | None = None,
) -> tuple[float, np.ndarray]:
    """Bin means of the `length` bins up to the one containing `end_ts` (default: the newest
    reading), as (label of the last bin, float32 array); NaN for empty bins and before the
    history starts. Readings after the last bin and non-finite values are ignored.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be positive and finite, not {interval_s}")
    if length <= 0:
        raise ValueError(f"length must be positive, not {length}")
    ts = np.asarray(ts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if ts.shape != values.shape:
        raise ValueError(f"ts {ts.shape} and values {values.shape} differ in shape")
    ends, grids = to_grids(
        [(ts, values)], [interval_s], [length], None if end_ts is None else [end_ts]
    )
    return ends[0], grids[0]


def to_grids(
    series: Sequence[tuple[np.ndarray, np.ndarray]],
    intervals_s: Sequence[float],
    lengths: Sequence[int],
    ends_ts: Sequence[float] | None = None,
) -> tuple[list[float], list[np.ndarray]]:
    """`to_grid` of many streams at once (the tick grids every due stream): one bincount for
    all of them instead of a round of numpy calls per stream. Each stream's grid ends at the
    bin containing its `ends_ts` entry, by default its newest reading (then every stream needs
    one). Bin sums run in reading order, as one stream alone would have them."""
    n = len(series)
    if n == 0:
        return [], []
    intervals = np.asarray(intervals_s, dtype=np.float64)
    sizes = np.fromiter((ts.size for ts, _ in series), np.intp, n)
    if not (np.isfinite(intervals).all() and (intervals > 0).all()):
        raise ValueError("every interval_s must be positive and finite")
    length = np.asarray(lengths, dtype=np.intp)
    ts = np.concatenate([t for t, _ in series]).astype(np.float64, copy=False)
    values = np.concatenate([v for _, v in series]).astype(np.float64, copy=False)
    starts = np.cumsum(sizes) - sizes
    if ends_ts is None:
        if (sizes == 0).any():
            raise ValueError(
                "no readings and no end_ts: every stream needs a reading to place its grid"
            )
        newest = np.maximum.reduceat(ts, starts)
    else:
        newest = np.asarray(ends_ts, dtype=np.float64)
    last_bin = np.ceil(newest / intervals)
    owner = np.repeat(np.arange(n), sizes)
    # Bin numbers stay floats: exact below 2**53 and free of integer overflow on wild input.
    position = np.ceil(ts / intervals[owner]) - (last_bin - length + 1)[owner]
    inside = (position >= 0) & (position < length[owner]) & np.isfinite(values)
    offsets = np.cumsum(length) - length
    flat = (offsets[owner] + position)[inside].astype(np.intp)
    total = int(length.sum())
    sums = np.bincount(flat, weights=values[inside], minlength=total)
    counts = np.bincount(flat, minlength=total)
    means = np.divide(sums, counts, out=np.full(total, np.nan), where=counts > 0)
    grids = np.split(means.astype(np.float32), offsets[1:])
    return (last_bin * intervals).tolist(), grids
