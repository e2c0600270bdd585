import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moecast.agent.ingest.payloads import ParseResult, PayloadLimits, parse_payload
from moecast.agent.ingest.readings import Reading, StreamId

NOW = 1_700_000_000.0
LIMITS = PayloadLimits()


def parse(document: object, limits: PayloadLimits = LIMITS) -> ParseResult:
    return parse_payload(json.dumps(document).encode(), NOW, limits)


def only_reason(result: ParseResult) -> str:
    assert not result.readings
    assert not result.named
    assert len(result.rejected) == 1
    return next(iter(result.rejected))


# --- formats ---------------------------------------------------------------------------------


def test_single_object() -> None:
    result = parse({"ts": NOW - 5, "value": 21.5})
    assert result.readings == [Reading(NOW - 5, 21.5)]
    assert not result.rejected
    assert result.accepted == 1


def test_integer_values_and_times_become_floats() -> None:
    (reading,) = parse({"ts": int(NOW), "value": 3}).readings
    assert type(reading.ts) is float
    assert type(reading.value) is float


def test_missing_ts_means_arrival_time() -> None:
    assert parse({"value": 1}).readings == [Reading(NOW, 1.0)]


def test_list_of_objects_keeps_order() -> None:
    result = parse([{"ts": NOW - 1, "value": 2}, {"ts": NOW - 3, "value": 1}])
    assert result.readings == [Reading(NOW - 1, 2.0), Reading(NOW - 3, 1.0)]


@pytest.mark.parametrize("payload", [b"21.5", b" 21.5\n", b'"21.5"', b"2e1"])
def test_bare_number_is_stamped_with_arrival(payload: bytes) -> None:
    (reading,) = parse_payload(payload, NOW, LIMITS).readings
    assert reading.ts == NOW
    assert reading.value == float(payload.strip(b' "\n'))


def test_numeric_string_value_is_accepted() -> None:
    assert parse({"ts": NOW, "value": "-4.25"}).readings == [Reading(NOW, -4.25)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20+00:00", NOW),
        ("2023-11-15T00:13:20+02:00", NOW),
        ("2023-11-14T22:13:19.250Z", NOW - 0.75),
        ("2023-11-14T22:13:20", NOW),  # naive means UTC
        ("2023-11-14 22:13:20", NOW),
    ],
)
def test_iso_8601_timestamps(text: str, expected: float) -> None:
    (reading,) = parse({"ts": text, "value": 1}).readings
    assert reading.ts == pytest.approx(expected, abs=1e-6)


def test_millisecond_timestamps_are_converted() -> None:
    (reading,) = parse({"ts": int(NOW * 1000) - 1_500, "value": 1}).readings
    assert reading.ts == pytest.approx(NOW - 1.5)


def test_senml_pack_with_base_values() -> None:
    pack = [
        {"bn": "", "bt": NOW - 60, "bv": 100.0, "bu": "Cel", "n": "", "v": 1, "t": 0},
        {"v": 2, "t": 10},
        {"n": "humidity", "v": 0.5, "u": "%RH", "t": 20},
    ]
    result = parse(pack)
    assert not result.rejected
    assert result.readings == [Reading(NOW - 60, 101.0), Reading(NOW - 50, 102.0)]
    assert result.named == {"humidity": [Reading(NOW - 40, 100.5)]}


def test_senml_base_name_is_prefixed_to_names() -> None:
    result = parse([{"bn": "room1.", "bt": NOW, "n": "temp", "v": 20}, {"n": "co2", "v": 400}])
    assert result.named == {
        "room1.temp": [Reading(NOW, 20.0)],
        "room1.co2": [Reading(NOW, 400.0)],
    }


def test_senml_times_below_2_pow_28_are_relative_to_arrival() -> None:
    result = parse([{"v": 1}, {"t": -30, "v": 2}, {"bt": -60, "t": 5, "v": 3}])
    assert result.readings == [
        Reading(NOW, 1.0),
        Reading(NOW - 30, 2.0),
        Reading(NOW - 55, 3.0),
    ]


