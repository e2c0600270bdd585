"""`--check` reads a local mosquitto's config (broker.config_file) and warns where its queue
and persistence limits can lose readings the broker has acknowledged; the shipped one is safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from moecast.agent.ops.broker_config import (
    BrokerConfigError,
    MosquittoLimits,
    broker_config_warnings,
    read_mosquitto,
)
from moecast.agent.updates.settings import UpdateSettings

from moecast.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "firmware_configs" / "mosquitto.conf"
MAX_MESSAGE_BYTES = UpdateSettings().max_message_bytes


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MOECAST_")]:
        monkeypatch.delenv(name)


def _conf(tmp_path: Path, text: str, name: str = "mosquitto.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_config_is_safe_and_fits_the_agents_fleet_messages() -> None:
    limits = read_mosquitto(SHIPPED)
    assert limits.persistence
    assert 0 < limits.autosave_interval <= 60
    assert limits.max_queued_messages >= 100_000
    assert limits.max_queued_bytes > 0
    assert limits.max_packet_size is not None
    assert MAX_MESSAGE_BYTES < limits.max_packet_size <= 2 * MAX_MESSAGE_BYTES
    assert broker_config_warnings(SHIPPED, MAX_MESSAGE_BYTES) == []


def test_mosquittos_defaults_are_warned_about(tmp_path: Path) -> None:
    path = _conf(tmp_path, "listener 1883\n# max_queued_messages 1000000\n")
    assert read_mosquitto(path) == MosquittoLimits()
    warnings = broker_config_warnings(path, MAX_MESSAGE_BYTES)
    assert len(warnings) == 2
    assert "max_queued_messages 1000 (mosquitto's default)" in warnings[0]
    assert "persistence is off" in warnings[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("autosave_interval 1800\n", "autosave_interval 1800 s"),
        ("persistence true\nautosave_interval 0\n", "autosave_interval 0"),
        ("max_queued_messages 0\n", "unbounded"),
        ("max_packet_size 1048576\n", "max_packet_size 1048576 is below"),
    ],
)
def test_each_unsafe_setting_is_named(tmp_path: Path, text: str, expected: str) -> None:
    path = _conf(tmp_path, "max_queued_messages 500000\npersistence true\nautosave_interval 5\n")
    path.write_text(path.read_text() + text)  # the last occurrence wins, as in mosquitto
    warnings = broker_config_warnings(path, MAX_MESSAGE_BYTES)
    assert len(warnings) == 1, warnings
    assert expected in warnings[0]


def test_include_dir_files_are_read_in_order(tmp_path: Path) -> None:
    included = tmp_path / "conf.d"
    included.mkdir()
    _conf(included, "max_queued_messages 200000\n", "a.conf")
    _conf(included, "persistence true\nautosave_interval 10\n", "b.conf")
    _conf(included, "max_queued_messages 7\n", "ignored.txt")
    path = _conf(tmp_path, f"max_queued_messages 1000\ninclude_dir {included}\n")
    limits = read_mosquitto(path)
    assert (limits.max_queued_messages, limits.persistence, limits.autosave_interval) == (
        200_000,
        True,
        10,
    )


def test_an_unreadable_or_invalid_file_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (missing,) = broker_config_warnings(tmp_path / "absent.conf", MAX_MESSAGE_BYTES)
    assert "cannot read" in missing
    assert "unchecked" in missing
    path = _conf(tmp_path, "max_queued_messages lots\n")
    with pytest.raises(BrokerConfigError, match=":1: max_queued_messages"):
        read_mosquitto(path)
    assert broker_config_warnings(None, MAX_MESSAGE_BYTES) == []


def test_check_prints_the_brokers_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOECAST_BROKER__CONFIG_FILE", str(_conf(tmp_path, "persistence false\n")))
    assert main(["agent", "--check"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err
    assert "max_queued_messages 1000" in err
    assert "persistence is off" in err
    monkeypatch.setenv("MOECAST_BROKER__CONFIG_FILE", str(SHIPPED))
    assert main(["agent", "--check"]) == 0
    # The shipped broker configuration draws no warning about it (the check's others, such as
    # "nothing will be forecast" without a bundle, are not about the broker).
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if str(SHIPPED) in line] == []
    assert "max_queued_messages" not in err
