"""Forecast payloads, on `<forecasts>/<device>/<sensor>` (QoS 1, retained, expiring):

    {"stream": "boiler/temp", "model_version": 3, "issued_at": 1764040000.0,
     "interval_s": 60.0, "grid_end": 1764039960.0, "quantile_levels": [0.1, ..., 0.9],
     "horizons": {"1": {"ts": [...], "median": [...], "quantiles": {"0.1": [...], ...}},
                  "8": {...}, "32": {...}, "64": {...}}}

Step `i` (from 1) of every horizon lies at `grid_end + i * interval_s`, `grid_end` being the
label (end) of the last bin of the stream's grid. Values are rounded to 6 significant digits
(a forecast of float32 noise stays compact) and written by orjson, numpy arrays as they are.
The quality checks add keys (`skill`, `calibration`, optionally `raw_quantiles`): see
`moecast.agent.forecast.quality`.

`forecast.payload: compact` (constrained links) keeps the same keys minus each horizon's `ts`,
with only the levels nearest 0.1 and 0.9 (the 80 % interval) and 4 significant digits:
about a third of the bytes of a full payload of nine levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:
    from moecast.agent.forecast.tick import GridRow

SIGNIFICANT_DIGITS = 6
COMPACT_DIGITS = 4
COMPACT_LEVELS = (0.1, 0.9)
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_POWERS_OF_TEN = 10.0 ** np.arange(40)  # exact doubles up to 1e22, as `10.0 ** k` gives them


def round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """`values` rounded to `digits` significant digits (float64; finite values only)."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    exponent = np.floor(np.log10(magnitude, out=np.zeros_like(values), where=magnitude > 0))
    decimals = (digits - 1 - exponent).astype(np.int64)
    if decimals.size and decimals.min() >= 0 and decimals.max() < _POWERS_OF_TEN.size:
        # The usual case (every value below 10**digits): one branch, powers from a table;
        # a third of the time of the general path below, with the same results.
        scale = _POWERS_OF_TEN[decimals]
        out = np.asarray(values * scale)
        np.round(out, out=out)
        out /= scale
        return out
    up = 10.0 ** np.maximum(decimals, 0)
    down = 10.0 ** np.maximum(-decimals, 0)
    positive = decimals >= 0
    # Dividing by an exact power of ten rounds once, to the double nearest the decimal;
    # multiplying by 10**-k (not exact) would not.
    return np.where(positive, np.round(values * up) / up, np.round(values / down) * down)


def median_weights(levels: np.ndarray) -> np.ndarray:
    """Weights `w` with `quantiles @ w` = the 0.5 quantile: the 0.5 column itself when the model
    has one (exactly, as a one-hot), else interpolated linearly between the levels around it."""
    return np.array([np.interp(0.5, levels, unit) for unit in np.eye(levels.size)])


class PayloadEncoder:
    """The JSON bytes of forecast payloads, for many streams at once: the rounding and the
    median are computed for the whole block with numpy, orjson writes each payload."""

    def __init__(
        self, horizons: Sequence[int], levels: Sequence[float], compact: bool = False
    ) -> None:
        self._horizons = tuple(horizons)
        self._weights = median_weights(np.asarray(levels, dtype=np.float64))
        self._steps = {h: np.arange(1, h + 1, dtype=np.float64) for h in self._horizons}
        self._digits = COMPACT_DIGITS if compact else SIGNIFICANT_DIGITS
        self._with_ts = not compact
        # Columns of the model's levels that go out: all, or those nearest COMPACT_LEVELS.
        self._keep = list(range(len(levels)))
        if compact:
            nearest = {int(np.argmin(np.abs(np.subtract(levels, q)))) for q in COMPACT_LEVELS}
            self._keep = sorted(nearest)
        self._levels = [levels[i] for i in self._keep]
        self._level_keys = [str(level) for level in self._levels]

    def encode(
        self,
        rows: Sequence[GridRow],
        quantiles: dict[int, np.ndarray],
        now: float,
        model_version: int,
        extras: Sequence[Mapping[str, object]] | None = None,
    ) -> list[bytes]:
        """One payload per row; `quantiles[h]` is `[len(rows), h, n_levels]`, sorted per step
        and finite. `extras[i]`: keys added to row i's payload (the quality checks')."""
        medians, columns = {}, {}
        for h in self._horizons:
            q = np.asarray(quantiles[h], dtype=np.float64)
            medians[h] = round_significant(q @ self._weights, self._digits)
            if len(self._keep) < q.shape[-1]:
                q = q[..., self._keep]
            # [rows, levels, steps], C-contiguous: each level of a row is one array to orjson.
            columns[h] = np.ascontiguousarray(round_significant(q, self._digits).transpose(0, 2, 1))
        issued_at = round(now, 3)
        keys, heads = self._level_keys, [(str(h), h) for h in self._horizons]
        # Each step's time, unless compact: the same for every stream on the same grid (a
        # site's sensors usually are), so written once per grid and spliced in as JSON.
        times: dict[tuple[float, float], dict[int, orjson.Fragment]] = {}
        payloads = []
        for i, row in enumerate(rows):
            if self._with_ts:
                grid = (row.grid_end, row.interval_s)
                step_times = times.get(grid)
                if step_times is None:
                    step_times = times[grid] = self._step_times(*grid)
            horizons = {
                name: {
                    **({"ts": step_times[h]} if self._with_ts else {}),
                    "median": medians[h][i],
                    "quantiles": dict(zip(keys, columns[h][i], strict=True)),
                }
                for name, h in heads
            }
            payload = {
                "stream": str(row.stream),
                "model_version": model_version,
                "issued_at": issued_at,
                "interval_s": row.interval_s,
                "grid_end": row.grid_end,
                "quantile_levels": self._levels,
                "horizons": horizons,
            }
            if extras is not None:
                payload.update(extras[i])
            payloads.append(orjson.dumps(payload, option=_OPTIONS))
        return payloads

    def _step_times(self, grid_end: float, interval_s: float) -> dict[int, orjson.Fragment]:
        """The JSON of each horizon's step times on one grid (rounded to the microsecond)."""
        return {
            h: orjson.Fragment(
                orjson.dumps(np.round(grid_end + interval_s * self._steps[h], 6), option=_OPTIONS)
            )
            for h in self._horizons
        }