def test_senml_absolute_milliseconds_are_converted() -> None:
    (reading,) = parse([{"bt": NOW * 1000, "t": -2000, "v": 1}]).readings
    assert reading.ts == pytest.approx(NOW - 2)


def test_senml_base_only_records_set_state_without_rejections() -> None:
    result = parse([{"bn": "dev.", "bt": NOW - 5}, {"n": "a", "v": 1}])
    assert result.named == {"dev.a": [Reading(NOW - 5, 1.0)]}
    assert not result.rejected


def test_single_senml_record_object() -> None:
    assert parse({"n": "temp", "v": 20.5}).named == {"temp": [Reading(NOW, 20.5)]}


def test_invalid_base_time_rejects_records_until_reset() -> None:
    result = parse(
        [{"bt": "yesterday", "v": 1}, {"v": 2}, {"bt": NOW - 1, "v": 3}, {"t": 1, "v": 4}]
    )
    assert result.readings == [Reading(NOW - 1, 3.0), Reading(NOW, 4.0)]
    assert result.rejected == {"bad_timestamp": 2}


def test_by_stream_maps_names_to_the_topic_device() -> None:
    result = parse([{"n": "", "v": 1}, {"n": "temp", "t": -1, "v": 2}, {"n": "hum", "v": 3}])
    topic_stream = StreamId("gw1", "temp")
    assert result.by_stream(topic_stream) == {
        topic_stream: [Reading(NOW, 1.0), Reading(NOW - 1, 2.0)],
        StreamId("gw1", "hum"): [Reading(NOW, 3.0)],
    }


# --- rejections ------------------------------------------------------------------------------


def test_too_large() -> None:
    payload = json.dumps({"ts": NOW, "value": 1}).encode()
    limits = PayloadLimits(max_bytes=len(payload) - 1)
    assert only_reason(parse_payload(payload, NOW, limits)) == "too_large"
    assert parse_payload(payload, NOW, PayloadLimits(max_bytes=len(payload))).readings


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"nan", b"\xff\xfe\xfa", b"[" * 100_000, b"1" * 5000, b"{'a': 1}"]
)
def test_not_json(payload: bytes) -> None:
    assert only_reason(parse_payload(payload, NOW, LIMITS)) == "not_json"


