"""The forecasting tick: grid every due stream, run the bundle on batches of MAX_BATCH
streams, publish a forecast per stream (payload: `moecast.agent.forecast.encoding`), then raise
or clear its alerts. The tick returns what it did (`TickOutcome`).

The model runs in a thread of its own, a block of BLOCK streams after another, from the moment
the first block is gridded: ONNX Runtime releases the GIL while it computes, so the tick's own
work (gridding the next blocks, scoring, encoding and publishing the last block's forecasts)
runs on another core meanwhile instead of after the model. Blocks are published in order.

A stream is due when it has an interval (configured or detected), enough observed bins
(`forecast.min_observed_bins`) and is not stale: readings arrived for it at most
`forecast.stale_after_s` before the tick ("auto": STALE_INTERVALS of its intervals, at least
STALE_MIN_S). Arrival, on the agent's clock, and not the readings' event time: history
replayed or backfilled with its real timestamps is forecast from its last reading. A stream
nothing arrives for gets no new forecast, so its retained one expires (`forecast.expiry_s`).
Skipped streams are counted per reason: "no_interval", "stale", "too_few_points",
"non_finite_forecast", "unchanged" (`forecast.publish: on_change`: the origin and the model are
those of the forecast already published); each stream's reason is logged once, with the
setting that governs it, until the stream is forecast again. For `updates.trial_ticks` ticks
after `use_bundle`, unchanged streams still go through the model, unpublished: a model on
trial is judged on what its ticks compute (agent.updates.active), whether or not new readings
came in.

A stream rule's `min`/`max` clip the forecast's quantiles (and so its median and alerts).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
from moecast.agent.forecast.alerts import AlertRule, AlertTracker
from moecast.agent.forecast.encoding import PayloadEncoder
from moecast.agent.forecast.grid import detect_interval, to_grids
from moecast.agent.forecast.outcome import TickOutcome
from moecast.agent.forecast.quality import QualityMonitor
from moecast.agent.ingest.readings import StreamId
from moecast.agent.runtime import TickContext
from moecast.agent.settings import AgentSettings, StreamRule

from moecast.bundle.format import Bundle, output_name

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Rows per model run. The model's activations take ~3 MB per row (the `edge` bundle: 64
# patches of 8, every expert evaluated in the graph) and ONNX Runtime keeps its peak (arena on
# or off alike): 1000 rows in one run peaked at 2.9 GB of RSS. Small runs were no slower
# (2 cores, 1000 rows: ~1.5 s in runs of 8 or 16, 2.1 s in runs of 256, 3.6 s in one run).
# The v2 bundle, 256 rows on one thread: runs of 8 peaked 34 MB above the loaded model, runs of
# 4 21 MB in the same time (2.7-2.9 s), runs of 2 14 MB but 12 % slower, runs of 1 40 % slower.
# 3 rather than 4 since bundle v5, for the agent's memory goal (150 MB with 1000 streams):
# `benchmarks/agent_throughput.py --quick` peaked at 146.7-147.4 MB against 149.0-150.4, for
# about 10 % more model time a tick (4.90-5.10 s against 4.13-4.89 s for 1000 streams).
# 2 since bundle v7, whose seasonal-mean candidates take ONNX Runtime's arena up by 2.8 MB in
# runs of 3 (`benchmarks/agent_memory.py`): a quick run peaked at 152 MB in runs of 3 and
# 147-148 MB in runs of 2, for 7 % more model time in the full run (4.71 s against 4.41 s for
# 1000 streams) and 7-19 % in quick ones.
MAX_BATCH = 2
# Rows gridded, run, sorted, calibrated, encoded and published together: a few numpy calls
# per block, not per model run, while a block's arrays (float64 quantiles, payloads) stay
# small. `python benchmarks/agent_memory.py`: ticks of 1000 streams peaked at 147-148 MB in
# blocks of 64, 150-151 in blocks of 128 and 157-158 in blocks of 256, at the same CPU time
# (`benchmarks/tick_cost.py`: 111 against 118 ms outside the model). Small blocks also start
# the model sooner and leave less to publish after its last run.
BLOCK = 64
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
    low: float = -np.inf  # the stream rule's bounds, clipping its forecast
    high: float = np.inf
    publish: bool = True  # False: run for a model on trial only, the forecast is unchanged


class _Due(NamedTuple):
    """A stream due for a forecast, before gridding: the readings its grid covers."""

    stream: StreamId
    rule: StreamRule | None
    unchanged: bool  # due only because a model on trial runs unchanged streams too
    ts: np.ndarray
    values: np.ndarray
    interval: float
    length: int


class _Model:
    """A bundle and what every tick derives from its manifest. `Forecaster.use_bundle` swaps
    the whole object and a tick reads it once, so no tick mixes two bundles."""

    __slots__ = ("bundle", "context_length", "encoder", "horizons", "levels", "version")

    def __init__(self, bundle: Bundle, compact: bool = False) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.version = manifest.model_version
        self.context_length = manifest.context_length
        self.horizons = tuple(manifest.horizons)
        self.levels = np.asarray(manifest.quantiles, dtype=np.float64)
        self.encoder = PayloadEncoder(self.horizons, manifest.quantiles, compact)


class Forecaster:
    """The agent's forecasting tick (run by the active model, or as `on_tick` itself); owns
    the per-stream interval cache and alert states.

    Runs on the scheduler thread only (the agent never runs two ticks at once). Load `bundle`
    with `settings.threads`: its `run`, on MAX_BATCH streams at a time, is the tick's model.
    """

    def __init__(self, bundle: Bundle, settings: AgentSettings, model_thread: bool = True) -> None:
        """`model_thread=False`: the model runs on the tick's thread, each block before the
        tick goes on (what the work outside the model costs, without threads, is measured
        that way: benchmarks/tick_cost.py)."""
        self.settings = settings
        self._model = _Model(bundle, settings.forecast.payload == "compact")
        self._detected_intervals: dict[StreamId, float] = {}
        self._rules: dict[StreamId, StreamRule | None] = {}
        self.alerts = AlertTracker()
        # Live skill, calibrated quantiles, anomalies, Home Assistant (forecast.quality).
        self.quality = QualityMonitor(settings, self._stale_after)
        # Per stream: (grid_end, model version, when) of the forecast last published.
        self._published: dict[StreamId, tuple[float, int, float]] = {}
        self._skip_logged: dict[StreamId, str] = {}  # the reason last logged, until forecast
        self._ticks_since_swap = settings.updates.trial_ticks  # the first bundle is no trial
        # Model runs, one block after another (the thread starts with the first tick).
        self._runner: ThreadPoolExecutor | _InlineRunner = (
            ThreadPoolExecutor(1, thread_name_prefix="moecast-model")
            if model_thread
            else _InlineRunner()
        )

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
        self._model = _Model(bundle, self.settings.forecast.payload == "compact")
        self._ticks_since_swap = 0

    def close(self) -> None:
        """After the last tick: save the forecast quality state (a clean stop keeps it)."""
        self._runner.shutdown(wait=True)
        self.quality.close()

    def __call__(self, context: TickContext) -> TickOutcome:
        started = time.perf_counter()
        model = self._model
        outcome = TickOutcome(model.version)
        skipped = outcome.skipped
        blocks: list[list[GridRow]] = []
        runs: deque[Future[tuple[dict[int, np.ndarray], float]]] = deque()
        failed: list[BaseException] = []

        def model_run(block: list[GridRow]) -> tuple[dict[int, np.ndarray], float]:
            # In the model thread, which alone touches `outcome`'s run counts until every run
            # is done. After a failed run the tick fails: the blocks after it are not run.
            if failed:
                raise failed[0]
            try:
                return self._run_model(model, block, outcome)
            except BaseException as err:
                failed.append(err)
                raise

        def run(block: list[GridRow]) -> None:
            blocks.append(block)
            runs.append(self._runner.submit(model_run, block))

        inference_s = 0.0
        forecast = 0
        try:
            rows = self._due_rows(context, model.context_length, skipped, run)
            self.quality.observe(rows, model.horizons, model.levels, context)
            for block in blocks:
                # Taken off the queue: a run's outputs are freed once published.
                raw, seconds = runs.popleft().result()
                inference_s += seconds
                forecast += self._publish(context, model, block, raw, skipped)
        finally:
            for pending in runs:  # after an error, none is left to run
                pending.cancel()
        outcome.forecast = forecast
        self.quality.finish(context)
        outcome.skipped = skipped = +skipped  # drop reasons counted zero times
        if outcome.runs:
            self._ticks_since_swap += 1  # as a trial counts them: ticks that ran the model
        context.metrics.observe_forecast_tick(
            time.perf_counter() - started, inference_s, forecast, skipped
        )
        if skipped:
            log.debug("tick: %d streams forecast, skipped %s", forecast, dict(skipped))
        return outcome

    def _run_model(
        self, model: _Model, rows: list[GridRow], outcome: TickOutcome
    ) -> tuple[dict[int, np.ndarray], float]:
        """The raw quantiles of every row, `[rows, h, levels]` per head, from model runs of
        MAX_BATCH rows, and the seconds spent in the model."""
        batch = np.full((len(rows), model.context_length), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            # A rule's shorter context still fills a model row: the model reads NaN as missing.
            batch[i, model.context_length - row.values.size :] = row.values
        parts: dict[int, list[np.ndarray]] = {h: [] for h in model.horizons}
        inference_s = 0.0
        for start in range(0, len(rows), MAX_BATCH):
            started = time.perf_counter()
            outputs = model.bundle.run(batch[start : start + MAX_BATCH])
            inference_s += time.perf_counter() - started
            outcome.observe_run(outputs, model.horizons, health=False)
            for h in model.horizons:
                parts[h].append(outputs[output_name(h)])
        raw = {h: np.concatenate(parts[h]) for h in model.horizons}
        outcome.health.observe_runs(raw, MAX_BATCH)
        return raw, inference_s

    def _publish(
        self,
        context: TickContext,
        model: _Model,
        rows: list[GridRow],
        raw: dict[int, np.ndarray],
        skipped: Counter[str],
    ) -> int:
        """Sort, calibrate and clip the quantiles, publish the forecasts, evaluate alerts;
        returns the number of forecasts published."""
        # Crossed quantiles (a model trained on pinball loss can cross them) are sorted per
        # step: sorted, they are a valid distribution, and alerts read them that way too.
        ordered = {h: np.sort(q.astype(np.float64), axis=-1) for h, q in raw.items()}
        ordered = self.quality.calibrate(rows, ordered)
        if any(row.low > -np.inf or row.high < np.inf for row in rows):
            # After calibration, so the bounds hold for what is published. Clipping keeps
            # quantiles sorted; NaN stays NaN for the check below.
            low = np.array([row.low for row in rows])[:, None, None]
            high = np.array([row.high for row in rows])[:, None, None]
            ordered = {h: np.clip(q, low, high) for h, q in ordered.items()}
        finite = np.logical_and.reduce([np.isfinite(q).all(axis=(1, 2)) for q in ordered.values()])
        publish = np.fromiter((row.publish for row in rows), bool, len(rows))
        skipped["non_finite_forecast"] += int(np.count_nonzero(~finite))
        skipped["unchanged"] += int(np.count_nonzero(~publish))
        longest = ordered[max(model.horizons)]
        good = np.flatnonzero(finite & publish)
        shown, issued = rows, ordered  # every row goes out: no copies
        if good.size < len(rows):
            shown = [rows[i] for i in good]
            issued = {h: q[good] for h, q in ordered.items()}
        extras = self.quality.issued(shown, issued, good, context.now)
        payloads = model.encoder.encode(shown, issued, context.now, model.version, extras)
        topic, expiry = self.settings.topics.forecasts, self.settings.forecast.expiry_s
        for i, row, payload in zip(good.tolist(), shown, payloads, strict=True):
            context.link.publish(row.stream.topic(topic), payload, 1, retain=True, expiry_s=expiry)
            if row.alerts:
                self._alert(context, row, longest[i], model.levels)
            self._published[row.stream] = (row.grid_end, model.version, context.now)
            self._skip_logged.pop(row.stream, None)
        return len(shown)

    def _due_rows(
        self,
        context: TickContext,
        context_length: int,
        skipped: Counter[str],
        on_block: Callable[[list[GridRow]], None] = lambda block: None,
    ) -> list[GridRow]:
        """The model rows of every due stream; `on_block` gets each block of at most BLOCK
        rows as soon as it is gridded (the tick starts its model run)."""
        settings = self.settings.forecast
        on_trial = self._ticks_since_swap < self.settings.updates.trial_ticks
        streams = context.registry.streams()
        rows: list[GridRow] = []
        # Due streams are gridded a block at a time, as they are found: the copies of their
        # readings and the gridding's temporary arrays are then a block's, not the tick's.
        due: list[_Due] = []
        for stream in streams:
            rule = self._rule(stream)
            configured = rule.interval_s if rule else "auto"
            wanted = rule.context_points if rule and rule.context_points else context_length
            length = min(wanted, context_length)
            known = self._known_interval(stream, configured)
            # Once the interval is known, only the readings the grid's bins can hold (and a
            # bin more, against rounding) are copied: a stream's buffer holds up to
            # `limits.streams.max_points` (2048) readings, and a tick holds every due
            # stream's. Detecting the interval takes them all, once.
            span_s = math.inf if known is None else (length + 2) * known
            recent = context.registry.recent(stream, span_s)
            if recent is None or recent[0].size == 0:
                continue
            ts, values, arrival = recent
            interval = known if known is not None else self._interval(stream, ts, configured)
            if interval is None:
                self._skip(stream, skipped, "no_interval", "")
                continue
            silent_s, stale_after = context.now - arrival, self._stale_after(interval)
            if silent_s > stale_after:
                self._skip(stream, skipped, "stale", f"{silent_s:.0f} s > {stale_after:.0f} s")
                continue
            grid_end = math.ceil(ts[-1] / interval) * interval  # as to_grid labels it
            unchanged = settings.publish == "on_change" and self._unchanged(
                stream, grid_end, context.now
            )
            if unchanged and not on_trial:
                skipped["unchanged"] += 1
                continue
            if known is None:  # the whole buffer: keep only what the grid holds
                first = int(ts.searchsorted((grid_end / interval - length - 1) * interval, "right"))
                ts, values = ts[first:].copy(), values[first:].copy()
            due.append(_Due(stream, rule, unchanged, ts, values, interval, length))
            if len(due) >= BLOCK:
                rows += self._grid(due, skipped, on_block)
                due = []
        rows += self._grid(due, skipped, on_block)
        if len(self._published) + len(self._skip_logged) > 2 * len(streams):
            # Streams evicted from the registry leave their entries behind.
            live = set(streams)
            self._published = {s: p for s, p in self._published.items() if s in live}
            self._skip_logged = {s: r for s, r in self._skip_logged.items() if s in live}
            self._rules = {s: r for s, r in self._rules.items() if s in live}
        return rows

    def _grid(
        self,
        due: list[_Due],
        skipped: Counter[str],
        on_block: Callable[[list[GridRow]], None] = lambda block: None,
    ) -> list[GridRow]:
        """The model rows of due streams, gridded together (passed to `on_block` unless none);
        streams whose grid observes too few bins are skipped."""
        if not due:
            return []
        rows = []
        series = [(d.ts, d.values) for d in due]
        ends, grids = to_grids(series, [d.interval for d in due], [d.length for d in due])
        for d, grid_end, grid in zip(due, ends, grids, strict=True):
            observed = int(np.count_nonzero(~np.isnan(grid)))
            if observed < self.settings.forecast.min_observed_bins:
                self._skip(d.stream, skipped, "too_few_points", f"{observed} of {grid.size} bins")
                continue
            low, high = _bounds(d.rule)
            alerts = d.rule.alerts if d.rule else []
            rows.append(
                GridRow(d.stream, d.interval, grid_end, grid, alerts, low, high, not d.unchanged)
            )
        if rows:
            on_block(rows)
        return rows

    def _rule(self, stream: StreamId) -> StreamRule | None:
        """The stream's rule, looked up once (the settings do not change while running)."""
        try:
            return self._rules[stream]
        except KeyError:
            rule = self._rules[stream] = self.settings.rule_for(stream)
            return rule

    def _unchanged(self, stream: StreamId, grid_end: float, now: float) -> bool:
        """Whether the forecast already published for `stream` has this origin and model and
        is not yet half way to its expiry (after which it is renewed, so that the retained
        forecast of a slow stream does not expire between two of its readings)."""
        published = self._published.get(stream)
        if published is None:
            return False
        origin, version, when = published
        fresh = now - when < self.settings.forecast.expiry_s / 2
        return origin == grid_end and version == self._model.version and fresh

    def _skip(self, stream: StreamId, skipped: Counter[str], reason: str, detail: str) -> None:
        """Count a skip; log it when the stream's reason changed, naming what governs it."""
        skipped[reason] += 1
        if self._skip_logged.get(stream) == reason:
            return
        self._skip_logged[stream] = reason
        log.info("stream %s not forecast: %s", stream, _SKIP_REASONS[reason].format(detail))

    def _stale_after(self, interval_s: float) -> float:
        configured = self.settings.forecast.stale_after_s
        if configured == "auto":
            return max(STALE_INTERVALS * interval_s, STALE_MIN_S)
        return configured

    def _known_interval(
        self, stream: StreamId, configured: float | Literal["auto"]
    ) -> float | None:
        """The stream's interval when configured or already detected, else None."""
        if isinstance(configured, float):
            return configured
        return self._detected_intervals.get(stream)

    def _interval(
        self, stream: StreamId, ts: np.ndarray, configured: float | Literal["auto"]
    ) -> float | None:
        interval = self._known_interval(stream, configured)
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


class _InlineRunner:
    """An executor that runs what it is given at once, on the caller's thread."""

    def submit(self, fn: Callable[..., _T], /, *args: Any) -> Future[_T]:
        done: Future[_T] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as err:  # the tick re-raises it from the future, as threaded
            done.set_exception(err)
        return done

    def shutdown(self, wait: bool = True) -> None:
        pass


_SKIP_REASONS = {
    "no_interval": "too few distinct timestamps to detect its interval; set interval_s in a "
    "`streams` rule to forecast it sooner",
    "stale": "no reading arrived for it in a while ({}; forecast.stale_after_s); its retained "
    "forecast expires, and forecasting resumes when readings arrive",
    "too_few_points": "too few observed bins ({}; forecast.min_observed_bins, or interval_s and "
    "context_points in a `streams` rule)",
}


def _bounds(rule: StreamRule | None) -> tuple[float, float]:
    if rule is None:
        return -np.inf, np.inf
    low = -np.inf if rule.min is None else rule.min
    high = np.inf if rule.max is None else rule.max
    return low, high
