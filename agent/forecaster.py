"""The forecasting tick (DESIGN 5): grid every due stream, run the bundle once on the whole
batch, publish a forecast per stream, then raise or clear its alerts.

Forecast payload, on `<forecasts>/<device>/<sensor>` (QoS 1, retained, expiring):

    {"stream": "boiler/temp", "model_version": 3, "issued_at": 1764040000.0,
     "interval_s": 60.0, "grid_end": 1764039960.0, "quantile_levels": [0.1, ..., 0.9],
     "horizons": {"1": {"ts": [...], "median": [...], "quantiles": {"0.1": [...], ...}},
                  "8": {...}, "32": {...}, "64": {...}}}

Step `i` (from 1) of every horizon lies at `grid_end + i * interval_s`, `grid_end` being the
label (end) of the last bin of the stream's grid. Values are rounded to 6 significant digits.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.alerts import AlertRule, AlertTracker
from agent.bundle import Bundle, output_name
from agent.readings import StreamId
from agent.resample import detect_interval, to_grid
from agent.runtime import TickContext
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

# Rows per model run: one run per tick amortises the call overhead, but an unbounded batch
# would size the model's activations by the number of streams.
MAX_BATCH = 4096
SIGNIFICANT_DIGITS = 6


@dataclass(frozen=True, slots=True)
class GridRow:
    """One due stream on its grid: the model's input row and where the grid ends."""

    stream: StreamId
    interval_s: float
    grid_end: float
    values: np.ndarray  # [context_length] float32, NaN-padded on the left
    alerts: list[AlertRule]


class Forecaster:
    """The agent's `on_tick` callback; owns the per-stream interval cache and alert states.

    Runs on the scheduler thread only (the agent never runs two ticks at once). Load `bundle`
    with `settings.threads`: its `run` is the one model call of each tick.
    """

    def __init__(self, bundle: Bundle, settings: AgentSettings) -> None:
        self.bundle = bundle
        self.settings = settings
        manifest = bundle.manifest
        self._levels = np.asarray(manifest.quantiles, dtype=np.float64)
        self._level_keys = [str(level) for level in manifest.quantiles]
        self._median_weights = _median_weights(self._levels)
        self._horizons = manifest.horizons
        self._detected_intervals: dict[StreamId, float] = {}
        self.alerts = AlertTracker()

    @property
    def model_version(self) -> int:
        return self.bundle.manifest.model_version

    def __call__(self, context: TickContext) -> None:
        started = time.perf_counter()
        skipped: Counter[str] = Counter()
        rows = list(self._due_rows(context, skipped))
        inference_s = 0.0
        forecast = 0
        for chunk in _chunks(rows, MAX_BATCH):
            inference_started = time.perf_counter()
            outputs = self.bundle.run(np.stack([row.values for row in chunk]))
            inference_s += time.perf_counter() - inference_started
            # Crossed quantiles (a model trained on pinball loss can cross them) are sorted per
            # step: sorted, they are a valid distribution, and alerts read them that way too.
            ordered = {
                h: np.sort(outputs[output_name(h)].astype(np.float64), axis=-1)
                for h in self._horizons
            }
            finite = np.logical_and.reduce(
                [np.isfinite(q).all(axis=(1, 2)) for q in ordered.values()]
            )
            # Rounded for the whole chunk at once: per stream, numpy's call overhead dominates.
            shown = {
                h: (_round_significant(q), _round_significant(q @ self._median_weights))
                for h, q in ordered.items()
            }
            longest = ordered[max(ordered)]
            for i, row in enumerate(chunk):
                if not finite[i]:
                    skipped["non_finite_forecast"] += 1
                    continue
                per_horizon = {h: (q[i], median[i]) for h, (q, median) in shown.items()}
                self._publish(context, row, per_horizon)
                self._alert(context, row, longest[i])
                forecast += 1
        context.metrics.observe_forecast_tick(
            time.perf_counter() - started, inference_s, forecast, skipped
        )
        if skipped:
            log.debug("tick: %d streams forecast, skipped %s", forecast, dict(skipped))

    def _due_rows(self, context: TickContext, skipped: Counter[str]) -> Iterator[GridRow]:
        context_length = self.bundle.manifest.context_length
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
            wanted = rule.context_points if rule and rule.context_points else context_length
            grid_end, grid = to_grid(ts, values, interval, min(wanted, context_length))
            if np.count_nonzero(~np.isnan(grid)) < min_observed:
                skipped["too_few_points"] += 1
                continue
            # A rule's shorter context still fills a model row: the model reads NaN as missing.
            grid = np.pad(grid, (context_length - grid.size, 0), constant_values=np.nan)
            yield GridRow(stream, interval, grid_end, grid, rule.alerts if rule else [])

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

    def _publish(
        self,
        context: TickContext,
        row: GridRow,
        per_horizon: dict[int, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """The forecast message; `per_horizon[h]` is (quantiles [h, q], median [h]), rounded."""
        horizons = {}
        for h, (quantiles, median) in per_horizon.items():
            steps = row.grid_end + row.interval_s * np.arange(1, h + 1)
            horizons[str(h)] = {
                "ts": np.round(steps, 6).tolist(),
                "median": median.tolist(),
                "quantiles": dict(zip(self._level_keys, quantiles.T.tolist(), strict=True)),
            }
        payload = {
            "stream": str(row.stream),
            "model_version": self.model_version,
            "issued_at": round(context.now, 3),
            "interval_s": row.interval_s,
            "grid_end": row.grid_end,
            "quantile_levels": self._levels.tolist(),
            "horizons": horizons,
        }
        context.link.publish(
            row.stream.topic(self.settings.topics.forecasts),
            json.dumps(payload, separators=(",", ":")),
            1,
            retain=True,
            expiry_s=self.settings.forecast.expiry_s,
        )

    def _alert(self, context: TickContext, row: GridRow, quantiles: np.ndarray) -> None:
        """Raise or clear `row`'s alerts on the sorted quantiles of the longest head, which
        covers every step a rule's window can ask about."""
        if not row.alerts:
            return
        steps = row.grid_end + row.interval_s * np.arange(1, len(quantiles) + 1)
        events = self.alerts.evaluate(
            row.stream, row.alerts, steps, self._levels, quantiles, context.now
        )
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


def _round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """`values` rounded to `digits` significant digits, as float64 whose shortest repr (what
    json writes) is that many digits at most: a forecast of float32 noise is compact."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    exponent = np.floor(np.log10(magnitude, out=np.zeros_like(values), where=magnitude > 0))
    decimals = (digits - 1 - exponent).astype(np.int64)
    # Dividing by an exact power of ten rounds once, to the double nearest the decimal;
    # multiplying by 10**-k (not exact) would not.
    up = 10.0 ** np.maximum(decimals, 0)
    down = 10.0 ** np.maximum(-decimals, 0)
    return np.where(decimals >= 0, np.round(values * up) / up, np.round(values / down) * down)
