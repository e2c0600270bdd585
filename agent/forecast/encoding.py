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
    # One scratch array carries |values|, then its exponent, then the powers of ten: each
    # new array of a block's size costs more in page faults than the arithmetic on it.
    scratch = np.abs(values, out=np.empty_like(values))
    np.log10(scratch, out=scratch, where=scratch > 0)  # zero stays 0
    np.floor(scratch, out=scratch)
    np.subtract(digits - 1, scratch, out=scratch)
    if scratch.size and scratch.min() >= 0 and scratch.max() < _POWERS_OF_TEN.size:
        # The usual case (every value below 10**digits): one branch, powers from a table;
        # a third of the time of the general path below, with the same results.
        scale = _POWERS_OF_TEN.take(scratch.astype(np.intp), out=scratch)
        out = np.multiply(values, scale, out=np.empty_like(values))
        np.round(out, out=out)
        out /= scale
        return out
    decimals = scratch.astype(np.int64)
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
    """The JSON bytes of forecast payloads, for many streams at once.

    Rounding and the median are computed for the whole block with numpy, and orjson writes each
    horizon's numbers for the whole block in one call: for 1000 streams a tick writes a million
    numbers, and formatting them is most of the cost. Each payload is then one `%` of a
    template with those pieces, the bytes orjson writes for the payload's dict (tested byte for
    byte); what is the same for every stream on a grid (step times, the header's numbers) is
    written once per grid.
    """

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
        # A payload with a %b per piece: the stream, the header's numbers, per horizon its step
        # times (unless compact), median and levels, then the extras and the closing brace.
        # Stream names need no JSON escaping: StreamId admits [A-Za-z0-9_.-] only.
        quantiles = ",".join(f"{orjson.dumps(str(level)).decode()}:[%b]" for level in self._levels)
        ts = '"ts":%b,' if self._with_ts else ""
        heads = ",".join(
            f'"{h}":{{{ts}"median":[%b],"quantiles":{{{quantiles}}}}}' for h in self._horizons
        )
        self._template = f'{{"stream":"%b",%b,"horizons":{{{heads}}}%b'.encode()
        self._per_head = int(self._with_ts) + 1 + len(self._keep)
        self._pieces = 2 + len(self._horizons) * self._per_head + 1

    def encode(
        self,
        rows: Sequence[GridRow],
        quantiles: dict[int, np.ndarray],
        now: float,
        model_version: int,
        extras: Sequence[Mapping[str, object]] | None = None,
    ) -> list[bytes]:
        """One payload per row; `quantiles[h]` is `[len(rows), h, n_levels]`, sorted per step
        and finite. `extras[i]`: keys added to row i's payload (the quality checks'), none of
        them the payload's own."""
        n, width, size = len(rows), len(self._keep), self._pieces
        if n == 0:
            return []
        # Every payload's pieces in one list, payload i's at [i * size, (i + 1) * size), filled
        # a kind of piece at a time by slice assignment rather than row by row.
        pieces: list[bytes] = [b""] * (n * size)
        pieces[0::size] = [str(row.stream).encode() for row in rows]
        by_grid: dict[tuple[float, float], list[bytes]] = {}
        grids = []
        for row in rows:
            grid = (row.grid_end, row.interval_s)
            parts = by_grid.get(grid)
            if parts is None:
                parts = by_grid[grid] = self._grid_pieces(*grid, now, model_version)
            grids.append(parts)
        pieces[1::size] = [parts[0] for parts in grids]
        for k, h in enumerate(self._horizons):
            at = 2 + k * self._per_head
            if self._with_ts:
                pieces[at::size] = [parts[1 + k] for parts in grids]
                at += 1
            q = np.asarray(quantiles[h], dtype=np.float64)
            pieces[at::size] = _json_rows(round_significant(q @ self._weights, self._digits))
            if width < q.shape[-1]:
                q = q[..., self._keep]
            # [rows * levels, steps]: row i's level j is line i * width + j.
            by_level = round_significant(q, self._digits).transpose(0, 2, 1).reshape(n * width, h)
            lines = _json_rows(by_level)
            for j in range(width):
                pieces[at + 1 + j :: size] = lines[j::width]
        if extras is None:
            pieces[size - 1 :: size] = [b"}"] * n
        else:
            pieces[size - 1 :: size] = [
                b"," + orjson.dumps(extra, option=_OPTIONS)[1:] if extra else b"}"
                for extra in extras
            ]
        template = self._template
        return [template % tuple(pieces[i : i + size]) for i in range(0, n * size, size)]

    def _grid_pieces(
        self, grid_end: float, interval_s: float, now: float, model_version: int
    ) -> list[bytes]:
        """What every payload on one grid shares: the header's fields after the stream, then
        each horizon's step times (rounded to the microsecond) unless compact."""
        header = {
            "model_version": model_version,
            "issued_at": round(now, 3),
            "interval_s": interval_s,
            "grid_end": grid_end,
            "quantile_levels": self._levels,
        }
        parts = [orjson.dumps(header)[1:-1]]
        if self._with_ts:
            parts += [
                orjson.dumps(np.round(grid_end + interval_s * self._steps[h], 6), option=_OPTIONS)
                for h in self._horizons
            ]
        return parts


def _json_rows(values: np.ndarray) -> list[bytes]:
    """The JSON of each row of a 2-D array, without its brackets: `b"1.5,2.0"` per row."""
    text = orjson.dumps(np.ascontiguousarray(values), option=_OPTIONS)
    return text[2:-2].split(b"],[")
