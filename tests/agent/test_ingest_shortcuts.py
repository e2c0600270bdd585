"""The ingest path's shortcuts give exactly what the general paths give."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from moecast.agent.ingest.inbox import Flush, InboundMessage, Inbox
from moecast.agent.ingest.payloads import (
    ParseResult,
    PayloadLimits,
    _Records,
    parse_message,
    parse_payload,
)
from moecast.agent.ingest.readings import Reading
from moecast.agent.ingest.streams import StreamBuffer

NOW = 1_700_000_000.0
LIMITS = PayloadLimits()

TIMES = st.one_of(
    st.floats(NOW - 8 * 86_400, NOW + 600),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.just((NOW - 1) * 1000.0),
    st.text(max_size=3),
    st.none(),
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e16, 1e16),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.just("21.5"),
)
RECORDS = st.dictionaries(
    st.sampled_from(["ts", "value", "seq", "n", "v"]),
    st.one_of(TIMES, VALUES),
    max_size=3,
)


def general(document: object) -> ParseResult:
    """What `_Records` alone makes of a decoded document, no shortcut taken."""
    result = ParseResult()
    records = document if isinstance(document, list) else [document]
    _Records(NOW, LIMITS, result).parse(records)
    return result


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.fixed_dictionaries({"ts": TIMES, "value": VALUES}), RECORDS))
def test_plain_reading_is_what_parse_payload_gives(record: dict[str, object]) -> None:
    payload = json.dumps(record).encode()
    parsed = parse_message(payload, NOW, LIMITS)
    reading = parsed if isinstance(parsed, Reading) else None
    full = parse_payload(payload, NOW, LIMITS)
    if reading is None:
        assert parsed == full  # the same result, from the one decoding
    else:
        assert full.readings == [reading]
        assert type(reading.ts) is float
        assert not full.rejected
        assert not full.named
        assert not full.seqs
    assert (full.readings, full.rejected, full.seqs) == (
        general(json.loads(payload)).readings,
        general(json.loads(payload)).rejected,
        general(json.loads(payload)).seqs,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.fixed_dictionaries({"ts": TIMES, "value": VALUES}), RECORDS), max_size=12)
)
def test_list_shortcut_is_what_the_records_give(records: list[dict[str, object]]) -> None:
    payload = json.dumps(records).encode()
    full = parse_payload(payload, NOW, LIMITS)
    reference = general(json.loads(payload))
    assert full.readings == reference.readings
    assert dict(full.rejected) == dict(reference.rejected)
    assert full.seqs == reference.seqs
    assert full.named == reference.named


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=8), max_size=6),
    st.integers(1, 8),
)
def test_buffer_batches_match_one_at_a_time_when_in_order(
    calls: list[list[int]], max_points: int
) -> None:
    """In-order batches of distinct times (the extend shortcut) hold what inserting the same
    readings one call each holds, when lateness cannot drop anything."""
    batched, single = StreamBuffer(max_points, 1e9), StreamBuffer(max_points, 1e9)
    for call in calls:
        readings = [(float(ts), float(ts) * 2 + len(call)) for ts in call]
        batched.insert(readings, NOW)
        for reading in sorted(readings, key=lambda r: r[0]):
            single.insert([reading], NOW)
    assert [a.tolist() for a in batched.arrays()] == [a.tolist() for a in single.arrays()]


def message(size: int, mid: int) -> InboundMessage:
    return InboundMessage("sensors/d/s", b"x" * size, NOW, mid, 1, 0)


def test_take_respects_the_batch_bounds_and_stops_at_a_flush() -> None:
    inbox = Inbox(100, 10_000)
    for mid in range(5):
        inbox.put(message(100, mid))
    marker = Flush()
    inbox.put(marker)
    inbox.put(message(100, 9))
    assert [m.mid for m in inbox.take(3, 1_000_000)] == [0, 1, 2]  # type: ignore[union-attr]
    assert inbox.queued_bytes == 300
    assert [m.mid for m in inbox.take(100, 150)] == [3, 4]  # type: ignore[union-attr]
    assert inbox.take(100, 1_000_000) == [marker]
    taken = inbox.take(100, 1)  # one message at least, whatever its size
    assert [m.mid for m in taken] == [9]  # type: ignore[union-attr]
    assert inbox.queued_bytes == 0
    assert inbox.qsize() == 0
