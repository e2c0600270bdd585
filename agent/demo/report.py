"""The demo's report: `demo-report.json` (accuracy per stream against what really came next and
against a naive forecast, the agent's own live skill and coverage, alerts, anomaly events and
how soon they followed the injected faults, throughput) and `demo-report.png` (history, a
forecast fan, realised values, alert and anomaly markers for a few streams), plus a short
summary on the terminal.

The PNG needs matplotlib, which an edge install does not have: without it the JSON is still
written and the summary says how to get the plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from moecast.agent.demo.config import INTERVAL_S
from moecast.agent.demo.dashboard import SKILL_HEAD
from moecast.agent.demo.evaluate import HeadScore, Published, bin_series, summarise
from moecast.agent.demo.observer import AlertRecord, AnomalyRecord, ForecastRecord
from moecast.agent.demo.site import HOUR, LIVE_STARTS_AT_HOUR, SimStream

if TYPE_CHECKING:
    from moecast.agent.demo.publisher import SiteClock
    from moecast.agent.demo.run import DemoOptions

JSON_NAME = "demo-report.json"
PNG_NAME = "demo-report.png"
PNG_EXTRA = "pip install 'moecast[demo]'"
PLOT_STREAMS = 4
PLOT_HISTORY_H = 36.0
FAN_HEAD = 64


@dataclass(slots=True)
class DemoReport:
    """Everything a run produced; `to_json` and `write` turn it into the report."""

    options: DemoOptions
    clock: SiteClock
    streams: list[SimStream]
    published: dict[str, Published]
    forecasts: dict[str, list[ForecastRecord]]
    alerts: list[AlertRecord]
    anomalies: list[AnomalyRecord]
    scores: dict[str, dict[int, HeadScore]]
    metrics: dict[str, Any]
    finished_t: float  # site seconds since the live start when the site stopped publishing
    broker: str
    readings_published: int
    history_readings: int
    model: dict[str, Any] = field(default_factory=dict)

    def site_t(self, ts: float) -> float:
        """Site seconds since the live start of unix site time `ts`."""
        return ts - self.clock.epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "demo": {
                "seed": self.options.seed,
                "sensors": len(self.streams),
                "duration_s": self.options.duration_s,
                "speed": self.options.speed,
                "interval_s": INTERVAL_S,
                "broker": self.broker,
                "site_time": {
                    "live_start": _iso(self.clock.epoch),
                    "live_end": _iso(self.clock.epoch + self.finished_t),
                    "live_starts_at_local_hour": LIVE_STARTS_AT_HOUR,
                },
            },
            "model": self.model,
            "accuracy": {
                **summarise(self.scores),
                "method": (
                    "MAE of the median forecast against the mean of the readings the site "
                    "published in each later grid bin, pooled over every forecast and step of "
                    "each horizon head; naive = the last non-empty bin the agent had when the "
                    "forecast was issued; relative_mae = MAE / naive MAE (below 1 beats naive); "
                    "across streams, the geometric mean of relative_mae"
                ),
            },
            "streams": {stream.name: self._stream_json(stream) for stream in self.streams},
            "alerts": [self._alert_json(alert) for alert in self.alerts],
            "alert_summary": self.alert_summary(),
            "anomalies": [self._anomaly_json(event) for event in self.anomalies],
            "anomaly_detection": self.anomaly_detection(),
            "throughput": self.throughput(),
        }

    def _stream_json(self, stream: SimStream) -> dict[str, Any]:
        scores = self.scores.get(stream.name, {})
        published = self.published[stream.name]
        return {
            "kind": stream.kind.name,
            "unit": stream.kind.unit,
            "readings_published": int(np.count_nonzero(~np.isnan(published.sent_at))),
            "late_readings": stream.late,
            "anomaly": stream.anomaly.description if stream.anomaly else None,
            "forecasts": len(self.forecasts.get(stream.name, ())),
            "accuracy": {str(h): scores[h].summary() for h in sorted(scores)},
            "live_skill": self.live_skill(stream),
        }

    def live_skill(self, stream: SimStream) -> dict[str, dict[str, float | None]]:
        """The agent's own rolling skill and 80 % coverage per head, as its last forecast of
        the stream stated them."""
        forecasts = self.forecasts.get(stream.name)
        if not forecasts:
            return {}
        return {str(h): values for h, values in sorted(forecasts[-1].skill.items())}

    def _anomaly_json(self, event: AnomalyRecord) -> dict[str, Any]:
        return {
            "stream": event.stream,
            "state": event.state,
            "site_hours": round(self.site_t(event.ts) / HOUR, 3),
            "tail_probability": event.tail_probability,
            "horizon": event.horizon,
        }

    def anomaly_detection(self) -> dict[str, Any]:
        """Per injected fault, the first `raised` anomaly on its stream from its start on and
        the delay; every other `raised` event is counted as false."""
        faults = {s.name: s.anomaly for s in self.streams if s.anomaly is not None}

        def in_fault(event: AnomalyRecord) -> bool:
            # From the fault's start (the first bin ending after it holds its first readings)
            # to one bin after its end (the return to normal is a change too).
            fault = faults.get(event.stream)
            t = self.site_t(event.ts)
            return fault is not None and fault.start_s <= t <= fault.end_s + INTERVAL_S

        raised = [e for e in self.anomalies if e.state == "raised"]
        hits = [e for e in raised if in_fault(e)]
        entries: dict[str, dict[str, Any]] = {}
        for name, fault in faults.items():
            first = min((e for e in hits if e.stream == name), key=lambda e: e.ts, default=None)
            at = None if first is None else self.site_t(first.ts)
            entries[name] = {
                "fault": fault.description,
                "start_site_hours": round(fault.start_s / HOUR, 3),
                "end_site_hours": round(fault.end_s / HOUR, 3),
                "first_raised_site_hours": None if at is None else round(at / HOUR, 3),
                "delay_bins": None
                if at is None
                else math.ceil((at - fault.start_s) / INTERVAL_S - 1e-9),
            }
        others = [e for e in raised if not in_fault(e)]
        return {
            "faults": entries,
            "detected": sum(entry["delay_bins"] is not None for entry in entries.values()),
            "other_raised": len(others),
            "other_raised_streams": sorted({e.stream for e in others}),
            "method": (
                "a fault counts as detected by the first raised anomaly event on its stream "
                "for a bin ending between the fault's start and one bin after its end; "
                "delay_bins counts 15-minute bins from the fault's start to that bin's end "
                "(1: the first bin that holds faulty readings); every other raised event is "
                "counted in other_raised"
            ),
        }

    def _alert_json(self, alert: AlertRecord) -> dict[str, Any]:
        return {
            "stream": alert.stream,
            "rule": alert.rule,
            "state": alert.state,
            "probability": alert.probability,
            "threshold": alert.threshold,
            "direction": alert.direction,
            "site_hours": round(self.site_t(alert.issued_at) / HOUR, 3),
            "first_crossing_ts": alert.first_crossing_ts,
        }

    def alert_summary(self) -> dict[str, Any]:
        raised = [a for a in self.alerts if a.state == "raised"]
        cleared = [a for a in self.alerts if a.state == "cleared"]
        cleared_keys = {(a.stream, a.rule) for a in cleared}
        return {
            "raised": len(raised),
            "cleared": len(cleared),
            "raised_then_cleared": sorted(
                {f"{a.stream}:{a.rule}" for a in raised if (a.stream, a.rule) in cleared_keys}
            ),
        }

    def throughput(self) -> dict[str, Any]:
        tick = self.metrics.get("forecast_tick_s", {})
        inference = self.metrics.get("forecast_inference_s", {})
        ticks = int(tick.get("count", 0))
        live = self.readings_published - self.history_readings
        return {
            "history_readings": self.history_readings,
            "live_readings": live,
            "live_readings_per_s": round(live / self.options.duration_s, 1),
            "readings_stored": self.metrics.get("readings_accepted"),
            "messages_received": self.metrics.get("messages"),
            "rejected": self.metrics.get("rejected"),
            "dropped": self.metrics.get("dropped"),
            "forecast_ticks": ticks,
            "streams_forecast": self.metrics.get("streams_forecast"),
            "forecast_skipped": self.metrics.get("forecast_skipped"),
            "forecasts_received": sum(len(f) for f in self.forecasts.values()),
            "tick_ms_mean": round(1000 * tick["sum"] / ticks, 2) if ticks else None,
            "inference_ms_mean": round(1000 * inference["sum"] / ticks, 2) if ticks else None,
        }

    def write(self, out_dir: Path) -> tuple[Path, Path | None, str | None]:
        """Writes the JSON and, with matplotlib, the PNG: (json, png or None, why not)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / JSON_NAME
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        try:
            import matplotlib
        except ImportError:
            return json_path, None, f"{PNG_NAME} needs matplotlib: {PNG_EXTRA}"
        matplotlib.use("Agg")
        png_path = out_dir / PNG_NAME
        _plot(self, png_path)
        return json_path, png_path, None

    def summary_lines(self) -> list[str]:
        accuracy = summarise(self.scores)
        forecast_streams = sum(bool(self.forecasts.get(s.name)) for s in self.streams)
        alerts = self.alert_summary()
        detection = self.anomaly_detection()
        found = [
            f"{entry['fault']} on {name} "
            + (
                f"raised {entry['delay_bins']} bin(s) after it began"
                if entry["delay_bins"] is not None
                else "NOT raised"
            )
            for name, entry in detection["faults"].items()
        ]
        lines = [
            f"forecasts: {forecast_streams}/{len(self.streams)} streams, "
            f"{sum(len(f) for f in self.forecasts.values()):,} forecasts; "
            f"alerts: {alerts['raised']} raised, {alerts['cleared']} cleared",
            "anomalies: " + "; ".join(found) + f"; {detection['other_raised']} other raised",
            f"forecast error, median vs realised, 1 to {accuracy['headline_horizon']} steps "
            "(15 min each) ahead:",
        ]
        head = accuracy["headline_horizon"]
        for stream in self.streams:
            score = self.scores.get(stream.name, {}).get(head) if head else None
            summary = score.summary() if score else None
            if not summary or summary["mae"] is None:
                lines.append(f"  {stream.name:28s} not scored")
                continue
            live = self.live_skill(stream).get(str(SKILL_HEAD), {})
            agent_says = (
                f"  agent: skill {live['skill']:+.2f}, 80 % coverage {live['coverage']:.2f}"
                if live.get("skill") is not None and live.get("coverage") is not None
                else ""
            )
            lines.append(
                f"  {stream.name:28s} MAE {summary['mae']:>8g} {stream.kind.unit:5s} "
                f"naive {summary['naive_mae']:>8g}  ratio {summary['relative_mae']:.2f}"
                + agent_says
            )
        if accuracy["relative_mae"] is not None:
            verdict = "beats" if accuracy["beats_naive"] else "does not beat"
            lines.append(
                f"  geometric mean of the ratios {accuracy['relative_mae']:.3f}: "
                f"the model {verdict} the naive last-value forecast"
            )
        return lines


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _plot_streams(report: DemoReport) -> list[SimStream]:
    """The streams with an anomaly first, then the others, those with forecasts only."""
    ordered = sorted(report.streams, key=lambda s: s.anomaly is None)
    return [s for s in ordered if report.forecasts.get(s.name)][:PLOT_STREAMS]


