"""A fake bundle whose forecasts the quality tests choose (miscalibrated on purpose), and a link
that records what the Forecaster publishes, empty payloads included."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moecast.bundle.format import output_name

HORIZONS = (1, 8, 32, 64)
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Standard normal quantiles at LEVELS.
Z = np.array([-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816])


@dataclass(frozen=True)
class FakeManifest:
    model_version: int = 1
    context_length: int = 128
    horizons: tuple[int, ...] = HORIZONS
    quantiles: tuple[float, ...] = LEVELS


class FakeBundle:
    """`centre(batch) -> [rows]` medians; quantiles = median + spread * Z, for every step."""

    def __init__(
        self,
        centre: Callable[[np.ndarray], np.ndarray] | None = None,
        spread: float = 1.0,
        offsets: np.ndarray | None = None,
    ) -> None:
        self.manifest = FakeManifest()
        self.centre = centre or last_value
        self.offsets = spread * Z if offsets is None else np.asarray(offsets, np.float64)
        self.runs = 0

    def run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        self.runs += 1
        centre = np.asarray(self.centre(values), np.float64)
        base = (centre[:, None] + self.offsets[None, :]).astype(np.float32)
        return {output_name(h): np.repeat(base[:, None, :], h, axis=1) for h in HORIZONS}


def last_value(values: np.ndarray) -> np.ndarray:
    """Each row's last observed value: the naive forecast."""
    observed = ~np.isnan(values)
    last = values.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)
    return values[np.arange(len(values)), last].astype(np.float64)


class Link:
    """Stands in for MqttLink; payloads are parsed JSON, or None for an empty one."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        parsed = json.loads(payload) if payload else None
        self.published.append(
            {"topic": topic, "payload": parsed, "qos": qos, "retain": retain, "expiry_s": expiry_s}
        )

    def on(self, prefix: str) -> list[dict[str, Any]]:
        return [m for m in self.published if m["topic"].startswith(prefix)]

    def clear(self) -> None:
        self.published.clear()
