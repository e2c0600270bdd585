"""Turn one MQTT payload into readings, never raising, whatever the bytes.

Accepted formats, all JSON:

- an object `{"ts": <time>, "value": <number>}`; a missing `ts` means the arrival time;
- a list of such objects;
- a SenML pack (RFC 8428 JSON): a list of records with `bn`, `bt`, `bv`, `n`, `t`, `v`, `u`;
  a single SenML record object is taken as a pack of one;
- a bare number, timestamped with the arrival time.

A reading object may carry a sequence number, `{"ts": ..., "value": ..., "seq": 17}`, from which
the agent counts readings lost upstream (agent.ingest.sequence); it is collected in
`ParseResult.seqs`, and one that is not a non-negative integer is ignored.

Each list element is read on its own: one with a `value` or `ts` key is a reading object,
anything else with SenML keys a SenML record (base fields carry over SenML records only).

Times are unix seconds, or ISO 8601 strings. Numbers above 1e11 are unix *milliseconds* (1e11 s
is the year 5138, so nothing plausible is lost) and are divided by 1000; this holds for SenML
times too, although RFC 8428 says seconds, because some firmwares send milliseconds anyway.
ISO 8601 strings without a zone are UTC (edge devices rarely know their zone; local time would
make the agent's zone part of the data). SenML times below 2**28 are relative to the arrival
time, as RFC 8428 prescribes.

Values are JSON numbers; numeric strings such as "21.5" are accepted because some firmwares
quote numbers. Booleans, null, NaN, infinities (JSON `NaN`/`Infinity`, "NaN" strings, numbers
that overflow) and magnitudes above `max_abs_value` are rejected per reading: one bad reading
never discards the good ones beside it.

SenML names: a record's resolved name (`bn` + `n`) selects the sensor *on the topic's device*.
An empty name belongs to the topic's own stream (`ParseResult.readings`); any other name that is
a safe sensor name goes to `ParseResult.named[name]`, which `ParseResult.by_stream` maps to the
sibling stream `<device>/<name>` (the topic's own stream when the name equals its sensor). A
gateway can thus publish one pack for all sensors of a device, while a publisher still only ever
writes streams under the device of the topic it is allowed to publish on (broker ACLs are per
topic). Names that are not safe sensor names (e.g. RFC 8428's `urn:dev:...` base names) are
rejected as "bad_name": map them on the gateway.

Rejection reasons, counted in `ParseResult.rejected`. Whole message (count 1): "too_large",
"not_json", "too_many_readings" (more list elements than `max_readings`: nothing is taken, so a
publisher meets the limit instead of a silent truncation). Per reading: "bad_shape" (a list
element that is neither a reading nor a SenML record; a reading or SenML record with a time or
name but no value), "not_number", "non_finite", "out_of_range", "bad_timestamp",
"too_far_future", "too_old", "bad_name".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import orjson
from moecast.agent.ingest.readings import Reading, StreamId, name_problem
from pydantic import BaseModel, ConfigDict, Field

MILLISECONDS_ABOVE = 1e11
SENML_RELATIVE_BELOW = 2.0**28
MAX_SEQ = 2**63

_SENML_BASE_FIELDS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver"})
_SENML_NON_NUMERIC_VALUES = ("vs", "vb", "vd", "s")
_SENML_FIELDS = _SENML_BASE_FIELDS | {"n", "u", "v", "t", "ut", *_SENML_NON_NUMERIC_VALUES}
_FLOATS = {float}
# Reading(ts, value) runs NamedTuple's Python-level __new__; this builds the same object in C
# from a (ts, value) tuple, a few hundred ns less per reading.
_reading = partial(tuple.__new__, Reading)


class Counts(dict[str, int]):
    """Counts by reason: a missing one is 0, as in a Counter, without Counter's Python-level
    constructor (several µs, once per payload)."""

    __slots__ = ()

    def __missing__(self, key: str) -> int:
        return 0


class PayloadLimits(BaseModel):
    """Bounds on one payload; a settings module fills these from configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=1 << 20, gt=0)  # larger payloads are rejected unparsed
    max_readings: int = Field(default=10_000, gt=0)  # per payload (a list or SenML pack)
    max_future_s: float = Field(default=300.0, ge=0)  # tolerated clock skew ahead of ours
    max_age_s: float = Field(default=7 * 86_400.0, gt=0)  # older timestamps are rejected
    # The model runs in float32 and z-scores its context: squares overflow above ~1e19, and
    # long before that a value keeps no useful precision. Larger values are rejected here rather
    # than turning into infinities inside the graph.
    max_abs_value: float = Field(default=1e15, gt=0)


