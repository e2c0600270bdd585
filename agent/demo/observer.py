"""What a consumer of the agent sees: its forecasts (with their live skill), alerts and
anomalies, taken off MQTT like anyone's.

The dashboard and the report read these, not the agent's internals, so the demo shows exactly
what an application subscribed to the agent's topics would get.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as paho


@dataclass(frozen=True, slots=True)
class ForecastRecord:
    """One forecast message: per horizon head, quantiles `[steps, levels]` from grid_end on."""

    stream: str
    issued_at: float
    grid_end: float
    interval_s: float
    levels: np.ndarray
    heads: dict[int, np.ndarray]
    # The agent's live skill of the stream per head (the payload's `skill`): horizon ->
    # {"n", "skill", "coverage"}; empty without quality checks.
    skill: dict[int, dict[str, float | None]] = field(default_factory=dict)

    def band(self, head: int, level: float) -> np.ndarray:
        """The quantile at `level` for every step of `head`."""
        return self.heads[head][:, int(np.argmin(np.abs(self.levels - level)))]

    def median(self, head: int) -> np.ndarray:
        return self.band(head, 0.5)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    stream: str
    rule: str
    state: str  # "raised" or "cleared"
    probability: float
    threshold: float
    direction: str
    issued_at: float
    first_crossing_ts: float | None


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """One anomaly event: `raised` / `cleared` for the grid bin ending at `ts`, or `stale`."""

    stream: str
    state: str
    ts: float  # unix end of the judged bin (stale: the last bin the agent had)
    tail_probability: float | None
    horizon: int | None


class Observer:
    """Subscribes to the forecast, alert and anomaly topics and keeps everything that
    arrives."""

    def __init__(
        self,
        client: paho.Client,
        forecasts_prefix: str,
        alerts_prefix: str,
        anomalies_prefix: str | None = None,
    ) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._forecasts: dict[str, list[ForecastRecord]] = {}
        self._alerts: list[AlertRecord] = []
        self._anomalies: list[AnomalyRecord] = []
        self.bad_messages = 0
        self._forecast_root = forecasts_prefix + "/"
        self._anomaly_root = None if anomalies_prefix is None else anomalies_prefix + "/"
        client.on_message = self._on_message
        client.subscribe(f"{forecasts_prefix}/#", qos=1)
        client.subscribe(f"{alerts_prefix}/#", qos=1)
        if anomalies_prefix is not None:
            client.subscribe(f"{anomalies_prefix}/#", qos=1)

    def forecasts(self, stream: str) -> list[ForecastRecord]:
        with self._lock:
            return list(self._forecasts.get(stream, ()))

    def latest(self, stream: str) -> ForecastRecord | None:
        with self._lock:
            found = self._forecasts.get(stream)
            return found[-1] if found else None

    @property
    def forecast_count(self) -> int:
        with self._lock:
            return sum(len(found) for found in self._forecasts.values())

    def alerts(self) -> list[AlertRecord]:
        with self._lock:
            return list(self._alerts)

    def anomalies(self) -> list[AnomalyRecord]:
        with self._lock:
            return list(self._anomalies)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if not message.payload:
            return  # a retained message removed
        try:
            document = json.loads(message.payload)
            record: ForecastRecord | AlertRecord | AnomalyRecord
            if message.topic.startswith(self._forecast_root):
                record = _forecast(document)
            elif self._anomaly_root is not None and message.topic.startswith(self._anomaly_root):
                record = _anomaly(document)
            else:
                record = _alert(document)
        except (ValueError, KeyError, TypeError):
            self.bad_messages += 1  # e.g. a retained message from an older run
            return
        with self._lock:
            if isinstance(record, ForecastRecord):
                self._forecasts.setdefault(record.stream, []).append(record)
            elif isinstance(record, AnomalyRecord):
                self._anomalies.append(record)
            else:
                self._alerts.append(record)


def _forecast(document: dict[str, Any]) -> ForecastRecord:
    levels = np.asarray(document["quantile_levels"], dtype=np.float64)
    keys = [str(level) for level in document["quantile_levels"]]
    heads = {
        int(h): np.array([head["quantiles"][key] for key in keys], dtype=np.float64).T
        for h, head in document["horizons"].items()
    }
    return ForecastRecord(
        stream=document["stream"],
        issued_at=float(document["issued_at"]),
        grid_end=float(document["grid_end"]),
        interval_s=float(document["interval_s"]),
        levels=levels,
        heads=heads,
        skill=_skill(document.get("skill")),
    )


def _skill(section: dict[str, Any] | None) -> dict[int, dict[str, float | None]]:
    """The payload's per-head lists as horizon -> {n, skill, coverage}."""
    if not section:
        return {}
    return {
        int(h): {key: section[key][i] for key in ("n", "skill", "coverage")}
        for i, h in enumerate(section["horizons"])
    }


def _anomaly(document: dict[str, Any]) -> AnomalyRecord:
    probability = document.get("tail_probability")
    horizon = document.get("horizon")
    return AnomalyRecord(
        stream=document["stream"],
        state=document["state"],
        ts=float(document["ts"]),
        tail_probability=None if probability is None else float(probability),
        horizon=None if horizon is None else int(horizon),
    )


def _alert(document: dict[str, Any]) -> AlertRecord:
    return AlertRecord(
        stream=document["stream"],
        rule=document["rule"],
        state=document["state"],
        probability=float(document["probability"]),
        threshold=float(document["threshold"]),
        direction=document["direction"],
        issued_at=float(document["issued_at"]),
        first_crossing_ts=document.get("first_crossing_ts"),
    )
