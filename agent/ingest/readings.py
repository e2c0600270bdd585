"""A sensor reading and the identity of the stream it belongs to.

Device and sensor names come from MQTT topics and SenML names, i.e. from the network. They are
restricted to a small safe charset so that no later layer (metrics labels, log lines, topics we
publish, SQLite rows) can be tricked by them; they are still never used as file paths or spliced
into SQL.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

MAX_NAME_LENGTH = 64
DEFAULT_PREFIX = "sensors"

_SAFE_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_NAME_LENGTH}}}")


class Reading(NamedTuple):
    """One observation: event time in unix seconds and a finite value."""

    ts: float
    value: float


class InvalidStream(ValueError):
    """A topic or name that cannot identify a stream; `reason` is short and machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def name_problem(name: str) -> str | None:
    """Why `name` is not a safe device or sensor name, or None if it is."""
    if not _SAFE_NAME.fullmatch(name):
        return f"must be 1-{MAX_NAME_LENGTH} characters of [A-Za-z0-9_.-]"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    return None


class _StreamFields(NamedTuple):
    device: str
    sensor: str


class StreamId(_StreamFields):
    """A validated `<device>/<sensor>` pair; constructing one with an unsafe name raises.

    A tuple underneath, so that hashing and comparing one (several dict look-ups per message on
    the ingest path) run in C rather than in a dataclass's Python `__hash__`/`__eq__`.
    """

    __slots__ = ()

    def __new__(cls, device: str, sensor: str) -> StreamId:
        for reason, name in (("bad_device", device), ("bad_sensor", sensor)):
            problem = name_problem(name)
            if problem is not None:
                raise InvalidStream(reason, f"{name[:80]!r} {problem}")
        return tuple.__new__(cls, (device, sensor))

    def __str__(self) -> str:
        return f"{self[0]}/{self[1]}"

    def topic(self, prefix: str) -> str:
        return f"{prefix}/{self[0]}/{self[1]}"


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> StreamId:
    """The stream of a `<prefix>/<device>/<sensor>` topic; raises InvalidStream with a reason.

    Reasons: "bad_prefix" (the configured prefix itself is unusable), "wrong_prefix",
    "bad_levels" (not exactly two levels after the prefix), "bad_device", "bad_sensor".
    """
    parsed = _parse_topic_cached(topic, prefix)
    if isinstance(parsed, StreamId):
        return parsed
    raise InvalidStream(*parsed)


# Every message on the hot path parses its topic; a bounded cache makes the common case (a few
# thousand live topics) a dict lookup. A flood of junk topics only evicts entries. Failures are
# cached as (reason, detail), not as exception objects: re-raising one instance grows its traceback.
@lru_cache(maxsize=8192)
def _parse_topic_cached(topic: str, prefix: str) -> StreamId | tuple[str, str]:
    if not prefix or any(not level or level in ("+", "#") for level in prefix.split("/")):
        return "bad_prefix", f"{prefix!r} is not a usable topic prefix"
    if not topic.startswith(prefix + "/"):
        return "wrong_prefix", f"{topic[:200]!r} is not under {prefix!r}/"
    levels = topic[len(prefix) + 1 :].split("/")
    if len(levels) != 2:
        return "bad_levels", f"{topic[:200]!r} is not {prefix}/<device>/<sensor>"
    try:
        return StreamId(levels[0], levels[1])
    except InvalidStream as error:
        return error.reason, error.detail
