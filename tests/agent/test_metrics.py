"""Counters, the JSON snapshot and the optional Prometheus endpoint."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
from moecast.agent.ops.metrics import AgentMetrics, Histogram, PrometheusEndpoint, PrometheusError
from moecast.agent.runtime import Agent

from tests.agent.conftest import Broker, agent_settings, free_port, wait_for


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 0.5):
        histogram.observe(seconds)
    assert histogram.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(0.5065)


def test_snapshot_merges_counters_and_gauges_and_is_json() -> None:
    metrics = AgentMetrics()
    depth = [3]
    metrics.add_gauge("queue_depth", lambda: depth[0])
    metrics.count_batch(5, 12, {"not_json": 1}, {"too_late": 2})
    metrics.count_batch(1, 1, {"not_json": 1, "too_old": 3}, {"too_late": 2, "stream_limit": 4})
    metrics.count_dropped("queue_full", 7)
    metrics.count_acked(6)
    metrics.observe_store_write(0.0007)
    depth[0] = 9
    snapshot = json.loads(json.dumps(metrics.snapshot()))
    assert snapshot["messages"] == 6
    assert snapshot["readings_accepted"] == 13
    assert snapshot["batches"] == 2
    assert snapshot["acked"] == 6
    assert snapshot["rejected"] == {"not_json": 2, "too_old": 3}
    # the registry's drops are a running total: the latest one counts, once
    assert snapshot["dropped"] == {"queue_full": 7, "stream_limit": 4, "too_late": 2}
    assert snapshot["queue_depth"] == 9
    assert snapshot["store_write_s"]["count"] == 1
    assert snapshot["store_write_s"]["buckets"][:2] == [[0.0005, 0], [0.001, 1]]
    assert snapshot["store_write_s"]["buckets"][-1] == ["+Inf", 1]


def test_prometheus_endpoint_serves_the_counters() -> None:
    pytest.importorskip("prometheus_client", reason="prometheus-client is optional")
    metrics = AgentMetrics()
    metrics.add_gauge("queue_depth", lambda: 2)
    metrics.count_batch(3, 4, {"not_json": 1}, {"too_late": 5})
    metrics.observe_store_write(0.003)
    endpoint = PrometheusEndpoint(metrics, free_port(), "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        endpoint.close()
    assert "moecast_agent_messages_total 3.0" in text
    assert 'moecast_agent_rejected_total{reason="not_json"} 1.0' in text
    assert 'moecast_agent_dropped_total{reason="too_late"} 5.0' in text
    assert "moecast_agent_queue_depth 2.0" in text
    assert 'moecast_agent_store_write_seconds_bucket{le="0.005"} 1.0' in text
    assert "moecast_agent_store_write_seconds_count 1.0" in text


def test_prometheus_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(PrometheusError, match="pip install prometheus-client"):
        PrometheusEndpoint(AgentMetrics(), free_port(), "127.0.0.1")


def test_the_agent_refuses_to_start_when_its_prometheus_port_is_taken(
    broker: Broker, tmp_path: Path
) -> None:
    pytest.importorskip("prometheus_client", reason="prometheus-client is optional")
    port = free_port()
    settings = agent_settings(broker, tmp_path / "agent", metrics={"prometheus_port": port})
    first = Agent(settings)
    first.start()
    try:
        wait_for(first.link.connected.is_set)
        second = Agent(
            agent_settings(broker, tmp_path / "other", metrics={"prometheus_port": port})
        )
        with pytest.raises(PrometheusError, match=f"127.0.0.1:{port}"):
            second.start()
        second.stop()
    finally:
        first.stop()


def test_prometheus_beyond_loopback_is_warned_about_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        caplog.clear()
        endpoint = PrometheusEndpoint(AgentMetrics(), free_port(), host)
        endpoint.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings) is warned, warnings
        assert all("no authentication" in w and repr(host) in w for w in warnings)
