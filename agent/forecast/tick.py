"""The forecasting tick: grid every due stream, run the bundle on batches of
MAX_BATCH streams, publish a forecast per stream, then raise or clear its alerts.

Forecast payload, on `<forecasts>/<device>/<sensor>` (QoS 1, retained, expiring):

    {"stream": "boiler/temp", "model_version": 3, "issued_at": 1764040000.0,
     "interval_s": 60.0, "grid_end": 1764039960.0, "quantile_levels": [0.1, ..., 0.9],
     "horizons": {"1": {"ts": [...], "median": [...], "quantiles": {"0.1": [...], ...}},
                  "8": {...}, "32": {...}, "64": {...}}}

Step `i` (from 1) of every horizon lies at `grid_end + i * interval_s`, `grid_end` being the
label (end) of the last bin of the stream's grid. Values are rounded to 6 significant digits.

A stream is due when it has an interval (configured or detected), enough observed bins
(`forecast.min_observed_bins`) and is not stale: its newest reading is at most
`forecast.stale_after_s` older than the tick ("auto": STALE_INTERVALS of its intervals, at
least STALE_MIN_S). A stale stream gets no new forecast, so its retained one expires
(`forecast.expiry_s`) instead of being renewed with steps that all lie in the past. Skipped
streams are counted per reason: "no_interval", "stale", "too_few_points",
"non_finite_forecast".
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from moecast.agent.forecast.alerts import AlertRule, AlertTracker
from moecast.agent.forecast.grid import detect_interval, to_grid
from moecast.agent.ingest.readings import StreamId
from moecast.agent.runtime import TickContext
from moecast.agent.settings import AgentSettings

from moecast.bundle.format import Bundle, output_name

log = logging.getLogger(__name__)

# Rows per model run. The model's activations take ~3 MB per row (the `edge` bundle: 64
# patches of 8, every expert evaluated in the graph) and ONNX Runtime's arena keeps its peak:
# 1000 rows in one run peaked at 2.9 GB of RSS, runs of 8 at ~25 MB above the loaded model.
# Small runs were no slower (2 cores, 1000 rows: ~1.5 s in runs of 8 or 16, 2.1 s in runs of
# 256, 3.6 s in one run).
MAX_BATCH = 8
SIGNIFICANT_DIGITS = 6
# Streams whose payloads are encoded together: enough to amortise numpy's per-call overhead,
# few enough that the encoder's scratch arrays (~30 bytes per number, ~1000 numbers per
# stream) stay around 2 MB.
ENCODE_ROWS = 64
# `stale_after_s: auto`: after 16 silent intervals the 1- and 8-step heads and half the
# 32-step one forecast the past. The floor keeps a fast stream whose device clock runs a little
# behind (readings up to `limits.payload.max_future_s` ahead are accepted, so clocks are not
# assumed exact) or that misses a few seconds of readings from being silenced.
STALE_INTERVALS = 16
STALE_MIN_S = 600.0


@dataclass(frozen=True, slots=True)
class GridRow:
    """One due stream on its grid: the model's input row and where the grid ends."""

    stream: StreamId
    interval_s: float
    grid_end: float
    values: np.ndarray  # float32 grid, at most context_length long; the batch pads it with NaN
    alerts: list[AlertRule]


