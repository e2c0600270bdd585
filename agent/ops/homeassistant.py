"""Home Assistant MQTT discovery: each forecast stream as a `sensor`, its anomalies as a
`binary_sensor`, grouped under one device per agent (`homeassistant.enabled`).

Configs are retained on `<prefix>/sensor/<node>/<object>/config` and
`<prefix>/binary_sensor/<node>/<object>/config`, published from the tick thread when a stream
is first forecast, and again for every stream after the agent reconnects (a broker that lost
its retained messages would otherwise leave Home Assistant without them). Every topic published
is recorded in `quality.db`; a run with discovery off (or another prefix or node id) publishes
an empty retained payload on each recorded topic that no longer applies, which removes the
entity from Home Assistant, and forgets it. The entities of a stream evicted as idle
(`limits.streams.evict_idle_s`) are removed the same way.

The sensor's state is the published median `state_ahead_s` ahead (in whole grid steps, read
from the shortest head that reaches it); its attributes are the longest head's steps (ts, median,
outer quantiles) and the live skill. The entities go unavailable with the agent's status topic
(`offline` from the will or a clean stop), and the sensor expires when forecasts stop coming.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Container, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from moecast.agent.forecast.quality_store import QualityStore
from moecast.agent.ingest.readings import StreamId

if TYPE_CHECKING:
    from moecast.agent.runtime import TickContext
    from moecast.agent.settings import AgentSettings

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(text: str) -> str:
    """`text` as a discovery topic level (Home Assistant allows [a-zA-Z0-9_-]); a name that
    had to change gets a short hash, so two names that sanitise alike stay apart."""
    safe = _UNSAFE.sub("_", text).strip("_") or "x"
    if safe == text:
        return safe
    return f"{safe}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _version() -> str:
    try:
        return metadata.version("moecast")
    except metadata.PackageNotFoundError:
        return "unknown"


def _node(settings: AgentSettings) -> str:
    return safe_id(settings.homeassistant.node_id or settings.agent_id)


def _node_and_object(settings: AgentSettings, stream: StreamId) -> tuple[str, str]:
    return _node(settings), safe_id(f"{stream.device}_{stream.sensor}")


def config_topics(settings: AgentSettings, stream: StreamId) -> list[str]:
    """The stream's sensor and binary_sensor config topics, in `discovery_configs`' order."""
    node, obj = _node_and_object(settings, stream)
    prefix = settings.homeassistant.prefix
    return [f"{prefix}/{kind}/{node}/{obj}/config" for kind in ("sensor", "binary_sensor")]


def discovery_configs(
    settings: AgentSettings,
    stream: StreamId,
    interval_s: float,
    horizons: Sequence[int],
    levels: Sequence[float],
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, config) of the stream's sensor and binary_sensor."""
    config = settings.homeassistant
    node, obj = _node_and_object(settings, stream)
    version = _version()
    longest = max(horizons)
    step = int(min(max(round(config.state_ahead_s / interval_s), 1), longest))
    head = min(h for h in horizons if h >= step)
    low, high = str(levels[0]), str(levels[-1])
    device = {
        "identifiers": [f"moecast_{node}"],
        "name": f"moecast {settings.agent_id}",
        "manufacturer": "moecast",
        "model": "moecast edge agent",
        "sw_version": version,
    }
    availability = [
        {
            "topic": settings.status_topic,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    origin = {"name": "moecast", "sw_version": version}
    forecast_topic = stream.topic(settings.topics.forecasts)
    attributes = (
        f"{{% set h = value_json.horizons['{longest}'] %}}"
        "{{ {'issued_at': value_json.issued_at, 'ts': h.ts, 'median': h.median, "
        f"'lower': h.quantiles['{low}'], 'upper': h.quantiles['{high}'], "
        "'skill': value_json.get('skill')} | tojson }}"
    )
    sensor = {
        "name": f"{stream.device} {stream.sensor} forecast",
        "unique_id": f"moecast_{node}_{obj}_forecast",
        "state_topic": forecast_topic,
        "value_template": f"{{{{ value_json.horizons['{head}'].median[{step - 1}] }}}}",
        "json_attributes_topic": forecast_topic,
        "json_attributes_template": attributes,
        "state_class": "measurement",
        # Past the forecast's own message expiry the value is stale: show it as unknown.
        "expire_after": settings.forecast.expiry_s,
        "availability": availability,
        "device": device,
        "origin": origin,
        "qos": 1,
    }
    anomaly_topic = stream.topic(settings.quality.anomalies.topic)
    binary = {
        "name": f"{stream.device} {stream.sensor} anomaly",
        "unique_id": f"moecast_{node}_{obj}_anomaly",
        "state_topic": anomaly_topic,
        "value_template": "{{ 'ON' if value_json.state == 'raised' else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
        "json_attributes_topic": anomaly_topic,
        "availability": availability,
        "device": device,
        "origin": origin,
        "qos": 1,
    }
    return list(zip(config_topics(settings, stream), (sensor, binary), strict=True))


class Discovery:
    """Publishes and removes discovery configs; the tick thread calls `tick` every tick."""

    def __init__(self, settings: AgentSettings, store: QualityStore) -> None:
        self.settings = settings
        self.config = settings.homeassistant
        self._store = store
        self._published = store.discovery_topics()
        self._announced: set[StreamId] = set()  # since the last (re)connect
        self._streams: set[StreamId] = set()  # every stream announced in this run
        self._connects: int | None = None
        self._cleaned = False

    def tick(
        self,
        context: TickContext,
        shown: Sequence[tuple[StreamId, float]],
        horizons: Sequence[int],
        levels: np.ndarray | Sequence[float],
    ) -> None:
        if not self._cleaned:
            self._clean(context)
            self._cleaned = True
        if not self.config.enabled or not horizons:
            return
        connects = getattr(context.metrics, "connects", 0)
        if connects != self._connects:
            self._connects = connects
            self._announced.clear()  # a (re)connect: announce every stream again
        level_list = [float(level) for level in levels]
        topics = []
        for stream, interval in shown:
            if stream in self._announced:
                continue
            for topic, config in discovery_configs(
                self.settings, stream, interval, horizons, level_list
            ):
                context.link.publish(topic, orjson.dumps(config), 1, retain=True)
                topics.append(topic)
            self._announced.add(stream)
            self._streams.add(stream)
        fresh = set(topics) - self._published
        if fresh:
            self._store.add_discovery_topics(sorted(fresh))
            self._published |= fresh

    def forget_unheld(self, held: Container[StreamId]) -> list[StreamId]:
        """The streams announced in this run that `held` (the registry) no longer holds."""
        return [stream for stream in self._streams if stream not in held]

    def forget(self, context: TickContext, streams: Sequence[StreamId]) -> None:
        """Remove the entities of streams the agent no longer holds (evicted as idle)."""
        self._announced.difference_update(streams)
        self._streams.difference_update(streams)
        gone = sorted(
            topic
            for stream in streams
            for topic in config_topics(self.settings, stream)
            if topic in self._published
        )
        self._remove(context, gone)

    def _remove(self, context: TickContext, topics: list[str]) -> None:
        for topic in topics:
            context.link.publish(topic, b"", 1, retain=True)
        if topics:
            log.info("removed %d Home Assistant discovery configs", len(topics))
            self._store.remove_discovery_topics(topics)
            self._published -= set(topics)

    def _clean(self, context: TickContext) -> None:
        """Remove what an earlier run published and this one would not."""
        config = self.config
        node = _node(self.settings)
        own = re.compile(rf"^{re.escape(config.prefix)}/(sensor|binary_sensor)/{re.escape(node)}/")
        self._remove(
            context, sorted(t for t in self._published if not (config.enabled and own.match(t)))
        )
