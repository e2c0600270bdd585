"""firmware_configs/: every device profile is valid agent settings (`moecast agent --check`)
and says what a device of its class needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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