@dataclass(slots=True)
class ParseResult:
    """Readings of the topic's stream, readings of named sibling sensors, rejection counts."""

    readings: list[Reading] = field(default_factory=list)
    named: dict[str, list[Reading]] = field(default_factory=dict)
    rejected: Counts = field(default_factory=Counts)
    # (seq, event time) of the accepted readings that carry a sequence number, by SenML name
    # ("" for the topic's own stream), in payload order: for agent.ingest.sequence.
    seqs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return len(self.readings) + sum(len(found) for found in self.named.values())

    def by_stream(self, topic_stream: StreamId) -> dict[StreamId, list[Reading]]:
        """Readings per stream, for a payload received on `topic_stream`'s topic."""
        streams: dict[StreamId, list[Reading]] = {}
        if self.readings:
            streams[topic_stream] = self.readings
        for name, readings in self.named.items():
            stream = StreamId(topic_stream.device, name)
            streams[stream] = streams.get(stream, []) + readings
        return streams

    def seqs_by_stream(self, topic_stream: StreamId) -> dict[StreamId, list[tuple[int, float]]]:
        """`seqs` per stream, as `by_stream` maps readings."""
        return {
            StreamId(topic_stream.device, name) if name else topic_stream: found
            for name, found in self.seqs.items()
        }


class _Rejected(Exception):
    """One reading is rejected for `reason`; an exception because bad readings are rare."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_payload(
    payload: bytes, arrival_ts: float, limits: PayloadLimits | None = None
) -> ParseResult:
    """Readings in `payload`, received at `arrival_ts` (unix seconds), and what was rejected."""
    limits = limits or _DEFAULT_LIMITS
    result = ParseResult()
    if len(payload) > limits.max_bytes:
        result.rejected["too_large"] += 1
        return result
    try:
        document = orjson.loads(payload)
        exact = True
    except orjson.JSONDecodeError:
        # orjson refuses what the standard parser takes: NaN and Infinity, numbers that
        # overflow a double or an int64 (rejected per reading below), UTF-16 and UTF-32, a BOM,
        # lone surrogates. What both accept they decode alike (orjson makes an integer beyond
        # 64 bits a float, which every field converts to float or ignores anyway).
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError):  # bad UTF-8 and huge integers too
            result.rejected["not_json"] += 1
            return result
        exact = False
    if type(document) is list:
        if len(document) > limits.max_readings:
            result.rejected["too_many_readings"] += 1
        elif not (exact and _plain_readings(document, arrival_ts, limits, result)):
            _Records(arrival_ts, limits, result).parse(document)
    elif type(document) is dict:
        reading = _plain_reading(document, arrival_ts, limits)
        if reading is not None:
            result.readings.append(reading)
        else:
            _Records(arrival_ts, limits, result).parse((document,))
    else:
        try:
            value = _number(document)
            if not -limits.max_abs_value <= value <= limits.max_abs_value:
                raise _Rejected(_value_problem(value))
            result.readings.append(Reading(arrival_ts, value))
        except _Rejected as rejection:
            result.rejected[rejection.reason] += 1
    return result


def parse_message(
    payload: bytes, arrival_ts: float, limits: PayloadLimits
) -> Reading | ParseResult:
    """`parse_payload`, except that a payload `{"ts": <float>, "value": <float>}` it would
    accept whole comes back as that Reading, without a ParseResult: the common case, on the
    writer's per-message path. Every payload is decoded once."""
    if payload[:1] == b"{" and len(payload) <= limits.max_bytes:
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass  # parse_payload tries the standard parser, and counts what both refuse
        else:
            if type(document) is dict:
                reading = _plain_reading(document, arrival_ts, limits)
                if reading is not None:
                    return reading
                result = ParseResult()
                _Records(arrival_ts, limits, result).parse((document,))
                return result
    return parse_payload(payload, arrival_ts, limits)


