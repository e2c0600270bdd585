"""Settings: precedence of kwargs, environment, YAML file and defaults; clear errors; --check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from moecast.agent.ingest.readings import StreamId
from moecast.agent.settings import SettingsFileError, describe_settings_error, load_settings
from pydantic import ValidationError

from moecast.cli import main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOECAST_"):
            monkeypatch.delenv(name)


def write_yaml(path: Path, document: object) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_defaults() -> None:
    settings = load_settings(agent_id="dev1")
    assert settings.broker.host == "localhost"
    assert settings.broker.port == 1883
    assert settings.broker.protocol == "5"
    assert settings.client_id == "moecast-dev1"
    assert settings.status_topic == "moecast/agents/dev1/status"
    assert settings.metrics_topic == "moecast/agents/dev1/metrics"
    assert settings.topics.subscribe_qos == 1
    assert settings.broker.tls.insecure is False
    assert settings.limits.streams.max_streams == 2_000  # StreamLimits' own default
    assert settings.bundle_path is None
    assert settings.trusted_keys == []
    assert settings.metrics.prometheus_port is None


def test_the_default_agent_id_is_the_host_name_made_safe() -> None:
    first, second = load_settings(), load_settings()
    assert first.agent_id == second.agent_id
    assert StreamId(first.agent_id, "x")  # a safe topic level


def test_precedence_kwargs_over_environment_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent_id": "from-file",
            "broker": {"url": "mqtt://file-host:1884", "keepalive_s": 11, "username": "file"},
            "limits": {"streams": {"max_streams": 10, "max_points": 100}},
            "forecast": {"cadence_s": 30},
        },
    )
    monkeypatch.setenv("MOECAST_BROKER__URL", "mqtts://env-host")
    monkeypatch.setenv("MOECAST_LIMITS__STREAMS__MAX_STREAMS", "20")
    monkeypatch.setenv("MOECAST_FORECAST__CADENCE_S", "15")
    settings = load_settings(config, forecast={"cadence_s": 5}, agent_id="from-kwargs")
    assert settings.agent_id == "from-kwargs"  # kwargs > file
    assert settings.forecast.cadence_s == 5  # kwargs > env > file
    assert settings.broker.url == "mqtts://env-host"  # env > file
    assert settings.broker.port == 8883
    assert settings.broker.keepalive_s == 11  # file > default, merged with env's broker keys
    assert settings.broker.username == "file"
    assert settings.limits.streams.max_streams == 20  # env > file, deep in the tree
    assert settings.limits.streams.max_points == 100  # file, beside an env value
    assert settings.limits.streams.lateness_s == 300  # default
    assert settings.client_id == "moecast-from-kwargs"


def test_lists_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MOECAST_STREAMS",
        '[{"pattern": "site1/temp*", "interval_s": 60}, {"pattern": "*", "context_points": 64}]',
    )
    settings = load_settings(agent_id="a")
    assert settings.rule_for(StreamId("site1", "temp_2")).interval_s == 60  # type: ignore[union-attr]
    assert settings.rule_for(StreamId("site2", "temp")).context_points == 64  # type: ignore[union-attr]


def test_stream_rules_first_match_wins_and_carry_alert_rules() -> None:
    settings = load_settings(
        agent_id="a",
        streams=[
            {
                "pattern": "boiler/*",
                "alerts": [{"name": "hot", "above": 90, "within_steps": 8, "probability": 0.8}],
            },
            {"pattern": "*/temp", "interval_s": 30},
        ],
    )
    boiler = settings.rule_for(StreamId("boiler", "temp"))
    assert boiler is not None
    assert boiler.interval_s == "auto"
    assert boiler.alerts[0].threshold == 90
    assert boiler.alerts[0].direction == "above"
    other = settings.rule_for(StreamId("kitchen", "temp"))
    assert other is not None
    assert other.interval_s == 30
    assert settings.rule_for(StreamId("kitchen", "humidity")) is None


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"broker": {"url": "http://x"}}, "broker.url", "mqtt:// or mqtts://"),
        ({"broker": {"url": "mqtt://u:p@host"}}, "broker.url", "broker.username"),
        ({"broker": {"url": "mqtt://host:99999"}}, "broker.url", "bad port"),
        ({"broker": {"protocol": "4"}}, "broker.protocol", "'5' or '3.1.1'"),
        ({"broker": {"password": "s3cret"}}, "broker", "needs a username"),
        ({"broker": {"tls": {"insecure": True}}}, "broker", "mqtts://"),
        ({"topics": {"sensors": "sensors/#"}}, "topics.sensors", "without wildcards"),
        ({"topics": {"subscribe_qos": 2}}, "topics.subscribe_qos", "less than or equal to 1"),
        ({"agent_id": "a/b"}, "agent_id", "[A-Za-z0-9_.-]"),
        ({"streams": [{"pattern": "*", "interval_s": "soon"}]}, "streams[0].interval_s", "'auto'"),
        ({"limits": {"streams": {"max_streams": 0}}}, "limits.streams.max_streams", "greater"),
        ({"limits": {"payload": {"max_bytez": 1}}}, "limits.payload.max_bytez", "unknown setting"),
        ({"trusted_keys": ["/no/such/key.pub"]}, "trusted_keys[0]", "not point to a file"),
        ({"bundle_path": "/no/such/bundle"}, "bundle_path", "does not exist"),
        ({"ingest": {"queue_size": 10}}, "", "must exceed broker.receive_maximum"),
        (
            {"streams": [{"pattern": "*", "alerts": [{"name": "x", "within_steps": 1}]}]},
            "streams[0].alerts[0].probability",
            "Field required",
        ),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict, field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as raised:
        load_settings(**{"agent_id": "a", **overrides})
    lines = describe_settings_error(raised.value)
    assert any(line.startswith(f"{field}: " if field else "") and reason in line for line in lines)


def test_protocol_311_and_a_numeric_5_are_accepted() -> None:
    assert load_settings(agent_id="a", broker={"protocol": "3.1.1"}).broker.protocol == "3.1.1"
    assert load_settings(agent_id="a", broker={"protocol": 5}).broker.protocol == "5"


def test_unreadable_or_malformed_files_are_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("broker: [unclosed\n")
    with pytest.raises(SettingsFileError, match="not valid YAML at line 2"):
        load_settings(broken)
    with pytest.raises(SettingsFileError, match="mapping of settings, not a list"):
        load_settings(write_yaml(tmp_path / "list.yaml", [1, 2]))


def test_check_prints_effective_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_yaml(
        tmp_path / "agent.yaml",
        {"agent_id": "edge7", "broker": {"username": "bob", "password": "hunter2"}},
    )
    monkeypatch.setenv("MOECAST_BROKER__KEEPALIVE_S", "45")
    assert main(["agent", "--check", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed
    effective = yaml.safe_load(printed)
    assert effective["broker"]["password"] == "**********"
    assert effective["broker"]["keepalive_s"] == 45
    assert effective["broker"]["client_id"] == "moecast-edge7"
    assert effective["limits"]["store"]["retention_points"] == 20_000
    assert str(load_settings(config).broker.password) == "**********"


def test_check_of_an_invalid_file_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_yaml(tmp_path / "agent.yaml", {"broker": {"keepalive_s": "soon"}})
    assert main(["agent", "--check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "broker.keepalive_s: Input should be a valid integer" in err
    assert "'soon'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 2


def test_a_bad_environment_value_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOECAST_STREAMS", "not json")
    assert main(["agent", "--check"]) == 2
    assert 'field "streams"' in capsys.readouterr().err
    monkeypatch.setenv("MOECAST_STREAMS", "[]")
    monkeypatch.setenv("MOECAST_TOPICS__SUBSCRIBE_QOS", "7")
    assert main(["agent", "--check"]) == 2
    assert "topics.subscribe_qos:" in capsys.readouterr().err


def test_a_missing_file_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "--check", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://u:S3cr3t@h:1",
        "http://u:S3cr3t@h:1",  # fails on the scheme, before the credentials check
        "mqtt://u:S3cr3t@h:99999",
        "mqtt://u:S3cr3t@h:1/path",
        "mqtt://:S3cr3t@h",
        "mqtts://u:S3cr3t@",
    ],
)
def test_check_never_prints_a_password_given_in_the_broker_url(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOECAST_BROKER__URL", url)
    assert main(["agent", "--check"]) == 2
    captured = capsys.readouterr()
    assert "S3cr3t" not in captured.err + captured.out
    assert "broker.url:" in captured.err


def test_describing_a_url_error_keeps_the_rest_of_the_url_visible() -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(broker={"url": "http://bob:S3cr3t@broker.example:1"})
    (line,) = describe_settings_error(caught.value)
    assert "S3cr3t" not in line
    assert "http://***@broker.example:1" in line


# --check says what the agent will do, and a misspelt key gets the closest setting.


def test_a_misspelt_key_suggests_the_closest_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_yaml(
        tmp_path / "agent.yaml",
        {
            "forecast": {"cadense_s": 30},
            "limits": {"payload": {"max_age": 86_400}},
            "streams": [{"pattern": "*", "intervall_s": 60}],
        },
    )
    assert main(["agent", "--check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "forecast.cadense_s: unknown setting; did you mean 'cadence_s'?" in err
    assert "limits.payload.max_age: unknown setting; did you mean 'max_age_s'?" in err
    assert "streams[0].intervall_s: unknown setting; did you mean 'interval_s'?" in err
    with pytest.raises(ValidationError) as caught:
        load_settings(None, zzz=1)
    assert describe_settings_error(caught.value) == ["zzz: unknown setting"]


def test_check_warns_when_nothing_will_be_forecast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = [{"pattern": "*/level", "min": 0, "alerts": [ALERT]}]
    config = write_yaml(tmp_path / "agent.yaml", {"streams": rules})
    assert main(["agent", "--check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "ingest only, forecast nothing" in err
    assert "warning: nothing will be forecast" in err
    assert "trust_dev_key: true" in err
    assert "streams matching '*/level': interval detected, forecasts clipped to [0, inf]" in err
    assert "alert 'high' when P(above 3 within 4 steps) >= 0.7" in err
    assert "limits.payload.max_age_s" in err


def test_check_names_the_bundle_it_will_forecast_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_yaml(tmp_path / "agent.yaml", {"trust_dev_key": True})
    assert main(["agent", "--check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "forecast every 60 s with" in err
    assert "(signature verified)" in err
    assert "nothing will be forecast" not in err
    assert "full payloads, on change" in err
    # A bundle that fails verification exits 2, as the agent would.
    config = write_yaml(
        tmp_path / "bad.yaml", {"bundle_path": str(tmp_path), "trust_dev_key": True}
    )
    assert main(["agent", "--check", "--config", str(config)]) == 2
    assert "error: bundle rejected" in capsys.readouterr().err


ALERT = {"name": "high", "above": 3, "within_steps": 4, "probability": 0.7}
