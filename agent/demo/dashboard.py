"""Two views of a running demo: a live terminal dashboard (rich), and plain progress lines for
logs and CI (`--no-tui`). Both render a `Snapshot`; neither touches MQTT."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import numpy as np
from moecast.agent.demo.observer import AlertRecord, AnomalyRecord, ForecastRecord

SPARK = "▁▂▃▄▅▆▇█"
HISTORY_BINS = 24  # six hours of site time on the 15-minute grid
AHEAD_STEPS = 24
PROGRESS_EVERY_S = 5.0
SKILL_HEAD = 8  # the live skill shown: two hours ahead on the 15-minute grid


@dataclass(frozen=True, slots=True)
class StreamView:
    name: str
    unit: str
    latest: tuple[str, float] | None  # (site clock, value)
    history: np.ndarray  # recent bin means, oldest first
    forecast: ForecastRecord | None
    alerts: dict[str, AlertRecord]  # the newest event per rule
    anomaly: AnomalyRecord | None = None  # the newest anomaly event

    @property
    def anomalous(self) -> bool:
        return self.anomaly is not None and self.anomaly.state == "raised"

    def live_skill(self) -> tuple[float | None, float | None]:
        """The agent's live skill and 80 % coverage at SKILL_HEAD (or the nearest head)."""
        if self.forecast is None or not self.forecast.skill:
            return None, None
        skill = self.forecast.skill
        head = min(skill, key=lambda h: abs(h - SKILL_HEAD))
        return skill[head]["skill"], skill[head]["coverage"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed_s: float
    duration_s: float
    site_clock: str
    speed: float
    published: int
    stored: int
    forecasts: int
    ticks: int
    tick_ms: float | None  # mean latency of the agent's forecasting ticks so far
    streams: list[StreamView]
    alert_log: list[tuple[str, AlertRecord]]  # (site clock, event), oldest first
    anomaly_log: list[tuple[str, AnomalyRecord]] = field(default_factory=list)


class View(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...
    def close(self) -> None: ...


def sparkline(values: np.ndarray, low: float, high: float) -> str:
    """One block character per value on the scale low..high; a space for NaN."""
    span = high - low if high > low else 1.0
    levels = np.clip(((values - low) / span * (len(SPARK) - 1)).round(), 0, len(SPARK) - 1)
    marks = zip(values, levels, strict=True)
    return "".join(" " if np.isnan(v) else SPARK[int(level)] for v, level in marks)


def _ahead(view: StreamView) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Median, 10 % and 90 % quantiles of the next AHEAD_STEPS steps of the newest forecast."""
    if view.forecast is None:
        return None
    head = min((h for h in view.forecast.heads if h >= AHEAD_STEPS), default=None)
    if head is None:
        head = max(view.forecast.heads)
    f = view.forecast
    return (
        f.median(head)[:AHEAD_STEPS],
        f.band(head, 0.1)[:AHEAD_STEPS],
        f.band(head, 0.9)[:AHEAD_STEPS],
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _alert_text(view: StreamView) -> tuple[str, bool]:
    raised = [a for a in view.alerts.values() if a.state == "raised"]
    if raised:
        return ", ".join(f"{a.rule} p={a.probability:.2f}" for a in raised), True
    if view.alerts:
        return "cleared: " + ", ".join(view.alerts), False
    return "", False


def _event_line(clock: str, alert: AlertRecord) -> str:
    return (
        f"{clock}  {alert.stream}  {alert.rule} {alert.state.upper()}  "
        f"p={alert.probability:.2f} ({alert.direction} {_number(alert.threshold)})"
    )


def _anomaly_line(clock: str, event: AnomalyRecord) -> str:
    tail = "" if event.tail_probability is None else f"  tail p={event.tail_probability:.2g}"
    return f"{clock}  {event.stream}  anomaly {event.state.upper()}{tail}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def open_view(tui: bool) -> View:
    """The live dashboard, or plain progress without a terminal (or without rich)."""
    if tui:
        try:
            return LiveDashboard()
        except ImportError:
            print("rich is not installed (pip install rich): plain progress instead")
    return PlainProgress()


class LiveDashboard:
    """A rich Live table: per stream the latest value, history and forecast as a sparkline,
    the 80 % interval six hours ahead, and alerts; an alert log below."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        self._live.update(self._render(snapshot))

    def close(self) -> None:
        self._live.stop()

    def _render(self, snapshot: Snapshot):  # -> rich renderable
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=True, show_edge=False, pad_edge=False)
        table.add_column("stream", no_wrap=True)
        table.add_column("latest", justify="right", no_wrap=True)
        table.add_column("last 6 h │ next 6 h (median)", no_wrap=True)
        table.add_column("+6 h, 80 %", justify="right", no_wrap=True)
        table.add_column(f"skill {SKILL_HEAD}", justify="right", no_wrap=True)
        table.add_column("cover", justify="right", no_wrap=True)
        table.add_column("alerts", no_wrap=True)
        for view in snapshot.streams:
            ahead = _ahead(view)
            shown = [view.history] + ([ahead[0]] if ahead else [])
            finite = np.concatenate(shown)
            finite = finite[np.isfinite(finite)]
            low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            line = Text(sparkline(view.history, low, high).rjust(HISTORY_BINS), style="white")
            line.append("│", style="dim")
            interval = ""
            if ahead is not None:
                line.append(sparkline(ahead[0], low, high), style="cyan")
                interval = f"{_number(ahead[1][-1])} – {_number(ahead[2][-1])}"
            latest = f"{_number(view.latest[1])} {view.unit}" if view.latest else "–"
            text, raised = _alert_text(view)
            if view.anomalous:
                text = ("ANOMALY " + text).strip()
            alerts = Text(text, style="bold red" if raised or view.anomalous else "green")
            skill, coverage = view.live_skill()
            cover = "–" if coverage is None else f"{100 * coverage:.0f} %"
            table.add_row(view.name, latest, line, interval, _share(skill), cover, alerts)
        header = Text(
            f"site clock {snapshot.site_clock} (×{snapshot.speed:g})   "
            f"{snapshot.elapsed_s:4.0f}/{snapshot.duration_s:g} s   "
            f"readings {snapshot.published:,} published, {snapshot.stored:,} stored   "
            f"forecasts {snapshot.forecasts:,}   ticks {snapshot.ticks}"
            + (f", {snapshot.tick_ms:.0f} ms each" if snapshot.tick_ms is not None else "")
        )
        events = [_event_line(c, a) for c, a in snapshot.alert_log]
        events += [_anomaly_line(c, a) for c, a in snapshot.anomaly_log]
        log = Text("\n".join(sorted(events)[-8:]) or "none yet")
        return Group(
            Panel(header, title="moecast demo", border_style="cyan"),
            table,
            Panel(log, title="alerts and anomalies", border_style="red" if events else "dim"),
        )


class PlainProgress:
    """A progress line every few seconds and a line per alert event, for logs and CI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._next_line_s = 0.0
        self._alerts_shown = 0
        self._anomalies_shown = 0

    def update(self, snapshot: Snapshot) -> None:
        for clock, alert in snapshot.alert_log[self._alerts_shown :]:
            print(f"alert  {_event_line(clock, alert)}", file=self._out, flush=True)
        self._alerts_shown = len(snapshot.alert_log)
        for clock, event in snapshot.anomaly_log[self._anomalies_shown :]:
            print(f"anomaly  {_anomaly_line(clock, event)}", file=self._out, flush=True)
        self._anomalies_shown = len(snapshot.anomaly_log)
        if snapshot.elapsed_s < self._next_line_s:
            return
        self._next_line_s = snapshot.elapsed_s + PROGRESS_EVERY_S
        forecast_streams = sum(view.forecast is not None for view in snapshot.streams)
        raised = sum(_alert_text(view)[1] for view in snapshot.streams)
        print(
            f"[{snapshot.elapsed_s:3.0f}/{snapshot.duration_s:g} s] site {snapshot.site_clock}: "
            f"{snapshot.published:,} readings published, {snapshot.stored:,} stored; "
            f"{snapshot.forecasts:,} forecasts ({forecast_streams}/{len(snapshot.streams)} "
            f"streams); {raised} alerts raised",
            file=self._out,
            flush=True,
        )

    def close(self) -> None:
        pass
