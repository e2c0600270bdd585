"""The simulated site on MQTT: its history as a backlog, then its readings on accelerated time.

Sensors publish in three of the formats the agent accepts: single readings, SenML
records and ISO 8601 timestamps.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import numpy as np
import paho.mqtt.client as paho
from moecast.agent.demo.site import SimStream
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

BACKLOG_BATCH = 1000  # readings per history message: well under the agent's payload limits


class SiteClock:
    """Site time is `epoch + t`, `t` seconds since the live part began (negative: history).

    Before `start`, t is 0; after, it runs `speed` times faster than the wall clock, up to
    `live_s`. The agent's forecasting ticks read this clock too, so that forecasts and alerts
    are in site time (staleness is judged on when readings arrive, on the agent's own clock:
    in the demo no stream goes stale).
    """

    def __init__(self, epoch: float, speed: float, live_s: float) -> None:
        self.epoch = epoch  # unix time of t = 0, a multiple of the grid interval
        self.speed = speed
        self.live_s = live_s
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        """Wall seconds since `start`."""
        return 0.0 if self._started is None else time.monotonic() - self._started

    @property
    def t(self) -> float:
        return min(self.elapsed_s * self.speed, self.live_s)

    def now(self) -> float:
        return self.epoch + self.t


def plan_clock(now: float, speed: float, duration_s: float, interval_s: float) -> SiteClock:
    """Site time that ends about where the wall clock is now: every timestamp the agent sees
    is in the past, as real readings are."""
    live_s = speed * duration_s
    epoch = math.floor((now - live_s) / interval_s) * interval_s
    return SiteClock(epoch, speed, live_s)


class SitePublisher:
    """Publishes every stream's readings once, in send-time order, recording when."""

    def __init__(
        self, streams: list[SimStream], clock: SiteClock, client: paho.Client, prefix: str
    ) -> None:
        self.streams = streams
        self.clock = clock
        self._client = client
        self._topics = [f"{prefix}/{s.device}/{s.kind.name}" for s in streams]
        # Site time (unix) at which each reading went out; NaN until then.
        self.sent_at = [np.full(s.t.size, np.nan) for s in streams]
        live = [np.flatnonzero(s.send_t > 0) for s in streams]
        send_t = np.concatenate([s.send_t[i] for s, i in zip(streams, live, strict=True)])
        which = np.concatenate([np.full(i.size, k) for k, i in enumerate(live)])
        index = np.concatenate(live)
        order = np.argsort(send_t, kind="stable")
        self._schedule_t = send_t[order]
        self._schedule = np.stack([which[order], index[order]], axis=1)
        self._next = 0
        self.published = 0
        # The newest reading published per stream, as (t, value): what a dashboard shows.
        self.latest: list[tuple[float, float] | None] = [None] * len(streams)

    @property
    def history_readings(self) -> int:
        return sum(int(np.count_nonzero(s.send_t <= 0)) for s in self.streams)

    @property
    def live_readings(self) -> int:
        return int(self._schedule_t.size)

    def publish_history(self) -> int:
        """Every reading sent before the live part, as JSON lists in time order."""
        sent = 0
        for k, stream in enumerate(self.streams):
            old = np.flatnonzero(stream.send_t <= 0)
            for start in range(0, old.size, BACKLOG_BATCH):
                chunk = old[start : start + BACKLOG_BATCH]
                payload = [
                    {"ts": round(self.clock.epoch + float(stream.t[i]), 3), "value": float(v)}
                    for i, v in zip(chunk, stream.values[chunk], strict=True)
                ]
                self._client.publish(self._topics[k], json.dumps(payload), qos=1)
                self.sent_at[k][chunk] = self.clock.epoch + stream.send_t[chunk]
                sent += chunk.size
            if old.size:
                self.latest[k] = (float(stream.t[old[-1]]), float(stream.values[old[-1]]))
        self.published += sent
        return sent

    def publish_due(self, t: float) -> int:
        """The live readings whose send time has come by site time `t`."""
        end = int(np.searchsorted(self._schedule_t, t, side="right"))
        now = self.clock.epoch + t
        for k, i in self._schedule[self._next : end]:
            stream = self.streams[k]
            payload = _payload(stream, self.clock.epoch + float(stream.t[i]), stream.values[i])
            self._client.publish(self._topics[k], payload, qos=1)
            self.sent_at[k][i] = now
            latest = self.latest[k]
            if latest is None or stream.t[i] > latest[0]:
                self.latest[k] = (float(stream.t[i]), float(stream.values[i]))
        count = end - self._next
        self._next = end
        self.published += count
        return count


def _payload(stream: SimStream, ts: float, value: float) -> str:
    if stream.kind.name == "vibration":  # a SenML pack, as many industrial gateways send
        return json.dumps([{"n": "vibration", "u": stream.kind.unit, "t": ts, "v": float(value)}])
    if stream.kind.name == "pressure":  # ISO 8601 time, as weather stations often send
        iso = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
        return json.dumps({"ts": iso.replace("+00:00", "Z"), "value": float(value)})
    return json.dumps({"ts": round(ts, 3), "value": float(value)})


def connect_client(
    host: str, port: int, client_id: str, v5: bool, timeout_s: float = 10.0
) -> paho.Client:
    """A connected paho client (network loop running) for the demo's own traffic."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    # History goes out in a burst; paho's default of 20 in flight would throttle it.
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise ConnectionError(f"no answer from the MQTT broker at {host}:{port}")
        time.sleep(0.01)
    return client
