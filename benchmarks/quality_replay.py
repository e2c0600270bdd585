"""Forecasts that check themselves (#16), replayed on real series through the agent's own tick:
live skill, raw and calibrated interval coverage and quantile loss per kind of sensor, and the
anomaly events against NAB's labelled anomaly windows.

    python benchmarks/quality_replay.py            # ~10 min on one core
    python benchmarks/quality_replay.py --quick    # fewer steps and series, ~2 min

How. The agent's `Forecaster` (the tick: grid, the shipped int8 bundle through ONNX Runtime,
calibration, skill, anomalies, payloads) runs on a registry filled reading by reading, one tick
per grid step, every stream on a common 60 s grid (the model sees values, not clock times).
What is scored is what a subscriber receives: the forecast payloads, with the calibrated
quantiles and, on request (`quality.raw_quantiles`), the model's own.

1. Sensor classes: the sensor benchmark's held-out series (`SENSOR_BENCHMARK_SERIES`,
   classified as `benchmarks/zero_shot_sensor.py` does, from their first 60 %). Each is loaded
   up to that point as history, then `--steps` readings are replayed. Every forecast step is
   scored once realised: coverage of the 80 % interval (the 0.1 and 0.9 quantiles) and the
   weighted quantile loss (WQL: twice the pinball loss summed over steps and levels, over the
   number of levels times the sum of |y|), raw and calibrated, over all origins after the first
   `--warmup` (the calibration is online and starts from the model's own quantiles); coverage
   pooled over a class's steps, WQL per series and then the geometric mean over the class.
   The live skill is the agent's own rolling figure at the end (1 - MAE / naive MAE, per
   head), median per class.
2. NAB: the realKnownCause and realTraffic series (also held out from pretraining) replayed
   from their start, with anomaly detection at several levels of `quality.anomalies.
   tail_probability` (the forecasters share one model run per tick). Scored as NAB does after
   its probationary first 15 %: recall = labelled windows with at least one `raised` event
   inside / windows; precision = `raised` events inside a window / all `raised` events. Series
   are cut at `--nab-max-bins` (6000) to keep the run short; a series whose labelled windows all
   lie beyond the cut is left out (cpu_utilization_asg_misconfiguration).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from moecast.agent.cli import DEFAULT_BUNDLE
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamLimits, StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext
from moecast.agent.settings import load_settings
from moecast.model.data.corpus import SENSOR_BENCHMARK_SERIES, default_data_root, load_selection
from timing import cpu_description
from zero_shot_sensor import CLASSES, features, season_of

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle

START = 1_764_000_000.0  # a multiple of 60: readings sit on the grid labels
INTERVAL = 60.0
CONTEXT = 512
HISTORY = 2 * CONTEXT  # bins of history each sensor-class series starts with
HISTORY_SHARE = 0.6
LEVELS_TRIED = (1e-3, 1e-4, 1e-5)  # the first is the agent's default
NAB_SOURCES = ("realKnownCause", "realTraffic")
PROBATION = 0.15


class CachedBundle:
    """One model run per distinct batch: forecasters that differ only in their anomaly level
    see the same grids, so they share the runs."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self._cache: dict[bytes, dict[str, np.ndarray]] = {}
        self.runs = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        key = hashlib.blake2b(batch.tobytes(), digest_size=16).digest() + bytes(batch.shape[0])
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 64:
                self._cache.clear()
            found = self._cache[key] = self.bundle.run(batch)
            self.runs += 1
        return found