# The common shapes, `{"ts": <float>, "value": <float>}` alone or in a list, every one of them
# acceptable, take these shortcuts; anything else (ints, strings, a seq, SenML, one bad reading)
# is left untouched for `_Records`, which gives the same readings.


def _plain_reading(
    document: dict[str, object], arrival: float, limits: PayloadLimits
) -> Reading | None:
    if len(document) != 2:
        return None
    ts = document.get("ts")
    value = document.get("value")
    if (
        type(ts) is float
        and type(value) is float
        and arrival - limits.max_age_s <= ts <= arrival + limits.max_future_s
        and ts <= MILLISECONDS_ABOVE
        and -limits.max_abs_value <= value <= limits.max_abs_value
    ):  # NaN fails every comparison
        return _reading((ts, value))
    return None


def _plain_readings(
    document: list[object], arrival: float, limits: PayloadLimits, result: ParseResult
) -> bool:
    """For an orjson document only: its floats are finite, which min and max rely on."""
    if not document:
        return False
    try:
        times = [record["ts"] for record in document]  # type: ignore[index]
        values = [record["value"] for record in document]  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return False
    # Every record a dict (a list or string raised above) of exactly these two keys: no seq.
    if sum(map(len, document)) != 2 * len(document):  # type: ignore[arg-type]
        return False
    if set(map(type, times)) != _FLOATS or set(map(type, values)) != _FLOATS:
        return False
    newest = max(times)
    if not (
        arrival - limits.max_age_s <= min(times)
        and newest <= arrival + limits.max_future_s
        and newest <= MILLISECONDS_ABOVE
        and -limits.max_abs_value <= min(values)
        and max(values) <= limits.max_abs_value
    ):
        return False
    result.readings = list(map(_reading, zip(times, values, strict=True)))
    return True


_DEFAULT_LIMITS = PayloadLimits()
_ABSENT = object()