def _fan_forecast(report: DemoReport, stream: SimStream) -> ForecastRecord:
    """The forecast issued when the stream's first alert was raised, else a third of the way
    into the live part: early enough for most of its steps to be realised."""
    forecasts = report.forecasts[stream.name]
    raised = [a for a in report.alerts if a.stream == stream.name and a.state == "raised"]
    target = raised[0].issued_at if raised else report.clock.epoch + report.finished_t / 3
    return min(forecasts, key=lambda f: abs(f.issued_at - target))


def _plot(report: DemoReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    chosen = _plot_streams(report)
    rows = math.ceil(len(chosen) / 2) + 1
    figure = plt.figure(figsize=(13, 3.6 * rows), layout="constrained")
    grid = figure.add_gridspec(rows, 2)
    epoch = report.clock.epoch
    for i, stream in enumerate(chosen):
        axes = figure.add_subplot(grid[i // 2, i % 2])
        published = report.published[stream.name]
        sent = ~np.isnan(published.sent_at)
        labels, means = bin_series(published.ts[sent], published.values[sent], INTERVAL_S)
        hours = (labels - epoch) / HOUR
        shown = hours >= -PLOT_HISTORY_H
        axes.plot(hours[shown], means[shown], color="0.55", lw=1, label="realised (15 min means)")
        forecast = _fan_forecast(report, stream)
        quantiles = forecast.heads[FAN_HEAD]
        steps = (forecast.grid_end - epoch + INTERVAL_S * np.arange(1, len(quantiles) + 1)) / HOUR
        axes.fill_between(
            steps, forecast.band(FAN_HEAD, 0.1), forecast.band(FAN_HEAD, 0.9),
            color="tab:blue", alpha=0.18, lw=0, label="forecast 10–90 %",
        )  # fmt: skip
        axes.fill_between(
            steps, forecast.band(FAN_HEAD, 0.3), forecast.band(FAN_HEAD, 0.7),
            color="tab:blue", alpha=0.3, lw=0, label="forecast 30–70 %",
        )  # fmt: skip
        axes.plot(steps, forecast.median(FAN_HEAD), color="tab:blue", lw=1.5, label="median")
        after = (hours > steps[0] - INTERVAL_S / HOUR) & (hours <= steps[-1])
        axes.plot(hours[after], means[after], "k.", ms=4, label="what came next")
        axes.axvline((forecast.grid_end - epoch) / HOUR, color="tab:blue", ls=":", lw=1)
        _mark_alerts(axes, report, stream)
        _mark_anomalies(axes, report, stream)
        score = report.scores.get(stream.name, {}).get(FAN_HEAD)
        summary = score.summary() if score else {}
        title = f"{stream.name} ({stream.kind.unit})"
        if summary.get("mae") is not None:
            title += f": MAE {summary['mae']:g} vs naive {summary['naive_mae']:g}"
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("site hours since the live part began")
        axes.grid(alpha=0.3)
        if i == 0:
            axes.legend(fontsize=7, loc="upper left")
    _plot_ratios(figure.add_subplot(grid[rows - 1, :]), report)
    figure.suptitle(
        f"moecast demo: {len(report.streams)} simulated sensors, seed {report.options.seed}, "
        f"{report.options.duration_s:g} s at ×{report.options.speed:g}"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mark_alerts(axes: Any, report: DemoReport, stream: SimStream) -> None:
    thresholds = set()
    for alert in report.alerts:
        if alert.stream != stream.name:
            continue
        color = "tab:red" if alert.state == "raised" else "tab:green"
        axes.axvline(report.site_t(alert.issued_at) / HOUR, color=color, ls="--", lw=1.2)
        axes.annotate(
            f"{alert.rule} {alert.state}",
            (report.site_t(alert.issued_at) / HOUR, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color=color,
            rotation=90,
            va="top",
            ha="right",
        )
        thresholds.add(alert.threshold)
    for threshold in thresholds:
        axes.axhline(threshold, color="tab:red", ls=":", lw=1)


def _mark_anomalies(axes: Any, report: DemoReport, stream: SimStream) -> None:
    """Raised anomalies as red triangles along the top, cleared as green ones; the injected
    fault's span shaded."""
    if stream.anomaly is not None:
        fault = stream.anomaly
        axes.axvspan(fault.start_s / HOUR, fault.end_s / HOUR, color="tab:orange", alpha=0.08)
    for event in report.anomalies:
        if event.stream != stream.name or event.state not in ("raised", "cleared"):
            continue
        raised = event.state == "raised"
        axes.plot(
            report.site_t(event.ts) / HOUR,
            0.97,
            "v" if raised else "^",
            color="tab:red" if raised else "tab:green",
            ms=7,
            transform=axes.get_xaxis_transform(),
            label=f"anomaly {event.state}",
        )


def _plot_ratios(axes: Any, report: DemoReport) -> None:
    names, ratios = [], []
    for stream in report.streams:
        score = report.scores.get(stream.name, {}).get(FAN_HEAD)
        ratio = score.summary()["relative_mae"] if score else None
        if ratio is not None:
            names.append(stream.name)
            ratios.append(ratio)
    colors = ["tab:green" if r < 1 else "tab:red" for r in ratios]
    axes.bar(range(len(ratios)), ratios, color=colors)
    axes.axhline(1.0, color="k", lw=1)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("MAE / naive MAE")
    axes.set_title(
        f"forecast error relative to a naive last-value forecast, 1 to {FAN_HEAD} steps ahead "
        "(below 1: the model is better)",
        fontsize=10,
    )
