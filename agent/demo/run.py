"""One demo run: broker, agent, simulated site, dashboard, then the report.

The agent is the real one (MQTT ingestion, SQLite, scheduled forecasts, alerts), running in
this process with the shipped bundle. The site publishes five days of history first, so that
forecasts start at once; the agent's forecasting ticks are held back until that history is
stored, then the live part runs for `duration_s` wall seconds.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from moecast.agent.cli import DEFAULT_BUNDLE
from moecast.agent.demo import dashboard, report
from moecast.agent.demo.broker import EmbeddedBroker
from moecast.agent.demo.config import CONTEXT_BINS, INTERVAL_S, demo_settings
from moecast.agent.demo.evaluate import Published, bin_series, score_stream
from moecast.agent.demo.observer import AlertRecord, Observer
from moecast.agent.demo.publisher import SiteClock, SitePublisher, connect_client, plan_clock
from moecast.agent.demo.site import HOUR, LIVE_STARTS_AT_HOUR, SimStream, simulate
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.runtime import Agent, TickContext

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle

log = logging.getLogger(__name__)

HISTORY_S = CONTEXT_BINS * INTERVAL_S + 6 * HOUR
LOOP_S = 0.05
VIEW_EVERY_S = 0.25
HISTORY_TIMEOUT_S = 120.0
DRAIN_S = 1.5  # after the live part: the last tick's forecasts and alerts arrive


@dataclass(frozen=True, slots=True)
class DemoOptions:
    broker_url: str | None  # None: the embedded broker
    sensors: int
    duration_s: float
    seed: int
    speed: float
    tui: bool
    out_dir: Path


class DemoError(RuntimeError):
    """The demo cannot run (no broker, the agent did not take the history)."""


def run_demo(options: DemoOptions) -> report.DemoReport:
    clock = plan_clock(time.time(), options.speed, options.duration_s, INTERVAL_S)
    streams = simulate(options.sensors, HISTORY_S, clock.live_s, options.seed)
    embedded = EmbeddedBroker() if options.broker_url is None else None
    if embedded is not None:
        embedded.start()
    url = embedded.url if embedded is not None else options.broker_url
    assert url is not None
    try:
        with tempfile.TemporaryDirectory(prefix="moecast-demo-") as storage:
            return _run(options, clock, streams, url, embedded is None, Path(storage))
    finally:
        if embedded is not None:
            embedded.stop()


def _run(
    options: DemoOptions,
    clock: SiteClock,
    streams: list[SimStream],
    url: str,
    external: bool,
    storage: Path,
) -> report.DemoReport:
    run_id = f"demo-{os.getpid()}"
    # On a shared broker the run's topics live under their own root; the embedded broker is
    # ours alone and keeps the agent's default topics.
    root = f"moecast-demo/{run_id}/" if external else ""
    settings = demo_settings(
        broker_url=url,
        v5=external,  # amqtt speaks MQTT 3.1.1 only
        storage_dir=storage,
        topic_root=root,
        agent_id=run_id,
        history_s=HISTORY_S,
        live_s=clock.live_s,
        max_points=max(s.t.size for s in streams) + 1000,
    )
    bundle = load_bundle(DEFAULT_BUNDLE, [DEV_PUBLIC_KEY], settings.threads)
    forecaster = Forecaster(bundle, settings)
    live = threading.Event()

    def tick(context: TickContext) -> None:
        # Not on a half-loaded history; and on the site's clock, which runs fast.
        if live.is_set():
            forecaster(replace(context, now=clock.now()))

    agent = Agent(settings, on_tick=tick, on_stop=forecaster.close)
    agent.link.model_version = forecaster.model_version
    agent.start()
    host, port = settings.broker.host, settings.broker.port
    listener = publisher_client = None
    view: dashboard.View | None = None
    try:
        if not agent.link.wait_connected(15):
            raise DemoError(f"the agent could not connect to the broker at {url}")
        listener = connect_client(host, port, f"{run_id}-dashboard", external)
        observer = Observer(
            listener,
            settings.topics.forecasts,
            settings.topics.alerts,
            settings.quality.anomalies.topic,
        )
        publisher_client = connect_client(host, port, f"{run_id}-site", external)
        publisher = SitePublisher(streams, clock, publisher_client, settings.topics.sensors)
        history = publisher.publish_history()
        print(
            f"site: {len(streams)} sensors, {history:,} readings of history "
            f"({HISTORY_S / 86_400:.1f} days) sent to {url}; waiting for the agent to store them",
            flush=True,
        )
        _wait_stored(agent, history)
        view = dashboard.open_view(options.tui)
        clock.start()
        live.set()
        finished_at = _live_loop(options, clock, publisher, observer, agent, view)
        time.sleep(DRAIN_S)
        view.update(_snapshot(options, clock, publisher, observer, agent, finished_at))
        view.close()
        view = None
    finally:
        if view is not None:
            view.close()
        agent.stop()
        if external and publisher_client is not None:
            prefixes = (settings.topics.forecasts, settings.quality.anomalies.topic)
            _clear_retained(publisher_client, prefixes, streams)
        for client in (listener, publisher_client):
            if client is not None:
                client.disconnect()
                client.loop_stop()
    metrics = agent.metrics.snapshot()
    manifest = bundle.manifest
    built = _build_report(
        options, clock, streams, publisher, observer, metrics, finished_at, url, external
    )
    built.model = {
        "name": manifest.name,
        "model_version": manifest.model_version,
        "quantization": manifest.quantization,
        "context_length": manifest.context_length,
        "horizons": manifest.horizons,
    }
    return built


def _wait_stored(agent: Agent, readings: int) -> None:
    deadline = time.monotonic() + HISTORY_TIMEOUT_S
    while agent.metrics.snapshot()["readings_accepted"] < readings:
        if not agent.healthy or time.monotonic() > deadline:
            stored = agent.metrics.snapshot()["readings_accepted"]
            raise DemoError(f"the agent stored {stored:,} of {readings:,} history readings")
        time.sleep(0.05)


def _live_loop(
    options: DemoOptions,
    clock: SiteClock,
    publisher: SitePublisher,
    observer: Observer,
    agent: Agent,
    view: dashboard.View,
) -> float:
    """Publish on site time until the duration is over (or Ctrl-C); returns the site time
    reached."""
    next_view = 0.0
    t = 0.0
    try:
        while (elapsed := clock.elapsed_s) < options.duration_s:
            t = clock.t
            publisher.publish_due(t)
            if elapsed >= next_view:
                view.update(_snapshot(options, clock, publisher, observer, agent, t))
                next_view = elapsed + VIEW_EVERY_S
            if not agent.healthy:
                raise DemoError("the agent's ingest writer died")
            time.sleep(LOOP_S)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping early and writing the report")
    return t


def _snapshot(
    options: DemoOptions,
    clock: SiteClock,
    publisher: SitePublisher,
    observer: Observer,
    agent: Agent,
    t: float,
) -> dashboard.Snapshot:
    metrics = agent.metrics.snapshot()
    alerts = observer.alerts()
    anomalies = observer.anomalies()
    newest_anomaly = {event.stream: event for event in anomalies}
    views = []
    for k, stream in enumerate(publisher.streams):
        sent = ~np.isnan(publisher.sent_at[k])
        recent = sent & (stream.t > t - dashboard.HISTORY_BINS * INTERVAL_S)
        labels, means = bin_series(
            clock.epoch + stream.t[recent], stream.values[recent], INTERVAL_S
        )
        history = _on_grid(labels, means, clock.epoch + t)
        latest = publisher.latest[k]
        newest: dict[str, AlertRecord] = {}
        for alert in alerts:
            if alert.stream == stream.name:
                newest[alert.rule] = alert
        views.append(
            dashboard.StreamView(
                name=stream.name,
                unit=stream.kind.unit,
                latest=(_clock(latest[0]), latest[1]) if latest else None,
                history=history,
                forecast=observer.latest(stream.name),
                alerts=newest,
                anomaly=newest_anomaly.get(stream.name),
            )
        )
    tick = metrics["forecast_tick_s"]
    ticks = int(tick["count"])
    tick_ms = 1000 * tick["sum"] / ticks if ticks else None
    return dashboard.Snapshot(
        elapsed_s=min(clock.elapsed_s, options.duration_s),
        duration_s=options.duration_s,
        site_clock=_clock(t),
        speed=options.speed,
        published=publisher.published,
        stored=int(metrics["readings_accepted"]),
        forecasts=observer.forecast_count,
        ticks=ticks,
        tick_ms=tick_ms,
        streams=views,
        alert_log=[(_clock(a.issued_at - clock.epoch), a) for a in alerts],
        anomaly_log=[(_clock(a.ts - clock.epoch), a) for a in anomalies],
    )


def _on_grid(labels: np.ndarray, means: np.ndarray, end_ts: float) -> np.ndarray:
    """The last HISTORY_BINS bins up to `end_ts`, NaN where empty."""
    last = np.ceil(end_ts / INTERVAL_S)
    grid = np.full(dashboard.HISTORY_BINS, np.nan)
    index = (np.round(labels / INTERVAL_S) - last + dashboard.HISTORY_BINS - 1).astype(int)
    inside = (index >= 0) & (index < dashboard.HISTORY_BINS)
    grid[index[inside]] = means[inside]
    return grid


def _clock(t: float) -> str:
    """The site's local clock `t` site seconds into the live part: "day 1 09:45"."""
    minutes = int((LIVE_STARTS_AT_HOUR * 3600 + t) // 60)
    day, minute = divmod(minutes, 24 * 60)
    return f"day {day + 1} {minute // 60:02d}:{minute % 60:02d}"


def _clear_retained(client, prefixes: tuple[str, ...], streams: list[SimStream]) -> None:
    """Empty retained payloads delete the run's forecasts and anomalies from a shared
    broker."""
    sent = [
        client.publish(f"{prefix}/{stream.name}", b"", qos=1, retain=True)
        for prefix in prefixes
        for stream in streams
    ]
    for info in sent:
        info.wait_for_publish(5)


def _build_report(
    options: DemoOptions,
    clock: SiteClock,
    streams: list[SimStream],
    publisher: SitePublisher,
    observer: Observer,
    metrics: dict,
    finished_t: float,
    url: str,
    external: bool,
) -> report.DemoReport:
    per_stream = {}
    published = {}
    for k, stream in enumerate(streams):
        published[stream.name] = Published(
            clock.epoch + stream.t, stream.values, publisher.sent_at[k]
        )
        per_stream[stream.name] = score_stream(
            published[stream.name], observer.forecasts(stream.name), clock.epoch + finished_t
        )
    return report.DemoReport(
        options=options,
        clock=clock,
        streams=streams,
        published=published,
        forecasts={s.name: observer.forecasts(s.name) for s in streams},
        alerts=observer.alerts(),
        anomalies=observer.anomalies(),
        scores=per_stream,
        metrics=metrics,
        finished_t=finished_t,
        broker=url if external else f"embedded amqtt on {urlsplit(url).netloc}",
        readings_published=publisher.published,
        history_readings=publisher.history_readings,
    )