class Recorder:
    """Stands in for the MQTT link: scores each forecast payload as it is published (when
    given the streams) and keeps the anomaly events."""

    def __init__(self, streams: list[Replayed] | None = None, warmup: int = 0) -> None:
        self.by_name = {str(s.stream): s for s in streams or []}
        self.warmup = warmup
        self.forecasts = 0
        # stream -> variant ("raw", "calibrated") -> head -> [steps, inside, pinball, |y|]
        self.scores: dict[str, dict[str, dict[int, list[float]]]] = {}
        self.events: list[dict[str, Any]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int, **kwargs: Any) -> None:
        if not payload:
            return
        if topic.startswith("forecasts/"):
            self.forecasts += 1
            if self.by_name:
                self._score(orjson.loads(payload))
        elif topic.startswith("anomalies/"):
            self.events.append(orjson.loads(payload))

    def _score(self, payload: dict[str, Any]) -> None:
        s = self.by_name[payload["stream"]]
        origin = round((payload["grid_end"] - START) / INTERVAL)
        if origin < s.first_step + self.warmup:
            return
        levels = np.asarray(payload["quantile_levels"])
        keys = [str(level) for level in payload["quantile_levels"]]
        for h, head in payload["horizons"].items():
            steps = np.arange(origin + 1, origin + 1 + len(head["median"]))
            inside = steps < s.values.size
            y = np.full(steps.size, np.nan)
            y[inside] = s.values[steps[inside]]
            seen = np.isfinite(y)
            if not seen.any():
                continue
            for variant, quantiles in (
                ("calibrated", head["quantiles"]),
                ("raw", payload.get("raw_quantiles", {}).get(h)),
            ):
                if quantiles is None:
                    continue
                q = np.array([quantiles[key] for key in keys], np.float64).T[seen]  # [steps, L]
                target = y[seen]
                diff = target[:, None] - q
                pinball = np.maximum(levels * diff, (levels - 1) * diff).sum()
                covered = (q[:, 0] <= target) & (target <= q[:, -1])
                sums = self.scores.setdefault(str(s.stream), {}).setdefault(variant, {})
                acc = sums.setdefault(int(h), [0.0, 0.0, 0.0, 0.0])
                acc[0] += target.size
                acc[1] += covered.sum()
                acc[2] += pinball
                acc[3] += np.abs(target).sum()


@dataclass
class Replayed:
    """One stream: its values on the 60 s grid, from index 0 = START."""

    stream: StreamId
    values: np.ndarray
    kind: str
    first_step: int  # the first index replayed reading by reading (before it: history)
    scored_from: int = 0  # NAB: the end of the probationary period
    windows: list[tuple[int, int]] = field(default_factory=list)  # NAB labels, in indices


def settings_for(storage: Path, level: float, raw: bool) -> Any:
    return load_settings(
        None,
        storage_dir=storage,
        streams=[{"pattern": "*", "interval_s": INTERVAL}],
        forecast={"stale_after_s": 10 * 86_400.0},  # long gaps in NAB traffic are no outage
        quality={
            "raw_quantiles": raw,
            "save_interval_s": 1e9,
            "anomalies": {"tail_probability": level, "report_stale": False},
        },
    )


