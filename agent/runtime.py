"""The running agent: settings -> store -> registry -> MQTT -> ingest, plus status, metrics and
the forecasting tick.

Forecasting plugs in through `on_tick`: a callable that receives a `TickContext` every
`forecast.cadence_s` seconds, at multiples of the cadence since the epoch (so ticks line up
with the epoch-aligned grids of `moecast.agent.forecast.grid`). It runs on a scheduler thread,
never two at
once; a tick that overruns makes the next one skip rather than queue up. Without `on_tick` the
agent ingests and stores readings but forecasts nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from moecast.agent.ingest.inbox import Inbox
from moecast.agent.ingest.link import FleetSink, MqttLink
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ingest.writer import IngestWorker
from moecast.agent.ops.memory import release_free_memory
from moecast.agent.ops.metrics import AgentMetrics, PrometheusEndpoint
from moecast.agent.settings import AgentSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TickContext:
    """What a forecasting tick works with."""

    now: float  # unix seconds when the tick fired
    settings: AgentSettings
    registry: StreamRegistry  # thread-safe snapshots of every stream's recent readings
    link: MqttLink  # publish forecasts and alerts; set `model_version` for the status topic
    metrics: AgentMetrics


OnTick = Callable[[TickContext], object]


def build_link(
    settings: AgentSettings,
    metrics: AgentMetrics | None = None,
    fleet_sink: FleetSink | None = None,
) -> MqttLink:
    """The MQTT link with its inbox (bounded by `ingest.queue_size` messages and
    `ingest.queue_bytes` of payloads) and metrics."""
    inbox = Inbox(settings.ingest.queue_size, settings.ingest.queue_bytes)
    return MqttLink(settings, inbox, metrics or AgentMetrics(), fleet_sink)


class Agent:
    """Owns every part of a running agent; `start`, then `stop` (both from one thread)."""

    def __init__(
        self,
        settings: AgentSettings,
        on_tick: OnTick | None = None,
        *,
        on_stop: Callable[[], object] | None = None,
        link: MqttLink | None = None,
    ) -> None:
        """`link` (with its metrics and inbox) is built first by callers that hand it to other
        parts too, such as the fleet update path; by default the agent builds its own.
        `on_stop` runs on a clean stop once the last tick has finished (the forecaster saves
        its state there)."""
        self.settings = settings
        self._on_tick = on_tick
        self._on_stop = on_stop
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        self.store = ReadingStore(settings.readings_db, settings.limits.store)
        self.registry = StreamRegistry(settings.limits.streams)
        self.link = link if link is not None else build_link(settings)
        self.metrics = self.link.metrics
        self.inbox = self.link.inbox
        self.ingest = IngestWorker(
            self.inbox,
            self.store,
            self.registry,
            self.link,
            self.metrics,
            settings.ingest,
            settings.topics.sensors,
            settings.limits.payload,
        )
        self.metrics.add_gauge("queue_depth", self.inbox.qsize)
        self.metrics.add_gauge("streams", lambda: len(self.registry))
        self.metrics.add_gauge("connected", lambda: int(self.link.connected.is_set()))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2)}, timezone=UTC
        )
        self._prometheus: PrometheusEndpoint | None = None

    def start(self) -> None:
        metrics = self.settings.metrics
        if metrics.prometheus_port is not None:
            # First: a missing prometheus-client must fail before anything is connected.
            self._prometheus = PrometheusEndpoint(
                self.metrics, metrics.prometheus_port, metrics.prometheus_host
            )
        self.ingest.start()
        self.link.start()
        self._scheduler.add_job(
            self.publish_metrics, "interval", seconds=metrics.interval_s, coalesce=True
        )
        if self._on_tick is not None:
            cadence = self.settings.forecast.cadence_s
            first = math.ceil(time.time() / cadence) * cadence
            self._scheduler.add_job(
                self._tick,
                "interval",
                seconds=cadence,
                next_run_time=datetime.fromtimestamp(first, UTC),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(cadence / 2)),
            )
        self._scheduler.start()
        log.info(
            "agent %s started: broker %s, storage %s",
            self.settings.agent_id,
            self.settings.broker.url,
            self.settings.storage_dir,
        )

    @property
    def healthy(self) -> bool:
        """False once the writer thread has died: the agent must exit, not idle on."""
        return self.ingest.alive

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store and acknowledge what has arrived, publish `offline`, disconnect, close."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                log.exception("saving the forecasting state failed")
        if self.ingest.alive:
            self.ingest.flush(timeout_s)
        self.link.stop(timeout_s)
        if self.ingest.alive and not self.ingest.stop(timeout_s):
            log.error("gave up storing the last readings: the broker will redeliver them")
        if self._prometheus is not None:
            self._prometheus.close()
        self.store.close()
        log.info("agent %s stopped", self.settings.agent_id)

    def publish_metrics(self) -> None:
        snapshot = {
            "agent_id": self.settings.agent_id,
            "ts": time.time(),
            **self.metrics.snapshot(),
        }
        # Retained, so a tool that subscribes (`moecast fleet prune-for` reading the expert
        # load) gets the latest at once; expiring after two intervals: no stale numbers.
        expiry = max(1, math.ceil(2 * self.settings.metrics.interval_s))
        self.link.publish(
            self.settings.metrics_topic, json.dumps(snapshot), 0, retain=True, expiry_s=expiry
        )

    def _tick(self) -> None:
        assert self._on_tick is not None
        context = TickContext(time.time(), self.settings, self.registry, self.link, self.metrics)
        try:
            self._on_tick(context)
        except Exception:
            log.exception("forecasting tick failed")
        finally:
            release_free_memory()  # the tick's arrays and payloads, freed, go back at once