def test_too_many_readings_takes_nothing() -> None:
    limits = PayloadLimits(max_readings=3)
    assert parse([{"value": i} for i in range(3)], limits).accepted == 3
    assert only_reason(parse([{"value": i} for i in range(4)], limits)) == "too_many_readings"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([5], "bad_shape"),
        ([[NOW, 1]], "bad_shape"),
        ({"ts": NOW}, "bad_shape"),
        ({"temperature": 20}, "bad_shape"),
        ([{"n": "temp", "t": 0}], "bad_shape"),
        (True, "not_number"),
        (None, "not_number"),
        ("warm", "not_number"),
        ({"ts": NOW, "value": False}, "not_number"),
        ({"ts": NOW, "value": None}, "not_number"),
        ({"ts": NOW, "value": [1]}, "not_number"),
        ([{"n": "door", "vb": True}], "not_number"),
        ([{"n": "label", "vs": "12"}], "not_number"),
        ([{"bv": "x"}, {"v": 1}], "not_number"),
        ({"ts": NOW, "value": "NaN"}, "non_finite"),
        ({"ts": NOW, "value": "-inf"}, "non_finite"),
        ("Infinity", "non_finite"),
        ({"ts": NOW, "value": 1e16}, "out_of_range"),
        ({"ts": NOW, "value": 10**400}, "out_of_range"),
        ([{"bv": 1e308, "v": 1e308}], "out_of_range"),
        ({"ts": "yesterday", "value": 1}, "bad_timestamp"),
        ({"ts": "2023-13-01T00:00:00", "value": 1}, "bad_timestamp"),
        ({"ts": True, "value": 1}, "bad_timestamp"),
        ({"ts": None, "value": 1}, "bad_timestamp"),
        ({"ts": 10**400, "value": 1}, "bad_timestamp"),
        ([{"t": "5", "v": 1}], "bad_timestamp"),
        ({"ts": NOW + 301, "value": 1}, "too_far_future"),
        ({"ts": "2100-01-01T00:00:00Z", "value": 1}, "too_far_future"),
        ({"ts": NOW - 7 * 86_400 - 1, "value": 1}, "too_old"),
        ({"ts": 0, "value": 1}, "too_old"),
        ({"ts": "0001-01-01T00:00:00+01:00", "value": 1}, "too_old"),
        ([{"n": "a/b", "v": 1}], "bad_name"),
        ([{"n": 7, "v": 1}], "bad_name"),
        ([{"bn": 7}, {"v": 1}], "bad_name"),
        ([{"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "v": 1}], "bad_name"),
        ([{"n": "x" * 65, "v": 1}], "bad_name"),
    ],
)
def test_rejection_reasons(document: object, reason: str) -> None:
    assert only_reason(parse(document)) == reason


@pytest.mark.parametrize(("literal", "reason"), [(b"NaN", "non_finite"), (b"1e999", "non_finite")])
def test_non_finite_json_literals(literal: bytes, reason: str) -> None:
    payload = b'[{"ts": %d, "value": %s}]' % (NOW, literal)
    assert only_reason(parse_payload(payload, NOW, LIMITS)) == reason
    assert only_reason(parse_payload(literal, NOW, LIMITS)) == reason


def test_time_window_bounds_are_inclusive() -> None:
    limits = PayloadLimits(max_future_s=10, max_age_s=100)
    result = parse([{"ts": NOW + 10, "value": 1}, {"ts": NOW - 100, "value": 2}], limits)
    assert len(result.readings) == 2
    result = parse([{"ts": NOW + 10.5, "value": 1}, {"ts": NOW - 100.5, "value": 2}], limits)
    assert result.rejected == {"too_far_future": 1, "too_old": 1}


def test_one_bad_reading_does_not_discard_the_good_ones() -> None:
    result = parse(
        [
            {"ts": NOW - 2, "value": 1},
            {"ts": NOW - 1, "value": "NaN"},
            {"ts": NOW - 1, "value": True},
            "junk",
            {"ts": NOW, "value": 3},
        ]
    )
    assert result.readings == [Reading(NOW - 2, 1.0), Reading(NOW, 3.0)]
    assert result.rejected == {"non_finite": 1, "not_number": 1, "bad_shape": 1}


# --- never raises, never yields junk ---------------------------------------------------------

FUZZ_LIMITS = PayloadLimits(max_bytes=4096, max_readings=50)


def assert_sane(result: ParseResult) -> None:
    streams = [result.readings, *result.named.values()]
    for readings in streams:
        for ts, value in readings:
            assert type(ts) is float
            assert type(value) is float
            assert math.isfinite(value)
            assert abs(value) <= FUZZ_LIMITS.max_abs_value
            assert NOW - FUZZ_LIMITS.max_age_s <= ts <= NOW + FUZZ_LIMITS.max_future_s
    assert all(name for name in result.named)
    assert all(count > 0 for count in result.rejected.values())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    assert_sane(parse_payload(payload, NOW, FUZZ_LIMITS))


KEYS = st.sampled_from(
    ["ts", "value", "bn", "bt", "bv", "bu", "n", "t", "v", "u", "vs", "vb", "s", "x"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=NOW - 1e6, max_value=NOW + 1e3),
    st.floats(min_value=-1e3, max_value=1e3),
    st.text(max_size=20),
    st.sampled_from(["NaN", "inf", "2023-11-14T22:13:20Z", "1e5", "2023-11-14T22:13:20"]),
)
# Shapes close to real payloads reach the deep paths; arbitrary nesting covers the rest.
RECORD_LISTS = st.lists(st.dictionaries(KEYS, SCALARS, max_size=5), max_size=10)
DOCUMENTS = RECORD_LISTS | st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=8) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS)
def test_arbitrary_json_never_raises(document: object) -> None:
    payload = json.dumps(document, allow_nan=True).encode()
    assert_sane(parse_payload(payload, NOW, FUZZ_LIMITS))
