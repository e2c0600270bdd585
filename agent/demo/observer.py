"""What a consumer of the agent sees: its forecasts and alerts, taken off MQTT like anyone's.

The dashboard and the report read these, not the agent's internals, so the demo shows exactly
what an application subscribed to the agent's topics would get.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
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


class Observer:
    """Subscribes to the forecast and alert topics and keeps everything that arrives."""

    def __init__(self, client: paho.Client, forecasts_prefix: str, alerts_prefix: str) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._forecasts: dict[str, list[ForecastRecord]] = {}
        self._alerts: list[AlertRecord] = []
        self.bad_messages = 0
        self._forecast_root = forecasts_prefix + "/"
        client.on_message = self._on_message
        client.subscribe(f"{forecasts_prefix}/#", qos=1)
        client.subscribe(f"{alerts_prefix}/#", qos=1)

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

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            document = json.loads(message.payload)
            if message.topic.startswith(self._forecast_root):
                record: ForecastRecord | AlertRecord = _forecast(document)
            else:
                record = _alert(document)
        except (ValueError, KeyError, TypeError):
            self.bad_messages += 1  # e.g. a retained message from an older run
            return
        with self._lock:
            if isinstance(record, ForecastRecord):
                self._forecasts.setdefault(record.stream, []).append(record)
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
