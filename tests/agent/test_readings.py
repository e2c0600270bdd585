import pytest
from moecast.agent.ingest.readings import (
    InvalidStream,
    Reading,
    StreamId,
    name_problem,
    parse_topic,
)


def test_reading_is_a_ts_value_pair() -> None:
    ts, value = Reading(1.5, 2.0)
    assert (ts, value) == (1.5, 2.0)


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "...", ".hidden", "x" * 64])
def test_safe_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "a b", "é", "a'--", "a;b", "x" * 65, "a\x00", "+", "#", "a\\b"],
)
def test_unsafe_names(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(InvalidStream):
        StreamId(name, "ok")
    with pytest.raises(InvalidStream):
        StreamId("ok", name)


def test_topic_round_trip() -> None:
    stream = parse_topic("sensors/boiler-1/temp_out.c")
    assert stream == StreamId("boiler-1", "temp_out.c")
    assert str(stream) == "boiler-1/temp_out.c"
    assert stream.topic("sensors") == "sensors/boiler-1/temp_out.c"
    assert {stream: 1}[StreamId("boiler-1", "temp_out.c")] == 1


def test_configurable_prefix_with_several_levels() -> None:
    assert parse_topic("site/7/sensors/dev/t", prefix="site/7/sensors") == StreamId("dev", "t")
    with pytest.raises(InvalidStream) as raised:
        parse_topic("sensors/dev/t", prefix="site/7/sensors")
    assert raised.value.reason == "wrong_prefix"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other/dev/t", "wrong_prefix"),
        ("sensorsX/dev/t", "wrong_prefix"),
        ("sensors", "wrong_prefix"),
        ("sensors/dev", "bad_levels"),
        ("sensors/dev/t/extra", "bad_levels"),
        ("sensors/../t", "bad_device"),
        ("sensors/a b/t", "bad_device"),
        ("sensors/" + "d" * 65 + "/t", "bad_device"),
        ("sensors/dev/", "bad_sensor"),
        ("sensors/dev/.", "bad_sensor"),
        ("sensors/dev/t'; DROP TABLE readings; --", "bad_sensor"),
    ],
)
def test_bad_topics_are_rejected_with_a_reason(topic: str, reason: str) -> None:
    with pytest.raises(InvalidStream) as raised:
        parse_topic(topic)
    assert raised.value.reason == reason


@pytest.mark.parametrize("prefix", ["", "sensors/", "/sensors", "sensors/+", "#", "a//b"])
def test_unusable_prefix(prefix: str) -> None:
    with pytest.raises(InvalidStream) as raised:
        parse_topic("sensors/dev/t", prefix=prefix)
    assert raised.value.reason == "bad_prefix"


def test_cached_failures_raise_fresh_exceptions() -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(InvalidStream) as raised:
            parse_topic("sensors/dev")
        errors.append(raised.value)
    assert errors[0] is not errors[1]
    assert errors[0].reason == errors[1].reason == "bad_levels"
