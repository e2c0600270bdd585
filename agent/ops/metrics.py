"""The agent's counters: a JSON snapshot for the metrics topic, and an optional Prometheus
endpoint (prometheus-client is imported only when one is configured).

Counters are updated from the writer and network threads and read from the publishing one, so
one lock guards them; updates are per batch or per rare event, never per reading.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

# (name, help, label names, [(label values, value)]): one Prometheus gauge family.
LabelledGauge = tuple[str, str, list[str], list[tuple[list[str], float]]]

# Upper bounds (seconds) of the store-write latency buckets: a commit without fsync takes well
# under a millisecond, one with fsync on an SD card tens of milliseconds.
STORE_WRITE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A tick over a handful of streams takes milliseconds; a thousand streams on a small device take
# seconds, and a tick near the forecast cadence is the number to watch.
FORECAST_TICK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Counts of observations per bucket, plus their sum; not thread-safe on its own."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last."""
        total = 0
        rows = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            rows.append((bound, total))
        return rows

    @property
    def count(self) -> int:
        return sum(self.counts)


class AgentMetrics:
    """What the agent has received, stored, rejected and acknowledged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.messages = 0
        self.readings_accepted = 0
        self.acked = 0
        self.batches = 0
        self.store_errors = 0
        self.connects = 0
        # Reconnects that found the broker without the session it had: whatever it queued for
        # the agent (acknowledged to the publishers) may be gone.
        self.session_lost = 0
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._registry_dropped: dict[str, int] = {}
        self.store_write = Histogram(STORE_WRITE_BUCKETS_S)
        self.streams_forecast = 0
        self.forecast_skipped: Counter[str] = Counter()
        self.forecast_tick = Histogram(FORECAST_TICK_BUCKETS_S)
        self.forecast_inference = Histogram(FORECAST_TICK_BUCKETS_S)
        self._gauges: dict[str, Callable[[], float]] = {}
        self._sections: dict[str, Callable[[], Any]] = {}
        self._labelled: dict[str, Callable[[], Iterable[LabelledGauge]]] = {}

    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        """A value read when a snapshot is taken, e.g. the ingest queue depth."""
        self._gauges[name] = read

    def add_section(self, name: str, read: Callable[[], Any]) -> None:
        """A JSON value read when a snapshot is taken (left out when it reads None), e.g. the
        aggregated expert load; on the metrics topic only, not in Prometheus."""
        self._sections[name] = read

    def add_labelled_gauges(self, key: str, read: Callable[[], Iterable[LabelledGauge]]) -> None:
        """Gauge families with labels (e.g. per stream), read at each Prometheus scrape; not on
        the metrics topic (a section summarises them there). A second `key` replaces the first."""
        self._labelled[key] = read

    def labelled_gauges(self) -> list[LabelledGauge]:
        return [family for read in self._labelled.values() for family in read()]

    @property
    def gauge_names(self) -> list[str]:
        return list(self._gauges)

    def count_batch(
        self,
        messages: int,
        readings_accepted: int,
        rejected: Mapping[str, int],
        registry_dropped: Mapping[str, int],
    ) -> None:
        """One ingested batch; `registry_dropped` is the stream registry's running total."""
        with self._lock:
            self.batches += 1
            self.messages += messages
            self.readings_accepted += readings_accepted
            self.rejected.update(rejected)
            self._registry_dropped = dict(registry_dropped)

    def count_acked(self, n: int) -> None:
        with self._lock:
            self.acked += n

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += n

    def count_store_error(self) -> None:
        with self._lock:
            self.store_errors += 1

    def count_connect(self) -> None:
        with self._lock:
            self.connects += 1

    def count_session_lost(self) -> None:
        with self._lock:
            self.session_lost += 1

    def observe_store_write(self, seconds: float) -> None:
        with self._lock:
            self.store_write.observe(seconds)

    def observe_forecast_tick(
        self, tick_s: float, inference_s: float, forecast: int, skipped: Mapping[str, int]
    ) -> None:
        """One forecasting tick: its whole latency, the part spent in the model, the streams
        forecast and those skipped, by reason."""
        with self._lock:
            self.forecast_tick.observe(tick_s)
            self.forecast_inference.observe(inference_s)
            self.streams_forecast += forecast
            self.forecast_skipped.update(skipped)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every counter and gauge."""
        gauges = {name: read() for name, read in self._gauges.items()}
        sections = {name: read() for name, read in self._sections.items()}
        with self._lock:
            dropped = Counter(self.dropped)
            dropped.update(self._registry_dropped)
            return {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "messages": self.messages,
                "readings_accepted": self.readings_accepted,
                "acked": self.acked,
                "batches": self.batches,
                "rejected": dict(sorted(self.rejected.items())),
                "dropped": dict(sorted(dropped.items())),
                "store_errors": self.store_errors,
                "connects": self.connects,
                "session_lost": self.session_lost,
                "store_write_s": _histogram_json(self.store_write),
                "streams_forecast": self.streams_forecast,
                "forecast_skipped": dict(sorted(self.forecast_skipped.items())),
                "forecast_tick_s": _histogram_json(self.forecast_tick),
                "forecast_inference_s": _histogram_json(self.forecast_inference),
                **gauges,
                **{name: value for name, value in sections.items() if value is not None},
            }


def _histogram_json(histogram: Histogram) -> dict[str, Any]:
    return {
        "count": histogram.count,
        "sum": round(histogram.sum, 6),
        "buckets": [
            ["+Inf" if bound == float("inf") else bound, count]
            for bound, count in histogram.cumulative()
        ],
    }


def is_loopback_host(host: str) -> bool:
    """Whether `host` is only reachable from the device itself. A name other than localhost
    counts as exposed: what it resolves to is not known here."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prometheus_exposure_warning(host: str) -> str | None:
    """Why serving Prometheus on `host` is risky, or None for a loopback address."""
    if is_loopback_host(host):
        return None
    return (
        f"metrics.prometheus_host is {host!r}: the Prometheus endpoint has no authentication "
        "and is reachable beyond the device; keep 127.0.0.1 and put an authenticating proxy "
        "or tunnel in front of it"
    )


