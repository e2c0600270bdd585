"""Forecasts that check themselves: the Forecaster's quality hooks, on the tick thread only.

Per tick, in the Forecaster's order:

1. `observe(rows, ...)`, once the due streams are gridded: every pending forecast step whose bin
   the new grids have closed is scored (`skill`), folded into the calibration factors
   (`calibration`) and judged for anomalies (`anomalies`); events go out at once.
2. `calibrate(chunk, quantiles)`, per model run: the sorted model quantiles become the
   published ones (scaled per stream, head and level, sorted again).
3. `issued(rows, quantiles, good, now)`, per run: the payload additions per stream (`skill`,
   `calibration`, optionally `raw_quantiles`); the published quantiles are kept for step 4.
4. `finish(context)`: the issued forecasts become pending steps (spaced, see
   `QualitySettings.origins_per_head`), silent streams are reported stale once, Home Assistant
   discovery is published, the state is saved every `save_interval_s`, and the snapshot the
   metrics threads read is swapped in.

Memory per stream (4 heads of 1, 8, 32 and 64 steps, 9 levels, `origins_per_head` 2): pending
steps of 61 bytes, at most (K + 1) * 105 of them (19 KB), ~6.0 KB measured in steady state
(`benchmarks/quality_overhead.py`, 1000 streams, 80 ticks), plus 0.45 KB of sums and factors
and 38 B of anomaly state and last recorded values. State is saved in `quality.db` (~1.1 KB
per stream on disk); pending steps are not: a restart loses at most one horizon of scoring.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from moecast.agent.forecast.anomalies import AnomalyStates
from moecast.agent.forecast.calibration import Calibrator, keeps_order
from moecast.agent.forecast.calibration import calibrated as apply_scales
from moecast.agent.forecast.encoding import median_weights, round_significant
from moecast.agent.forecast.quality_store import QUALITY_DB, QualityStore
from moecast.agent.forecast.skill import PendingSteps, SkillBook, Steps
from moecast.agent.ingest.readings import StreamId
from moecast.agent.ops.homeassistant import Discovery

if TYPE_CHECKING:
    from moecast.agent.forecast.tick import GridRow
    from moecast.agent.ops.metrics import AgentMetrics
    from moecast.agent.runtime import TickContext
    from moecast.agent.settings import AgentSettings

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("mae", "naive_mae", "skill", "coverage")
SUMMARY_DIGITS = 4


@dataclass(frozen=True, slots=True)
class QualitySnapshot:
    """What the metrics threads read: copies, swapped in whole by the tick thread."""

    horizons: tuple[int, ...]
    streams: list[StreamId]
    slots: np.ndarray
    summary: dict[str, np.ndarray]  # [streams, heads] each
    counters: dict[str, int]
    raised: int


class QualityMonitor:
    """Skill, calibration and anomaly state of every stream; see the module docstring."""

    def __init__(self, settings: AgentSettings, stale_after: Callable[[float], float]) -> None:
        self.settings = settings
        self.config = settings.quality
        self._stale_after = stale_after
        self._store: QualityStore | None = None
        self._loaded: dict[StreamId, dict[str, Any]] = {}
        self._metrics: AgentMetrics | None = None
        self._discovery: Discovery | None = None
        self._slots: dict[StreamId, int] = {}
        self._streams: list[StreamId | None] = []
        self._free: list[int] = []
        self._capacity = 0
        self._horizons: tuple[int, ...] = ()
        self._levels = np.empty(0)
        self._weights = np.empty(0)
        self._median_index: int | None = None
        self._head_starts = np.empty(0, np.intp)
        self._last_end = np.empty(0)
        self._interval = np.empty(0)
        self._naive = np.empty(0, np.float32)
        self._forecast = np.empty(0, bool)
        self._dirty = np.empty(0, bool)
        self._last_recorded = np.empty((0, 0))
        self.anomalies = AnomalyStates()
        self.skill = SkillBook(0, self.config.skill_window)
        self.calibrator = Calibrator((), np.empty(0), self.config.calibration_rate)
        self.pending = PendingSteps(0)
        self.counters: Counter[str] = Counter()
        self._recorded: list[Steps] = []  # this tick's new pending steps, until `finish`
        self._shown: list[tuple[StreamId, float]] = []  # forecast this tick, with intervals
        self._tick_slots = np.empty(0, np.intp)
        self._payload_summary: np.ndarray = np.empty((0, 0, 0))
        self._payload_factors: np.ndarray = np.empty((0, 0, 0))
        self._scales: np.ndarray = np.empty((0, 0, 0))
        self._raw: dict[int, np.ndarray] | None = None
        self._saved_at = -math.inf
        self.snapshot: QualitySnapshot | None = None
        self._live: tuple[list[StreamId], np.ndarray] | None = None

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # 1. scoring

    def observe(
        self,
        rows: Sequence[GridRow],
        horizons: tuple[int, ...],
        levels: np.ndarray,
        context: TickContext,
    ) -> None:
        self._open(context)
        self._use_model(horizons, levels)
        self._recorded = []
        self._shown = []
        if not self.enabled:
            return
        slots = np.fromiter((self._slot(row.stream) for row in rows), np.intp, len(rows))
        self._tick_slots = slots
        if not rows:
            self._prepare_payloads()
            return
        ends = np.fromiter((row.grid_end for row in rows), np.float64, len(rows))
        intervals = np.fromiter((row.interval_s for row in rows), np.float64, len(rows))
        width = max(row.values.size for row in rows)
        grid = np.full((len(rows), width), np.nan, np.float32)
        for i, row in enumerate(rows):
            grid[i, width - row.values.size :] = row.values
        observed = ~np.isnan(grid)
        last = width - 1 - np.argmax(observed[:, ::-1], axis=1)
        self._naive[slots] = grid[np.arange(len(rows)), last]
        # New bins re-arm a stream's stale report.
        advanced = ~(ends <= self._last_end[slots])
        self.anomalies.stale[slots[advanced]] = False
        self._last_end[slots] = ends
        self._interval[slots] = intervals

        if len(self.pending):
            row_of = np.full(self._capacity, -1, np.intp)
            row_of[slots] = np.arange(len(rows))

            def lag(steps: Steps) -> tuple[np.ndarray, np.ndarray]:
                """Per step, its stream's row in this tick (0 when not due: lag 0) and how
                many bins the stream's grid has moved past the step's bin (closed: >= 1)."""
                r = row_of[steps.slot]
                present = r >= 0
                r = np.where(present, r, 0)
                return r, np.where(present, np.rint((ends[r] - steps.bin_end) / intervals[r]), 0)

            closed = self.pending.remove(lambda steps: lag(steps)[1] >= 1)
            r, bins = lag(closed)
            index = (width - 1 - bins).astype(np.intp)
            inside = index >= 0  # a bin older than the grid's first is missing
            value = np.full(len(closed), np.nan)
            value[inside] = grid[r[inside], index[inside]]
            scored = ~np.isnan(value)
            self.counters["missing"] += len(closed) - int(np.count_nonzero(scored))
            self._score(closed.take(scored), value[scored], context)
        self._prepare_payloads()

    def _prepare_payloads(self) -> None:
        """This tick's scales and payload additions, for every stream at once."""
        summary = self.skill.summary()
        stacked = np.stack([summary[name] for name in SUMMARY_KEYS], axis=1)  # [S, 4, heads]
        finite = np.isfinite(stacked)
        rounded = round_significant(np.where(finite, stacked, 0.0), SUMMARY_DIGITS)
        self._payload_summary = np.where(finite, rounded, np.nan)
        self._scales = np.exp(self.calibrator.log_scale)
        self._payload_factors = round_significant(self._scales, SUMMARY_DIGITS)

    def _score(self, steps: Steps, value: np.ndarray, context: TickContext) -> None:
        if not len(steps):
            return
        q = steps.quantiles.astype(np.float64)
        median = q @ self._weights
        inside = (q[:, 0] <= value) & (value <= q[:, -1])
        self.skill.add(
            steps.slot,
            steps.head,
            np.abs(value - median),
            np.abs(value - steps.naive),
            inside.astype(np.float64),
        )
        if self.config.calibrate:
            self.calibrator.update(steps.slot, steps.head, q, value)
        self._dirty[steps.slot] = True
        self.counters["scored"] += len(steps)
        anomalies = self.config.anomalies
        if not anomalies.enabled:
            return
        events = self.anomalies.judge(
            self._levels, steps, value, anomalies.tail_probability, anomalies.clear_after
        )
        for slot, event in events:
            event["horizon"] = self._horizons[int(event.pop("head"))]  # type: ignore[call-overload]
            self._publish_event(context, slot, event)

    # 2. calibration

    def calibrate(
        self, rows: Sequence[GridRow], quantiles: dict[int, np.ndarray]
    ) -> dict[int, np.ndarray]:
        """The published quantiles of one model run (sorted per step), from the model's."""
        self._raw = quantiles if self.config.raw_quantiles else None
        if not (self.enabled and self.config.calibrate) or not rows:
            return quantiles
        slots = np.fromiter((self._slots[row.stream] for row in rows), np.intp, len(rows))
        # All heads in one array [rows, steps of every head, levels]: a handful of numpy
        # calls per model run instead of a handful per head.
        heads = self._horizons
        joined = np.concatenate([quantiles[h] for h in heads], axis=1)
        per_head = self._scales[slots]
        ordered = keeps_order(per_head, self._median_index)
        scales = np.repeat(per_head, heads, axis=1)  # [rows, steps, levels]
        with np.errstate(invalid="ignore"):
            joined = apply_scales(joined, self._median(joined), scales, ordered)
        return dict(zip(heads, np.split(joined, self._head_starts, axis=1), strict=True))

    def _median(self, quantiles: np.ndarray) -> np.ndarray:
        """`[..., 1]` medians: the 0.5 column itself where the model has one."""
        if self._median_index is not None:
            return quantiles[..., self._median_index, None]
        return (quantiles @ self._weights)[..., None]

    # 3. payload additions

    def issued(
        self,
        rows: Sequence[GridRow],
        quantiles: dict[int, np.ndarray],
        good: np.ndarray,
        now: float,
    ) -> list[dict[str, Any]] | None:
        """Per row, the keys the forecast payload gains; the forecasts' steps to score later
        are kept (`_record`)."""
        self._shown += [(row.stream, row.interval_s) for row in rows]
        if not self.enabled or not rows:
            return None
        n = len(rows)
        slots = np.fromiter((self._slots[row.stream] for row in rows), np.intp, n)
        self._record(
            slots,
            np.fromiter((row.grid_end for row in rows), np.float64, n),
            np.fromiter((row.interval_s for row in rows), np.float64, n),
            quantiles,
            now,
        )
        self._dirty[slots[~self._forecast[slots]]] = True  # first forecast: worth a save
        self._forecast[slots] = True
        # Rows of arrays computed once per tick for every stream; orjson writes NaN as null.
        summary, counts = self._payload_summary, self.skill.count
        horizons = list(self._horizons)
        extras: list[dict[str, Any]] = []
        for slot in slots.tolist():
            values = summary[slot]
            extras.append(
                {
                    "skill": {
                        "horizons": horizons,
                        "n": counts[slot],
                        "mae": values[0],
                        "naive_mae": values[1],
                        "skill": values[2],
                        "coverage": values[3],
                    }
                }
            )
        if self.config.calibrate:
            factors = self._payload_factors
            for extra, slot in zip(extras, slots.tolist(), strict=True):
                extra["calibration"] = factors[slot]
        if self._raw is not None:
            level_keys = [str(level) for level in self._levels.tolist()]
            for h in self._horizons:
                raw = np.ascontiguousarray(round_significant(self._raw[h][good]).transpose(0, 2, 1))
                for extra, per_row in zip(extras, raw, strict=True):
                    extra.setdefault("raw_quantiles", {})[str(h)] = dict(
                        zip(level_keys, per_row, strict=True)
                    )
        return extras

    # 4. after the tick

    def finish(self, context: TickContext) -> None:
        self._open(context)
        if self._discovery is not None:
            self._discovery.tick(context, self._shown, self._horizons, self._levels)
        if self.enabled:
            self.pending.add(*self._recorded)
            self._recorded = []
            self._report_stale(context)
        if context.now - self._saved_at >= self.config.save_interval_s:
            self.save(context)
        if self.enabled:
            self._publish_summary()

    def _record(
        self,
        slots: np.ndarray,
        ends: np.ndarray,
        intervals: np.ndarray,
        quantiles: dict[int, np.ndarray],
        now: float,
    ) -> None:
        """Issued forecasts become pending steps (at `finish`), per head only for streams whose
        last recorded origin of that head is h/K bins old, so K origins cover every lead.

        Selected as each block is published, not kept whole until `finish`: with K = 2 a
        tick records on average ~7 of a stream's 105 steps, so the tick holds those, not every
        forecast it published (3.8 MB for 1000 streams)."""
        naive = self._naive[slots]
        per_origin = self.config.origins_per_head
        for head, h in enumerate(self._horizons):
            spacing = math.ceil(h / per_origin)
            last = self._last_recorded[slots, head]
            due = ~(ends - last < (spacing - 0.5) * intervals)  # NaN (never recorded): due
            if not due.any():
                continue
            rows = int(np.count_nonzero(due))
            lead = np.arange(1, h + 1, dtype=np.float64)
            self._recorded.append(
                Steps(
                    np.repeat(slots[due].astype(np.int32), h),
                    np.full(rows * h, head, np.int8),
                    (ends[due, None] + intervals[due, None] * lead).reshape(-1),
                    np.repeat(naive[due], h),
                    np.full(rows * h, round(now, 3)),  # as the payload states it
                    # float32, as published (sorted, calibrated)
                    quantiles[h][due].astype(np.float32).reshape(rows * h, -1),
                )
            )
            self._last_recorded[slots[due], head] = ends[due]

    def _report_stale(self, context: TickContext) -> None:
        if not (self.config.anomalies.enabled and self.config.anomalies.report_stale):
            return
        candidates = self._forecast & ~self.anomalies.stale
        candidates[self._tick_slots] = False
        for slot in np.flatnonzero(candidates).tolist():
            interval = float(self._interval[slot])
            silent = context.now - float(self._last_end[slot])
            if silent <= self._stale_after(interval):
                continue
            self.anomalies.stale[slot] = True
            self.anomalies.raised[slot] = False
            self.anomalies.inside_run[slot] = 0
            self._dirty[slot] = True
            event = {"state": "stale", "ts": float(self._last_end[slot]), "silent_s": silent}
            self._publish_event(context, slot, event)

    def _publish_event(self, context: TickContext, slot: int, event: dict[str, Any]) -> None:
        stream = self._streams[slot]
        assert stream is not None
        self.counters[str(event["state"])] += 1
        anomalies = self.config.anomalies
        payload = {"stream": str(stream), **event}
        log.info("anomaly %s on %s: %s", event["state"], stream, payload)
        context.link.publish(
            stream.topic(anomalies.topic), orjson.dumps(payload), 1, retain=anomalies.retain
        )

    # state, slots and persistence

    def save(self, context: TickContext | None = None) -> None:
        """Write the changed streams' state; forget streams the registry no longer holds
        (evicted as idle): their state, their retained anomaly and their Home Assistant
        entities go."""
        if self._store is None:
            return
        gone: list[StreamId] = []
        if context is not None:
            held = context.registry
            gone = [s for s in self._slots if s not in held]
            for stream in gone:
                self._release(stream)
            # States loaded at start for streams evicted before this run forecast them.
            unclaimed = [s for s in self._loaded if s not in held]
            for stream in unclaimed:
                del self._loaded[stream]
            gone += unclaimed
            announced = [] if self._discovery is None else self._discovery.forget_unheld(held)
            if gone or announced:
                self._forget(context, sorted(set(gone) | set(announced)))
        dirty = np.flatnonzero(self._dirty).tolist()
        states = [
            (stream, self._state(slot))
            for slot in dirty
            if (stream := self._streams[slot]) is not None
        ]
        self._store.save_states(states, gone)
        self._dirty[:] = False
        self._saved_at = context.now if context is not None else time.time()

    def _forget(self, context: TickContext, streams: list[StreamId]) -> None:
        anomalies = self.config.anomalies
        if self.enabled and anomalies.enabled and anomalies.retain:
            for stream in streams:  # a retained "raised" would outlive the stream
                context.link.publish(stream.topic(anomalies.topic), b"", 1, retain=True)
        if self._discovery is not None:
            self._discovery.forget(context, streams)
        log.info("forgot the forecast quality of %d streams no longer held", len(streams))

    def close(self) -> None:
        """On a clean stop, after the last tick: save every changed state and close."""
        if self._store is None:
            return
        if self.enabled:
            self.save()
        self._store.close()
        self._store = None

    def _state(self, slot: int) -> dict[str, Any]:
        return {
            "horizons": list(self._horizons),
            "levels": self._levels.tolist(),
            "skill": self.skill.state(slot),
            "log_scale": np.round(self.calibrator.log_scale[slot], 6).tolist(),
            "raised": bool(self.anomalies.raised[slot]),
            "inside_run": int(self.anomalies.inside_run[slot]),
            "stale": bool(self.anomalies.stale[slot]),
            "forecast": bool(self._forecast[slot]),
            "last_end": float(self._last_end[slot]),
            "interval": float(self._interval[slot]),
        }

    def _restore(self, slot: int, state: dict[str, Any]) -> None:
        self.anomalies.raised[slot] = bool(state.get("raised", False))
        self.anomalies.inside_run[slot] = int(state.get("inside_run", 0))
        self.anomalies.stale[slot] = bool(state.get("stale", False))
        self._forecast[slot] = bool(state.get("forecast", False))
        self._last_end[slot] = float(state.get("last_end", math.nan))
        self._interval[slot] = float(state.get("interval", math.nan))
        same_model = (
            state.get("horizons") == list(self._horizons)
            and state.get("levels") == self._levels.tolist()
        )
        if same_model:
            self.skill.restore(slot, state.get("skill", {}))
            log_scale = np.asarray(state.get("log_scale", []), np.float64)
            if log_scale.shape == self.calibrator.log_scale[slot].shape:
                self.calibrator.log_scale[slot] = log_scale

    def _open(self, context: TickContext) -> None:
        if self._metrics is not context.metrics:
            self._metrics = context.metrics
            if self.enabled:
                context.metrics.add_section("quality", self.metrics_section)
                context.metrics.add_labelled_gauges("quality", self.prometheus_samples)
        if self._store is not None:
            return
        self.settings.storage_dir.mkdir(parents=True, exist_ok=True)
        self._store = QualityStore(self.settings.storage_dir / QUALITY_DB)
        self._loaded = self._store.load_states() if self.enabled else {}
        self._saved_at = context.now
        self._discovery = Discovery(self.settings, self._store)

    def _use_model(self, horizons: tuple[int, ...], levels: np.ndarray) -> None:
        if horizons == self._horizons and np.array_equal(levels, self._levels):
            return
        # A model of another shape starts the per-head state over; anomaly states and the
        # streams' slots carry on.
        self._horizons = tuple(horizons)
        self._levels = np.asarray(levels, np.float64)
        self._weights = median_weights(self._levels)
        self._head_starts = np.cumsum(horizons)[:-1]
        exact = np.flatnonzero(self._levels == 0.5)
        self._median_index = int(exact[0]) if exact.size else None
        heads = len(horizons)
        self.skill = SkillBook(heads, self.config.skill_window, self._capacity)
        self.calibrator = Calibrator(
            self._horizons, self._levels, self.config.calibration_rate, self._capacity
        )
        self.pending = PendingSteps(self._levels.size)
        self._last_recorded = np.full((self._capacity, heads), np.nan)

    def _slot(self, stream: StreamId) -> int:
        slot = self._slots.get(stream)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
            self._streams[slot] = stream
        else:
            slot = len(self._streams)
            self._streams.append(stream)
            if slot >= self._capacity:
                self._grow(max(16, 2 * self._capacity))
        self._slots[stream] = slot
        self._live = None
        state = self._loaded.pop(stream, None)
        if state is not None:
            self._restore(slot, state)
        return slot

    def _release(self, stream: StreamId) -> None:
        slot = self._slots.pop(stream)
        self._streams[slot] = None
        self._live = None
        self._free.append(slot)
        self.skill.reset(slot)
        self.calibrator.reset(slot)
        self.anomalies.reset(slot)
        self._forecast[slot] = False
        self._dirty[slot] = False
        self._last_end[slot] = math.nan
        self._interval[slot] = math.nan
        self._last_recorded[slot] = math.nan
        self.pending.remove(lambda steps: steps.slot == slot)

    def _grow(self, capacity: int) -> None:
        def grown(old: np.ndarray, fill: float | bool) -> np.ndarray:
            new = np.full((capacity, *old.shape[1:]), fill, old.dtype)
            new[: len(old)] = old
            return new

        self._last_end = grown(self._last_end, math.nan)
        self._interval = grown(self._interval, math.nan)
        self._naive = grown(self._naive, math.nan)
        self._forecast = grown(self._forecast, False)
        self._dirty = grown(self._dirty, False)
        self._last_recorded = grown(self._last_recorded, math.nan)
        self.anomalies.grow(capacity)
        self.skill.grow(capacity)
        self.calibrator.grow(capacity)
        self._capacity = capacity

    # what the metrics threads read

    def _publish_summary(self) -> None:
        summary = self.skill.summary()
        if self._live is None:  # rebuilt only when streams come or go
            live = [(slot, s) for slot, s in enumerate(self._streams) if s is not None]
            index = np.fromiter((slot for slot, _ in live), np.intp, len(live))
            self._live = ([s for _, s in live], index)
        streams, index = self._live
        self.snapshot = QualitySnapshot(
            self._horizons,
            streams,
            index,
            {name: np.array(values[index]) for name, values in summary.items()},
            dict(self.counters),
            int(np.count_nonzero(self.anomalies.raised)),
        )

    def metrics_section(self) -> dict[str, Any] | None:
        snap = self.snapshot
        if snap is None:
            return None
        heads = {}
        for head, h in enumerate(snap.horizons):
            n = snap.summary["n"][:, head]
            scored = n > 0
            heads[str(h)] = {
                "streams": int(np.count_nonzero(scored)),
                **{
                    f"median_{name}": _json_number(np.median(snap.summary[name][scored, head]))
                    if scored.any()
                    else None
                    for name in ("skill", "coverage")
                },
            }
        section: dict[str, Any] = {
            "streams": len(snap.streams),
            "scored_steps": snap.counters.get("scored", 0),
            "missing_steps": snap.counters.get("missing", 0),
            "anomalies": {
                "active": snap.raised,
                **{s: snap.counters.get(s, 0) for s in ("raised", "cleared", "stale")},
            },
            "heads": heads,
        }
        if len(snap.streams) <= self.config.metrics_streams:
            section["per_stream"] = {
                str(stream): {
                    str(h): {
                        "n": int(snap.summary["n"][i, head]),
                        **{
                            name: _json_number(snap.summary[name][i, head]) for name in SUMMARY_KEYS
                        },
                    }
                    for head, h in enumerate(snap.horizons)
                }
                for i, stream in enumerate(snap.streams)
            }
        return section

    def prometheus_samples(self) -> list[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
        """(name, help, label names, [(label values, value)]) per gauge family."""
        snap = self.snapshot
        if snap is None:
            return []
        families = []
        for name, doc in (
            ("n", "forecast steps scored"),
            ("mae", "rolling mean absolute error of the published median"),
            ("naive_mae", "rolling mean absolute error of the last value known at issue"),
            ("skill", "1 - mae / naive_mae"),
            ("coverage", "rolling share of values inside the outer published quantiles"),
        ):
            values = snap.summary[name]
            samples = [
                ([str(stream), str(h)], float(values[i, head]))
                for i, stream in enumerate(snap.streams)
                for head, h in enumerate(snap.horizons)
                if snap.summary["n"][i, head] > 0
            ]
            metric = "forecast_scored" if name == "n" else f"forecast_{name}"
            families.append((metric, doc, ["stream", "horizon"], samples))
        families.append(
            (
                "anomaly_events",
                "anomaly events published, by state",
                ["state"],
                [([s], float(snap.counters.get(s, 0))) for s in ("raised", "cleared", "stale")],
            )
        )
        return families


def _json_number(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None
