"""A simulated site: sensors of several kinds on a few devices, as numbers only (no MQTT).

Everything is drawn up front from one seed, on a time axis relative to the start of the live
part of the demo, so a seed gives the same readings whatever the wall clock says. Signals are
what such sensors show in a building: daily and occupancy cycles, slow weather and drift
(Ornstein-Uhlenbeck processes), measurement noise and quantisation. Sensors report irregularly
(jittered periods), go offline now and then (dropouts), and some readings arrive late. Two
anomalies are injected in the live part: a cooling failure in the server room and a bearing
fault on a production line, so that alert rules have something to find.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HOUR = 3600.0
# Local time of day at the start of the live part: the morning ramp of occupancy is the most
# interesting stretch of a day to forecast.
LIVE_STARTS_AT_HOUR = 7.0
LATE_FRACTION = 0.03
LATE_DELAY_S = (300.0, 1500.0)  # within the demo agent's lateness
DROPOUTS_PER_HOUR = 1 / 12
DROPOUT_S = (20 * 60.0, 90 * 60.0)
_OU_STEP_S = 60.0

Signal = Callable[["_Draw", np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of sensor: how it reports and what it measures."""

    name: str
    unit: str
    period_s: float  # nominal seconds between readings
    decimals: int
    signal: Signal


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A bump added to one stream: ramps up, holds, ramps down; times relative to live start."""

    description: str
    start_s: float
    ramp_s: float
    hold_s: float
    size: float

    @property
    def end_s(self) -> float:
        return self.start_s + 2 * self.ramp_s + self.hold_s

    def offset(self, t: np.ndarray) -> np.ndarray:
        rise = np.clip((t - self.start_s) / self.ramp_s, 0, 1)
        fall = np.clip((self.end_s - t) / self.ramp_s, 0, 1)
        return self.size * _smoothstep(np.minimum(rise, fall))


@dataclass(frozen=True, slots=True)
class SimStream:
    """One sensor's readings: times relative to live start, values, and when each is sent."""

    device: str
    kind: Kind
    t: np.ndarray  # event times, seconds relative to the live start, ascending
    values: np.ndarray
    send_t: np.ndarray  # when the reading is published (later than `t` for late readings)
    anomaly: Anomaly | None

    @property
    def name(self) -> str:
        return f"{self.device}/{self.kind.name}"

    @property
    def late(self) -> int:
        return int(np.count_nonzero(self.send_t > self.t))


class _Draw:
    """A stream's random generator plus the helpers its signal uses."""

    def __init__(self, rng: np.random.Generator, t0: float, t1: float) -> None:
        self.rng = rng
        self._t0, self._t1 = t0, t1

    def ou(self, t: np.ndarray, tau_s: float, sigma: float) -> np.ndarray:
        """An Ornstein-Uhlenbeck process (mean 0, stationary std `sigma`) sampled at `t`."""
        grid = np.arange(self._t0, self._t1 + _OU_STEP_S, _OU_STEP_S)
        phi = np.exp(-_OU_STEP_S / tau_s)
        shocks = self.rng.normal(0.0, sigma * np.sqrt(1 - phi**2), grid.size)
        path = np.empty(grid.size)
        path[0] = self.rng.normal(0.0, sigma)
        for i in range(1, grid.size):
            path[i] = phi * path[i - 1] + shocks[i]
        return np.interp(t, grid, path)

    def noise(self, t: np.ndarray, sigma: float) -> np.ndarray:
        return self.rng.normal(0.0, sigma, t.size)

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3 - 2 * x)


def _hour(t: np.ndarray) -> np.ndarray:
    return (LIVE_STARTS_AT_HOUR + t / HOUR) % 24


def _occupancy(t: np.ndarray, lag_h: float = 0.0) -> np.ndarray:
    """People in the building, 0..1: in from about 7:30, out from about 18:00."""
    h = _hour(t - lag_h * HOUR)
    arrive = 1 / (1 + np.exp(-(h - 7.5) / 0.4))
    leave = 1 / (1 + np.exp((h - 18.0) / 0.5))
    return arrive * leave


def _daily(t: np.ndarray, peak_h: float) -> np.ndarray:
    return np.cos(2 * np.pi * (_hour(t) - peak_h) / 24)


def _indoor_temperature(d: _Draw, t: np.ndarray) -> np.ndarray:
    return (
        d.uniform(20.5, 23.0)
        + 1.6 * _occupancy(t, lag_h=0.5)
        + 0.7 * _daily(t, peak_h=15)
        + d.ou(t, 3 * HOUR, 0.35)
        + d.noise(t, 0.08)
    )


def _outdoor_temperature(d: _Draw, t: np.ndarray) -> np.ndarray:
    return d.uniform(9, 15) + 5.5 * _daily(t, peak_h=15) + d.ou(t, 6 * HOUR, 1.0) + d.noise(t, 0.1)


def _humidity(d: _Draw, t: np.ndarray) -> np.ndarray:
    value = (
        d.uniform(40, 50)
        - 4.0 * _daily(t, peak_h=15)
        + 3.0 * _occupancy(t, lag_h=1)
        + d.ou(t, 4 * HOUR, 1.5)
        + d.noise(t, 0.4)
    )
    return np.clip(value, 5, 95)


def _power(d: _Draw, t: np.ndarray) -> np.ndarray:
    return (
        d.uniform(3, 6)
        + d.uniform(6, 12) * _occupancy(t)
        + d.ou(t, 0.75 * HOUR, 0.6)
        + d.noise(t, 0.3)
    )