class _Records:
    """Reads a sequence of reading objects and SenML records, carrying SenML base fields."""

    __slots__ = ("arrival", "base_name", "base_time", "base_value", "limits", "result")

    def __init__(self, arrival_ts: float, limits: PayloadLimits, result: ParseResult) -> None:
        self.arrival = arrival_ts
        self.limits = limits
        self.result = result
        # None marks a base field that was present but invalid: records relying on it are
        # rejected until a later record sets it again.
        self.base_name: str | None = ""
        self.base_time: float | None = 0.0
        self.base_value: float | None = 0.0

    def parse(self, records: list[object] | tuple[object, ...]) -> None:
        arrival = self.arrival
        max_abs = self.limits.max_abs_value
        newest = arrival + self.limits.max_future_s
        oldest = arrival - self.limits.max_age_s
        readings = self.result.readings
        named = self.result.named
        rejected = self.result.rejected
        seqs = self.result.seqs
        # The type tests inline the common case (JSON floats); every other input goes through
        # the helpers, and the two range checks below also catch NaN and infinities.
        for record in records:
            try:
                if type(record) is not dict:
                    raise _Rejected("bad_shape")
                raw_value = record.get("value", _ABSENT)
                raw_ts = record.get("ts", _ABSENT)
                seq = None
                if raw_value is not _ABSENT:
                    name = ""
                    seq = record.get("seq")
                    value = raw_value if type(raw_value) is float else _number(raw_value)
                    if raw_ts is _ABSENT:
                        ts = arrival
                    elif type(raw_ts) is float and raw_ts <= MILLISECONDS_ABOVE:
                        ts = raw_ts
                    else:
                        ts = _timestamp(raw_ts)
                elif raw_ts is not _ABSENT:
                    raise _Rejected("bad_shape")
                else:
                    senml = self.senml(record)
                    if senml is None:
                        continue
                    name, ts, value = senml
                if not -max_abs <= value <= max_abs:
                    raise _Rejected(_value_problem(value))
                if not oldest <= ts <= newest:
                    raise _Rejected(_time_problem(ts, newest))
                (named.setdefault(name, []) if name else readings).append(_reading((ts, value)))
                # A number that is not a non-negative int64 is ignored, not the reading.
                if type(seq) is int and 0 <= seq < MAX_SEQ:
                    seqs.setdefault(name, []).append((seq, ts))
            except _Rejected as rejection:
                rejected[rejection.reason] += 1

    def senml(self, record: dict[str, object]) -> tuple[str, float, float] | None:
        """A SenML record's resolved name, time and value; None for a base-only record."""
        if record.keys().isdisjoint(_SENML_FIELDS):
            raise _Rejected("bad_shape")
        self.update_base(record)
        if "v" not in record:
            if not record.keys().isdisjoint(_SENML_NON_NUMERIC_VALUES):
                raise _Rejected("not_number")
            if "n" in record or "t" in record:
                raise _Rejected("bad_shape")
            return None
        name = record.get("n", "")
        if self.base_name is None or type(name) is not str:
            raise _Rejected("bad_name")
        name = self.base_name + name
        if name and name not in self.result.named and name_problem(name) is not None:
            raise _Rejected("bad_name")
        if self.base_time is None:
            raise _Rejected("bad_timestamp")
        ts = self.base_time + _seconds(record.get("t", 0.0))
        if ts < SENML_RELATIVE_BELOW:
            ts += self.arrival
        elif ts > MILLISECONDS_ABOVE:
            ts /= 1000.0
        if self.base_value is None:
            raise _Rejected("not_number")
        value = _number(record["v"])
        if math.isfinite(value) and not math.isfinite(value + self.base_value):
            raise _Rejected("out_of_range")
        return name, ts, value + self.base_value

    def update_base(self, record: dict[str, object]) -> None:
        if "bn" in record:
            base_name = record["bn"]
            self.base_name = base_name if type(base_name) is str else None
        if "bt" in record:
            self.base_time = _finite_or_none(_seconds, record["bt"])
        if "bv" in record:
            self.base_value = _finite_or_none(_number, record["bv"])


def _number(raw: object) -> float:
    """A float, maybe not finite, from a JSON number or numeric string; booleans (a subclass of
    int) and null are not numbers."""
    if type(raw) is float:
        return raw
    if type(raw) is int:
        try:
            return float(raw)
        except OverflowError:
            raise _Rejected("out_of_range") from None
    if type(raw) is str:
        try:
            return float(raw)
        except ValueError:
            raise _Rejected("not_number") from None
    raise _Rejected("not_number")


def _value_problem(value: float) -> str:
    return "out_of_range" if math.isfinite(value) else "non_finite"


def _time_problem(ts: float, newest: float) -> str:
    if not math.isfinite(ts):
        return "bad_timestamp"
    return "too_far_future" if ts > newest else "too_old"


def _seconds(raw: object) -> float:
    """A float from a JSON number, the only form of time SenML has."""
    if type(raw) is float or type(raw) is int:
        try:
            return float(raw)
        except OverflowError:
            raise _Rejected("bad_timestamp") from None
    raise _Rejected("bad_timestamp")


def _timestamp(raw: object) -> float:
    """Unix seconds from unix seconds, unix milliseconds or an ISO 8601 string."""
    if type(raw) is str:
        return _iso_timestamp(raw)
    seconds = _seconds(raw)
    return seconds / 1000.0 if seconds > MILLISECONDS_ABOVE else seconds


def _iso_timestamp(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise _Rejected("bad_timestamp") from None


def _finite_or_none(convert: Callable[[object], float], raw: object) -> float | None:
    """A SenML base field's value, or None when it is unusable."""
    try:
        number = convert(raw)
    except _Rejected:
        return None
    return number if math.isfinite(number) else None