class _Model:
    """A bundle and what every tick derives from its manifest. `Forecaster.use_bundle` swaps
    the whole object and a tick reads it once, so no tick mixes two bundles."""

    __slots__ = ("bundle", "context_length", "encoder", "horizons", "levels", "version")

    def __init__(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.version = manifest.model_version
        self.context_length = manifest.context_length
        self.horizons = tuple(manifest.horizons)
        self.levels = np.asarray(manifest.quantiles, dtype=np.float64)
        self.encoder = PayloadEncoder(self.horizons, manifest.quantiles)


class Forecaster:
    """The agent's `on_tick` callback; owns the per-stream interval cache and alert states.

    Runs on the scheduler thread only (the agent never runs two ticks at once). Load `bundle`
    with `settings.threads`: its `run`, on MAX_BATCH streams at a time, is the tick's model.
    """

    def __init__(self, bundle: Bundle, settings: AgentSettings) -> None:
        self.settings = settings
        self._model = _Model(bundle)
        self._detected_intervals: dict[StreamId, float] = {}
        self.alerts = AlertTracker()

    @property
    def bundle(self) -> Bundle:
        return self._model.bundle

    @bundle.setter
    def bundle(self, bundle: Bundle) -> None:
        self.use_bundle(bundle)

    @property
    def model_version(self) -> int:
        return self._model.version

    def use_bundle(self, bundle: Bundle) -> None:
        """Forecast with `bundle` from the next tick on; a tick already running finishes with
        the bundle it started with. Detected intervals and alert states carry over: they
        belong to the streams, not to the model. The caller reports the new version on the
        status topic (`MqttLink.set_model_version`)."""
        self._model = _Model(bundle)

    def __call__(self, context: TickContext) -> None:
        started = time.perf_counter()
        model = self._model
        skipped: Counter[str] = Counter()
        rows = list(self._due_rows(context, model.context_length, skipped))
        inference_s = 0.0
        forecast = 0
        for chunk in _chunks(rows, MAX_BATCH):
            batch = np.full((len(chunk), model.context_length), np.nan, dtype=np.float32)
            for i, row in enumerate(chunk):
                # A rule's shorter context still fills a model row: the model reads NaN as
                # missing.
                batch[i, model.context_length - row.values.size :] = row.values
            inference_started = time.perf_counter()
            outputs = model.bundle.run(batch)
            inference_s += time.perf_counter() - inference_started
            # Crossed quantiles (a model trained on pinball loss can cross them) are sorted per
            # step: sorted, they are a valid distribution, and alerts read them that way too.
            ordered = {
                h: np.sort(outputs[output_name(h)].astype(np.float64), axis=-1)
                for h in model.horizons
            }
            finite = np.logical_and.reduce(
                [np.isfinite(q).all(axis=(1, 2)) for q in ordered.values()]
            )
            skipped["non_finite_forecast"] += int(np.count_nonzero(~finite))
            longest = ordered[max(model.horizons)]
            good = np.flatnonzero(finite)
            for start in range(0, good.size, ENCODE_ROWS):
                index = good[start : start + ENCODE_ROWS]
                shown = [chunk[i] for i in index]
                payloads = model.encoder.encode(
                    shown,
                    {h: q[index] for h, q in ordered.items()},
                    context.now,
                    model.version,
                )
                for i, row, payload in zip(index, shown, payloads, strict=True):
                    context.link.publish(
                        row.stream.topic(self.settings.topics.forecasts),
                        payload,
                        1,
                        retain=True,
                        expiry_s=self.settings.forecast.expiry_s,
                    )
                    self._alert(context, row, longest[i], model.levels)
                forecast += len(shown)
        skipped = +skipped  # drop reasons counted zero times
        context.metrics.observe_forecast_tick(
            time.perf_counter() - started, inference_s, forecast, skipped
        )
        if skipped:
            log.debug("tick: %d streams forecast, skipped %s", forecast, dict(skipped))

    def _due_rows(
        self, context: TickContext, context_length: int, skipped: Counter[str]
    ) -> Iterator[GridRow]:
        min_observed = self.settings.forecast.min_observed_bins
        for stream in context.registry.streams():
            snapshot = context.registry.snapshot(stream)
            if snapshot is None or snapshot[0].size == 0:
                continue
            ts, values = snapshot
            rule = self.settings.rule_for(stream)
            interval = self._interval(stream, ts, rule.interval_s if rule else "auto")
            if interval is None:
                skipped["no_interval"] += 1
                continue
            if context.now - ts[-1] > self._stale_after(interval):
                skipped["stale"] += 1
                continue
            wanted = rule.context_points if rule and rule.context_points else context_length
            grid_end, grid = to_grid(ts, values, interval, min(wanted, context_length))
            if np.count_nonzero(~np.isnan(grid)) < min_observed:
                skipped["too_few_points"] += 1
                continue
            yield GridRow(stream, interval, grid_end, grid, rule.alerts if rule else [])

    def _stale_after(self, interval_s: float) -> float:
        configured = self.settings.forecast.stale_after_s
        if configured == "auto":
            return max(STALE_INTERVALS * interval_s, STALE_MIN_S)
        return configured

    def _interval(
        self, stream: StreamId, ts: np.ndarray, configured: float | Literal["auto"]
    ) -> float | None:
        if isinstance(configured, float):
            return configured
        interval = self._detected_intervals.get(stream)
        if interval is None:
            # Detected once and kept: a re-detected interval could re-phase the grid.
            interval = detect_interval(ts)
            if interval is not None:
                self._detected_intervals[stream] = interval
        return interval

    def _alert(
        self, context: TickContext, row: GridRow, quantiles: np.ndarray, levels: np.ndarray
    ) -> None:
        """Raise or clear `row`'s alerts on the sorted quantiles of the longest head, which
        covers every step a rule's window can ask about."""
        if not row.alerts:
            return
        steps = row.grid_end + row.interval_s * np.arange(1, len(quantiles) + 1)
        events = self.alerts.evaluate(row.stream, row.alerts, steps, levels, quantiles, context.now)
        for event in events:
            context.link.publish(
                row.stream.topic(self.settings.topics.alerts), json.dumps(event.payload()), 1
            )


def _chunks(rows: list[GridRow], size: int) -> Iterator[list[GridRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _median_weights(levels: np.ndarray) -> np.ndarray:
    """Weights `w` with `quantiles @ w` = the 0.5 quantile: the 0.5 column itself when the model
    has one (exactly, as a one-hot), else interpolated linearly between the levels around it."""
    return np.array([np.interp(0.5, levels, unit) for unit in np.eye(levels.size)])


def _significand(
    values: np.ndarray, digits: int = SIGNIFICANT_DIGITS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`values` rounded to `digits` significant digits, and the same as `scaled / 10**decimals`:
    (rounded, scaled, decimals), `scaled` a whole number (float64, signed) of at most `digits`
    digits. `values` must be finite."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    exponent = np.floor(np.log10(magnitude, out=np.zeros_like(values), where=magnitude > 0))
    decimals = (digits - 1 - exponent).astype(np.int64)
    up = 10.0 ** np.maximum(decimals, 0)
    down = 10.0 ** np.maximum(-decimals, 0)
    positive = decimals >= 0
    scaled = np.where(positive, np.round(values * up), np.round(values / down))
    # Dividing by an exact power of ten rounds once, to the double nearest the decimal;
    # multiplying by 10**-k (not exact) would not.
    rounded = np.where(positive, scaled / up, scaled * down)
    return rounded, scaled, decimals


def _round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """`values` rounded to `digits` significant digits, as float64 whose shortest repr (what
    json writes) is that many digits at most: a forecast of float32 noise is compact."""
    return _significand(values, digits)[0]


class PayloadEncoder:
    """The JSON text of forecast payloads (the contract at the top of this module), written for
    many streams at once.

    The text is, byte for byte, what `json.dumps(payload, separators=(",", ":"))` writes for the
    payload with every value rounded by `_round_significant` (the tests hold it to that). json
    would format each number with `float.__repr__`, about a million calls for a thousand
    streams; here numpy writes the digits of a whole block of streams at once (`_decimal_text`)
    and Python only splices a few dozen pieces per stream. A stream with a number that repr
    writes in exponent notation (non-zero below 1e-4, or from 1e16 up) takes json's way.
    """

    def __init__(self, horizons: Sequence[int], levels: Sequence[float]) -> None:
        self._horizons = tuple(horizons)
        self._levels = list(levels)
        self._level_keys = [str(level) for level in levels]
        self._weights = _median_weights(np.asarray(levels, dtype=np.float64))
        one_hot = np.flatnonzero(self._weights)
        # With a 0.5 level the median is that column exactly (`q @ one_hot`): its text is
        # written once and used twice.
        self._median_column: int | None = (
            int(one_hot[0]) if one_hot.size == 1 and self._weights[one_hot[0]] == 1.0 else None
        )
        self._template, self._arrays, ends = self._layout()
        self._ends = np.asarray(ends, dtype=np.intp)
        self._ts_cache: dict[tuple[float, float], list[str]] = {}

    def encode(
        self,
        rows: Sequence[GridRow],
        quantiles: dict[int, np.ndarray],
        now: float,
        model_version: int,
    ) -> list[str]:
        """One payload per row; `quantiles[h]` is `[len(rows), h, n_levels]`, sorted per step
        and finite."""
        n = len(rows)
        blocks = []
        for h in self._horizons:
            q = np.asarray(quantiles[h], dtype=np.float64)
            if self._median_column is None:
                blocks.append(q @ self._weights)
            blocks.append(q.transpose(0, 2, 1).reshape(n, -1))
        values = np.concatenate(blocks, axis=1)
        rounded, scaled, decimals = _significand(values)
        magnitude = np.abs(rounded)
        plain = (((magnitude >= 1e-4) & (magnitude < 1e16)) | (magnitude == 0)).all(axis=1)
        header = (_dumps(model_version), _dumps(round(now, 3)))
        payloads: list[str] = [""] * n
        fast = np.flatnonzero(plain)
        if fast.size:
            parts = _decimal_text(scaled[fast], decimals[fast], self._ends).split("|")
            per_row = self._arrays
            for j, i in enumerate(fast.tolist()):
                row = rows[i]
                payloads[i] = self._template.format(
                    # Stream names are [A-Za-z0-9_.-] (StreamId): nothing to escape.
                    f'"{row.stream}"',
                    *header,
                    _number(row.interval_s),
                    _number(row.grid_end),
                    *self._ts_texts(row),
                    *parts[j * per_row : (j + 1) * per_row],
                )
        for i in np.flatnonzero(~plain).tolist():
            payloads[i] = self._json_payload(rows[i], quantiles, i, now, model_version)
        if len(self._ts_cache) > 4 * ENCODE_ROWS:
            self._ts_cache.clear()  # grids move on every tick: keep only the recent ones
        return payloads

    def _layout(self) -> tuple[str, int, list[int]]:
        """The payload as a `str.format` template; how many value arrays one row's text holds;
        and per value of a row, 1 where it ends an array ('|' in the text), else 0 (',')."""

        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        n_horizons = len(self._horizons)
        next_array = 5 + n_horizons  # fields: 5 header values, one ts per horizon, the arrays
        ends: list[int] = []
        horizons = []
        for k, h in enumerate(self._horizons):
            fields = []
            for _ in range(len(self._levels) + (self._median_column is None)):
                fields.append(next_array)
                next_array += 1
                ends += [0] * (h - 1) + [1]
            if self._median_column is None:
                median, columns = fields[0], fields[1:]
            else:
                median, columns = fields[self._median_column], fields
            quantiles = ",".join(
                f"{literal(_dumps(key))}:[{{{field}}}]"
                for key, field in zip(self._level_keys, columns, strict=True)
            )
            horizons.append(
                f'{literal(_dumps(str(h)))}:{{{{"ts":{{{5 + k}}},"median":[{{{median}}}],'
                f'"quantiles":{{{{{quantiles}}}}}}}}}'
            )
        template = (
            '{{"stream":{0},"model_version":{1},"issued_at":{2},"interval_s":{3},'
            f'"grid_end":{{4}},"quantile_levels":{literal(_dumps(self._levels))},'
            f'"horizons":{{{{{",".join(horizons)}}}}}}}}}'
        )
        return template, next_array - 5 - n_horizons, ends

    def _ts_texts(self, row: GridRow) -> list[str]:
        """The step times of each horizon as JSON arrays; streams on the same grid (the same
        interval, readings up to the same bin) share them."""
        key = (row.grid_end, row.interval_s)
        texts = self._ts_cache.get(key)
        if texts is None:
            texts = self._ts_cache[key] = [
                _dumps(np.round(_steps(row, h), 6).tolist()) for h in self._horizons
            ]
        return texts

    def _json_payload(
        self,
        row: GridRow,
        quantiles: dict[int, np.ndarray],
        i: int,
        now: float,
        model_version: int,
    ) -> str:
        """The payload through json.dumps: the reference the fast path is held to."""
        horizons = {}
        for h in self._horizons:
            q = np.asarray(quantiles[h][i], dtype=np.float64)
            horizons[str(h)] = {
                "ts": np.round(_steps(row, h), 6).tolist(),
                "median": _round_significant(q @ self._weights).tolist(),
                "quantiles": dict(
                    zip(self._level_keys, _round_significant(q).T.tolist(), strict=True)
                ),
            }
        payload = {
            "stream": str(row.stream),
            "model_version": model_version,
            "issued_at": round(now, 3),
            "interval_s": row.interval_s,
            "grid_end": row.grid_end,
            "quantile_levels": self._levels,
            "horizons": horizons,
        }
        return _dumps(payload)


def _steps(row: GridRow, horizon: int) -> np.ndarray:
    return row.grid_end + row.interval_s * np.arange(1, horizon + 1)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _number(value: float) -> str:
    """`value` as json writes it, without json's per-call overhead."""
    return float.__repr__(value) if np.isfinite(value) else _dumps(value)


# Digit groups as 4-byte words, one word per group of 4 digits. A 0 byte is a character left
# out: leading zeros of the whole part and trailing zeros of the fraction are written as 0
# bytes, and dropped with every other 0 byte in one pass at the end.
def _word_table(render: str) -> np.ndarray:
    def text(i: int) -> str:
        digits = f"{i:04d}"
        if render == "lead":  # a leading group: no leading zeros
            return digits.lstrip("0").rjust(4, "\0")
        if render == "units":  # the group before the point: at least "0"
            return (digits.lstrip("0") or "0").rjust(4, "\0")
        if render == "trail":  # a trailing fraction group: no trailing zeros
            return digits.rstrip("0").ljust(4, "\0")
        if render == "tenths":  # the group after the point: at least "0"
            return (digits.rstrip("0") or "0").ljust(4, "\0")
        return digits

    joined = "".join(text(i) for i in range(10_000)).encode("ascii")
    return np.frombuffer(joined, dtype=np.uint32)


_FULL, _LEAD, _UNITS, _TRAIL, _TENTHS = (
    _word_table(render) for render in ("full", "lead", "units", "trail", "tenths")
)
_MINUS = np.frombuffer(b"\0\0\0-", dtype=np.uint32)[0]
_POINT = np.frombuffer(b".\0\0\0", dtype=np.uint32)[0]
_ENDS = np.frombuffer(b",\0\0\0|\0\0\0", dtype=np.uint32)  # within an array, ending one
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def _decimal_text(scaled: np.ndarray, decimals: np.ndarray, ends: np.ndarray) -> str:
    """`scaled / 10**decimals` (from `_significand`) for `[rows, k]` values, as repr writes
    them positionally ("-0.0", "20.1235", "98765400.0"), each followed by ',' or, where
    `ends[k]` is 1, by '|'. Values must be 0 or in [1e-4, 1e16) (repr's positional range)."""
    rows, k = scaled.shape
    negative = np.signbit(scaled).ravel()  # -0.0 too: json writes it "-0.0"
    digits = np.abs(scaled).ravel().astype(np.int64)
    decimals = decimals.ravel()
    after = np.maximum(decimals, 0)  # digits of `digits` after the point
    whole = digits // _POW10[after] * _POW10[np.maximum(-decimals, 0)]
    fraction = digits % _POW10[after]
    whole_groups = max(1, -(-len(str(int(whole.max()))) // 4))
    fraction_digits = 4 * max(1, -(-int(after.max()) // 4))
    fraction = fraction * _POW10[fraction_digits - after]  # left-aligned: 0.5 -> 5000

    out = np.empty((rows * k, whole_groups + fraction_digits // 4 + 3), dtype=np.uint32)
    out[:, 0] = np.where(negative, _MINUS, 0)
    for j in range(whole_groups):
        shift = 4 * (whole_groups - 1 - j)
        group = (whole // _POW10[shift]) % 10_000 if shift else whole % 10_000
        table = _UNITS if shift == 0 else _LEAD
        # Zeros inside the number are digits: only the highest non-zero group drops leading
        # zeros.
        out[:, 1 + j] = (
            table[group]
            if j == 0
            else np.where(whole >= _POW10[shift + 4], _FULL[group], table[group])
        )
    point = 1 + whole_groups
    out[:, point] = _POINT
    fraction_groups = fraction_digits // 4
    for j in range(fraction_groups):
        shift = 4 * (fraction_groups - 1 - j)
        group = (fraction // _POW10[shift]) % 10_000 if shift else fraction % 10_000
        table = _TENTHS if j == 0 else _TRAIL
        out[:, point + 1 + j] = (
            np.where(fraction % _POW10[shift] != 0, _FULL[group], table[group])
            if shift
            else table[group]
        )
    out.reshape(rows, k, -1)[:, :, -1] = _ENDS[ends]
    raw = out.view(np.uint8).ravel()
    return raw[raw != 0].tobytes().decode("ascii")