def replay(
    streams: list[Replayed],
    levels: tuple[float, ...],
    bundle: Any,
    label: str,
    warmup: int | None = None,
) -> tuple[list[Recorder], list[Forecaster]]:
    """Every stream through one forecaster per anomaly level (the first with raw quantiles,
    its forecasts scored after `warmup` origins unless None)."""
    cached = CachedBundle(bundle)
    registry = StreamRegistry(StreamLimits(max_points=4 * CONTEXT, lateness_s=1e9))
    recorders, forecasters = [], []
    tmp = tempfile.TemporaryDirectory()
    for i, level in enumerate(levels):
        storage = Path(tmp.name) / f"level-{i}"
        forecasters.append(Forecaster(cached, settings_for(storage, level, raw=i == 0)))  # type: ignore[arg-type]
        scored = warmup is not None and i == 0
        recorders.append(Recorder(streams if scored else None, warmup or 0))
    metrics = AgentMetrics()
    for s in streams:
        history = np.arange(s.first_step)
        seen = history[np.isfinite(s.values[history])]
        if seen.size:
            readings = [Reading(START + k * INTERVAL, float(s.values[k])) for k in seen]
            registry.insert(s.stream, readings, arrival_ts=START + s.first_step * INTERVAL)
    last = max(s.values.size for s in streams)
    first = min(s.first_step for s in streams)
    started = time.perf_counter()
    for k in range(first, last):
        ts = START + k * INTERVAL
        for s in streams:
            if k >= s.first_step and k < s.values.size and np.isfinite(s.values[k]):
                registry.insert(s.stream, [Reading(ts, float(s.values[k]))], arrival_ts=ts)
        for fc, recorder in zip(forecasters, recorders, strict=True):
            fc(TickContext(ts + 1, fc.settings, registry, recorder, metrics))  # type: ignore[arg-type]
        if (k - first) % 500 == 0:
            done = (k - first) / max(1, last - first)
            print(
                f"  {label}: step {k - first:,} of {last - first:,} ({100 * done:.0f} %), "
                f"{time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    for fc in forecasters:
        fc.close()
    tmp.cleanup()
    return recorders, forecasters


def load_classes(root: Path, steps: int, per_class: int | None) -> list[Replayed]:
    streams = []
    counts: dict[str, int] = defaultdict(int)
    for s in load_selection(root, SENSOR_BENCHMARK_SERIES):
        values = s.values.astype(np.float64)
        kind = features(values, season_of(s.interval_s, CONTEXT), CONTEXT).kind
        if per_class is not None and counts[kind] >= per_class:
            continue
        first = max(CONTEXT, int(values.size * HISTORY_SHARE))
        end = min(values.size, first + steps)
        if end - first < steps // 2 or np.isfinite(values[first:end]).mean() < 0.5:
            continue
        counts[kind] += 1
        # Every stream on one timeline: HISTORY bins of history (NaN-padded), then the steps.
        kept = values[max(0, first - HISTORY) : end]
        kept = np.concatenate([np.full(HISTORY - min(first, HISTORY), np.nan), kept])
        stream = StreamId(_safe(s.source), _safe(s.name.split("/", 1)[1]))
        streams.append(Replayed(stream, kept, kind, HISTORY))
    return streams


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def load_nab(root: Path, max_bins: int | None) -> list[Replayed]:
    windows = json.loads((root / "nab/labels/combined_windows.json").read_text())
    streams = []
    for source in NAB_SOURCES:
        for path in sorted((root / "nab/data" / source).glob("*.csv")):
            with path.open() as f:
                rows = list(csv.DictReader(f))
            ts = np.array([_unix(r["timestamp"]) for r in rows])
            values = np.array([float(r["value"]) for r in rows])
            interval = float(np.median(np.diff(ts)))
            index = np.rint((ts - ts[0]) / interval).astype(np.int64)
            grid = np.full(index[-1] + 1, np.nan)
            grid[index] = values  # a later duplicate in a bin wins, as a sensor's last word
            labelled = [
                (
                    int(np.floor((_unix(a) - ts[0]) / interval)),
                    int(np.ceil((_unix(b) - ts[0]) / interval)),
                )
                for a, b in windows.get(f"{source}/{path.name}", [])
            ]
            if max_bins is not None and grid.size > max_bins:
                grid = grid[:max_bins]
                kept = [(a, b) for a, b in labelled if a < max_bins]
                if labelled and not kept:
                    # Its labelled anomalies lie beyond the cut: every event would count as
                    # false, and the series' anomaly never gets a chance to be found.
                    print(f"  {source}/{path.name}: labelled windows beyond bin {max_bins}, "
                          "left out", file=sys.stderr)  # fmt: skip
                    continue
                labelled = kept
            # Replayed from the start; scored after NAB's probationary period.
            probation = int(grid.size * PROBATION)
            stream = StreamId(source, _safe(path.stem))
            streams.append(Replayed(stream, grid, "nab", 0, probation, labelled))
    return streams


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()


def nab_scores(streams: list[Replayed], recorder: Recorder) -> dict[str, Any]:
    by_name = {str(s.stream): s for s in streams}
    raised: dict[str, list[int]] = defaultdict(list)
    for event in recorder.events:
        if event["state"] == "raised":
            s = by_name[event["stream"]]
            raised[event["stream"]].append(round((event["ts"] - START) / INTERVAL))
    hits = events = windows = found = 0
    per_series = {}
    for name, s in by_name.items():
        marks = [k for k in raised.get(name, []) if k >= s.scored_from]
        spans = [(a, b) for a, b in s.windows if b >= s.scored_from]
        inside = [k for k in marks if any(a <= k <= b for a, b in spans)]
        caught = [w for w in spans if any(w[0] <= k <= w[1] for k in marks)]
        hits, events = hits + len(inside), events + len(marks)
        windows, found = windows + len(spans), found + len(caught)
        per_series[name] = {"raised": len(marks), "in_windows": len(inside), "windows": len(spans),
                            "windows_found": len(caught)}  # fmt: skip
    return {
        "raised": events,
        "raised_in_windows": hits,
        "windows": windows,
        "windows_found": found,
        "precision": hits / events if events else None,
        "recall": found / windows if windows else None,
        "per_series": per_series,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="replayed steps per series")
    parser.add_argument("--warmup", type=int, default=64, help="origins left out of coverage")
    parser.add_argument("--per-class", type=int, default=None, help="at most N series a class")
    parser.add_argument("--nab-max-bins", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-nab", action="store_true")
    parser.add_argument("--skip-classes", action="store_true")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "quality_replay.json",
    )
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 600)
    per_class = args.per_class or (4 if args.quick else None)
    nab_max = args.nab_max_bins or (3000 if args.quick else 6000)
    root = args.data_root or default_data_root()
    if not (root / "nab").is_dir():
        print(f"no benchmark data under {root} (set MOECAST_DATA)", file=sys.stderr)
        return 2
    cpu = f"{cpu_description()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    print(f"$ python {' '.join(sys.argv)}\ncpu: {cpu}\n", flush=True)
    bundle = load_bundle(DEFAULT_BUNDLE, [DEV_PUBLIC_KEY], 1)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu}

    if not args.skip_classes:
        streams = load_classes(root, steps, per_class)
        started = time.perf_counter()
        [recorder], [fc] = replay(streams, LEVELS_TRIED[:1], bundle, "sensor classes", args.warmup)
        took = time.perf_counter() - started
        scores = recorder.scores
        summary = fc.quality.skill.summary()
        horizons = list(fc.quality._horizons)
        n_levels = len(bundle.manifest.quantiles)
        slots = fc.quality._slots
        print(
            f"sensor classes: {len(streams)} series, {steps} steps each after their first 60 %, "
            f"{recorder.forecasts:,} forecasts, {took:.0f} s; coverage and WQL pooled over "
            f"origins after the first {args.warmup}\n"
        )
        result["classes"] = table = {}
        header = f"{'class':<9} {'n':>3} {'head':>4} {'skill':>6} {'cov raw':>8} {'cov cal':>8} "
        print(header + f"{'WQL raw':>8} {'WQL cal':>8}")
        for kind in (*CLASSES, "all"):
            members = [s for s in streams if kind in ("all", s.kind)]
            if not members:
                continue
            for head, h in enumerate(horizons):
                skills = [
                    summary["skill"][slots[s.stream], head]
                    for s in members
                    if s.stream in slots and np.isfinite(summary["skill"][slots[s.stream], head])
                ]
                row: dict[str, Any] = {"series": len(members), "live_skill_median": None}
                if skills:
                    row["live_skill_median"] = float(np.median(skills))
                for variant in ("raw", "calibrated"):
                    sums = [
                        np.array(scores.get(str(s.stream), {}).get(variant, {}).get(h, [0] * 4))
                        for s in members
                    ]
                    pooled = np.sum(sums, axis=0)
                    row[f"coverage_{variant}"] = pooled[1] / pooled[0] if pooled[0] else None
                    # Per series (WQL is scale-free), then the geometric mean over series.
                    wql = [2 * a[2] / n_levels / a[3] for a in sums if a[3] > 0]
                    row[f"wql_{variant}"] = float(np.exp(np.mean(np.log(wql)))) if wql else None
                table[f"{kind}/{h}"] = row
                cells = [
                    _f(row["live_skill_median"], "+.2f").rjust(6),
                    *(_f(row[f"coverage_{v}"], ".3f").rjust(8) for v in ("raw", "calibrated")),
                    *(_f(row[f"wql_{v}"], ".4f").rjust(8) for v in ("raw", "calibrated")),
                ]
                print(f"{kind:<9} {len(members):>3} {h:>4} " + " ".join(cells))
        print()

    if not args.skip_nab:
        streams = load_nab(root, nab_max)
        started = time.perf_counter()
        recorders, _ = replay(streams, LEVELS_TRIED, bundle, "NAB")
        took = time.perf_counter() - started
        bins = sum(s.values.size - s.scored_from for s in streams)
        print(
            f"NAB {'/'.join(NAB_SOURCES)}: {len(streams)} series, {bins:,} bins scored after "
            f"the first {PROBATION:.0%}, {took:.0f} s"
        )
        print(f"{'tail p':>8} {'raised':>7} {'in win':>7} {'windows':>8} {'found':>6} "
              f"{'precision':>9} {'recall':>7}")  # fmt: skip
        result["nab"] = {}
        for level, recorder in zip(LEVELS_TRIED, recorders, strict=True):
            scored = nab_scores(streams, recorder)
            result["nab"][str(level)] = scored
            default = "  (default)" if level == LEVELS_TRIED[0] else ""
            print(
                f"{level:>8g} {scored['raised']:>7} {scored['raised_in_windows']:>7} "
                f"{scored['windows']:>8} {scored['windows_found']:>6} "
                f"{_f(scored['precision'], '.3f'):>9} {_f(scored['recall'], '.3f'):>7}{default}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