class PrometheusError(RuntimeError):
    """The configured Prometheus endpoint cannot be served (package missing, port taken)."""


class PrometheusEndpoint:
    """Serves `metrics` at http://host:port/metrics until `close`."""

    def __init__(self, metrics: AgentMetrics, port: int, host: str) -> None:
        try:
            from prometheus_client import start_http_server
            from prometheus_client.registry import CollectorRegistry
        except ImportError:
            raise PrometheusError(
                "metrics.prometheus_port is set but prometheus-client is not installed: "
                "pip install prometheus-client (or leave the port unset)"
            ) from None
        warning = prometheus_exposure_warning(host)
        if warning is not None:
            log.warning("%s", warning)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(metrics))  # type: ignore[arg-type]
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            message = f"cannot serve Prometheus metrics on {host}:{port}: {err}"
            raise PrometheusError(message) from None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Collector:
    """Reads a fresh snapshot at every scrape, so nothing is counted twice."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self._metrics.snapshot()
        for name, doc in (
            ("messages", "MQTT messages taken from the ingest queue"),
            ("readings_accepted", "readings stored"),
            ("acked", "QoS 1 messages acknowledged after their readings were stored"),
            ("store_errors", "failed SQLite writes (retried)"),
            ("connects", "successful connections to the broker"),
            ("session_lost", "reconnects to a broker that had lost the agent's session"),
            ("streams_forecast", "stream forecasts published"),
        ):
            yield CounterMetricFamily(f"moecast_agent_{name}", doc, value=snap[name])
        for name, doc in (
            ("rejected", "input rejected, by reason"),
            ("dropped", "readings or messages dropped, by reason"),
            ("forecast_skipped", "streams left out of a forecasting tick, by reason"),
        ):
            family = CounterMetricFamily(f"moecast_agent_{name}", doc, labels=["reason"])
            for reason, count in snap[name].items():
                family.add_metric([reason], count)
            yield family
        lost = snap.get("lost_upstream")
        if lost is not None:
            yield CounterMetricFamily(
                "moecast_agent_lost_upstream",
                "readings that never arrived, from gaps in their sequence numbers",
                value=lost["total"],
            )
        for name in self._metrics.gauge_names:
            yield GaugeMetricFamily(f"moecast_agent_{name}", name, value=snap[name])
        for name, doc, labels, samples in self._metrics.labelled_gauges():
            family = GaugeMetricFamily(f"moecast_agent_{name}", doc, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family
        for name, doc in (
            ("store_write", "time to write and commit one batch"),
            ("forecast_tick", "time of one forecasting tick, publishing included"),
            ("forecast_inference", "time one forecasting tick spends running the model"),
        ):
            latency = snap[f"{name}_s"]
            yield HistogramMetricFamily(
                f"moecast_agent_{name}_seconds",
                doc,
                buckets=[(str(bound), count) for bound, count in latency["buckets"]],
                sum_value=latency["sum"],
            )