def _vibration(d: _Draw, t: np.ndarray) -> np.ndarray:
    h = _hour(t)
    shift = 1 / (1 + np.exp(-(h - 6) / 0.2)) * 1 / (1 + np.exp((h - 22) / 0.2))
    value = 1.0 + d.uniform(1.4, 2.2) * shift + d.ou(t, 0.5 * HOUR, 0.25) + d.noise(t, 0.15)
    return np.maximum(value, 0.05)


def _co2(d: _Draw, t: np.ndarray) -> np.ndarray:
    value = 420 + d.uniform(400, 650) * _occupancy(t, lag_h=1) + d.ou(t, HOUR, 30) + d.noise(t, 12)
    return np.maximum(value, 380)


def _pressure(d: _Draw, t: np.ndarray) -> np.ndarray:
    weather = 5.0 * np.sin(2 * np.pi * t / (3.1 * 24 * HOUR) + d.uniform(0, 2 * np.pi))
    tide = 0.5 * np.cos(4 * np.pi * (_hour(t) - 10) / 24)
    return 1013 + weather + tide + d.ou(t, 6 * HOUR, 0.8) + d.noise(t, 0.05)


KINDS = {
    kind.name: kind
    for kind in (
        Kind("temperature", "°C", 60, 2, _indoor_temperature),
        Kind("humidity", "%RH", 120, 1, _humidity),
        Kind("power", "kW", 60, 2, _power),
        Kind("vibration", "mm/s", 60, 2, _vibration),
        Kind("co2", "ppm", 120, 0, _co2),
        Kind("pressure", "hPa", 300, 2, _pressure),
        Kind("outdoor_temp", "°C", 120, 2, _outdoor_temperature),
    )
}

# The site's sensors in the order `--sensors N` takes them; past the end, more zones follow.
CATALOGUE = (
    ("server-room", "temperature"),
    ("line-1", "vibration"),
    ("hall-a", "temperature"),
    ("hall-a", "co2"),
    ("hall-a", "humidity"),
    ("server-room", "power"),
    ("roof", "outdoor_temp"),
    ("roof", "pressure"),
    ("line-1", "power"),
    ("hall-b", "co2"),
    ("server-room", "humidity"),
    ("line-2", "vibration"),
)
_ZONE_KINDS = ("temperature", "humidity", "co2", "power")


def layout(n_sensors: int) -> list[tuple[str, str]]:
    """(device, kind) of the first `n_sensors` sensors of the site."""
    if n_sensors < 1:
        raise ValueError(f"a site needs at least one sensor, not {n_sensors}")
    sensors = list(CATALOGUE[:n_sensors])
    for i in range(n_sensors - len(sensors)):
        sensors.append((f"zone-{i // len(_ZONE_KINDS) + 1}", _ZONE_KINDS[i % len(_ZONE_KINDS)]))
    return sensors


def anomalies(live_s: float) -> dict[tuple[str, str], Anomaly]:
    """The injected faults, placed in the live part so that each starts, peaks and is over
    while the demo still runs (alerts then have time to clear)."""
    return {
        ("server-room", "temperature"): Anomaly(
            "cooling failure", 0.10 * live_s, 0.08 * live_s, 0.40 * live_s, 13.0
        ),
        ("line-1", "vibration"): Anomaly(
            "bearing fault", 0.25 * live_s, 0.03 * live_s, 0.30 * live_s, 5.5
        ),
    }


def simulate(n_sensors: int, history_s: float, live_s: float, seed: int) -> list[SimStream]:
    """The site's readings from `-history_s` to `live_s` (seconds relative to the live start)."""
    root = np.random.default_rng(seed)
    faults = anomalies(live_s)
    streams = []
    for device, kind_name in layout(n_sensors):
        kind = KINDS[kind_name]
        rng = np.random.default_rng(root.integers(2**63))
        draw = _Draw(rng, -history_s, live_s)
        t = _reading_times(rng, kind.period_s, -history_s, live_s)
        anomaly = faults.get((device, kind_name))
        t = _drop_outages(rng, t, -history_s, live_s, anomaly)
        values = kind.signal(draw, t)
        if anomaly is not None:
            values = values + anomaly.offset(t)
        values = np.round(values, kind.decimals)
        late = rng.random(t.size) < LATE_FRACTION
        send_t = t + np.where(late, rng.uniform(*LATE_DELAY_S, t.size), 0.0)
        streams.append(SimStream(device, kind, t, values, send_t, anomaly))
    return streams


def _reading_times(rng: np.random.Generator, period_s: float, t0: float, t1: float) -> np.ndarray:
    count = int((t1 - t0) / period_s * 1.3) + 2
    steps = period_s * rng.uniform(0.75, 1.25, count)
    t = t0 + rng.uniform(0, period_s) + np.cumsum(steps)
    return t[t <= t1]


def _drop_outages(
    rng: np.random.Generator,
    t: np.ndarray,
    t0: float,
    t1: float,
    anomaly: Anomaly | None,
) -> np.ndarray:
    """`t` without the readings of random outages; never during an anomaly, which is the
    event the demo is there to show."""
    outages = rng.poisson(DROPOUTS_PER_HOUR * (t1 - t0) / HOUR)
    keep = np.ones(t.size, dtype=bool)
    for start in rng.uniform(t0, t1, outages):
        end = start + rng.uniform(*DROPOUT_S)
        if anomaly is not None and start < anomaly.end_s and end > anomaly.start_s:
            continue
        keep &= (t < start) | (t >= end)
    return t[keep]
