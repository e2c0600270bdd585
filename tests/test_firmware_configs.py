"""firmware_configs/: every device profile is valid agent settings (`moecast agent --check`)
and says what a device of its class needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from moecast.agent.settings import load_settings

from moecast.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "firmware_configs"
DEVICE_PROFILES = ("raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "x86-gateway")


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("MOECAST_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_profile_passes_agent_check(profile, capsys):
    path = CONFIGS / f"{profile}.yaml"
    assert main(["agent", "--check", "--config", str(path)]) == 0, capsys.readouterr().err
    assert "storage_dir: /var/lib/moecast" in capsys.readouterr().out


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_profile_sizes_the_agent_and_gives_alert_examples(profile):
    settings = load_settings(CONFIGS / f"{profile}.yaml")
    assert 1 <= settings.threads <= 4
    assert settings.limits.streams.max_streams <= 5_000
    assert settings.ingest.queue_size > settings.broker.receive_maximum
    assert any(rule.alerts for rule in settings.streams)
    assert settings.streams[-1].pattern == "*"  # every other stream still gets a grid
    # Production profiles trust no development key; evaluation opts in explicitly.
    assert settings.trust_dev_key is False


def test_smaller_devices_get_smaller_limits():
    limits = {p: load_settings(CONFIGS / f"{p}.yaml").limits.streams for p in DEVICE_PROFILES}
    order = [limits[p].max_streams for p in DEVICE_PROFILES]
    assert order == sorted(order)


# Every YAML file here, examples included (secure-fleet-agent names certificate files that only
# exist on a device, so it is read as YAML, not loaded as settings).
ALL_PROFILES = sorted(path.stem for path in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_no_profile_serves_prometheus_beyond_the_device(profile):
    metrics = yaml.safe_load((CONFIGS / f"{profile}.yaml").read_text()).get("metrics") or {}
    assert metrics.get("prometheus_host", "127.0.0.1") in ("127.0.0.1", "::1", "localhost")


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_profile_serves_prometheus_on_loopback_only(profile):
    settings = load_settings(CONFIGS / f"{profile}.yaml")
    assert settings.metrics.prometheus_host in ("127.0.0.1", "::1", "localhost")
    assert not [w for w in settings.warnings() if "prometheus" in w]


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_a_profile_with_a_remote_broker_uses_tls_and_authenticates(profile):
    settings = load_settings(CONFIGS / f"{profile}.yaml")
    broker = settings.broker
    if broker.host in ("localhost", "127.0.0.1", "::1"):
        return
    assert broker.uses_tls
    assert not broker.tls.insecure
    assert broker.username is not None or broker.tls.cert_file is not None
    assert settings.warnings() == []


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_commented_remote_broker_examples_use_tls_and_name_credentials(profile):
    text = (CONFIGS / f"{profile}.yaml").read_text()
    remote = [line for line in text.splitlines() if "url:" in line and "localhost" not in line]
    assert all("mqtts://" in line for line in remote), remote
    if any(line.lstrip().startswith("# url:") for line in remote):
        assert "username:" in text or "cert_file:" in text
        assert "MOECAST_BROKER__PASSWORD" in text or "cert_file:" in text


def test_prometheus_beyond_loopback_is_warned_about_in_check(capsys, monkeypatch):
    monkeypatch.setenv("MOECAST_METRICS__PROMETHEUS_PORT", "9108")
    monkeypatch.setenv("MOECAST_METRICS__PROMETHEUS_HOST", "0.0.0.0")
    assert main(["agent", "--check"]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if "prometheus_host" in line)
    assert warning.startswith("# WARNING:")
    assert "0.0.0.0" in warning
    monkeypatch.setenv("MOECAST_METRICS__PROMETHEUS_HOST", "127.0.0.1")
    assert main(["agent", "--check"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_a_plain_or_anonymous_remote_broker_is_warned_about():
    plain = load_settings(agent_id="a", broker={"url": "mqtt://broker.example.net"})
    assert any("mqtts://" in w for w in plain.warnings())
    assert any("authentication" in w for w in plain.warnings())
    assert load_settings(agent_id="a").warnings() == []  # the broker on the device itself
