"""The time axis of a CSV file, for `moecast forecast` and `moecast replay`: no pandas, so an
edge install (the agent's) can replay files too.

Found in this order: the column the caller names; split `year`, `month`, `day` (and `hour`,
`minute`, `second`) columns, as in the UCI Beijing PM2.5 file; a `date` column with a `time`
column beside it; the first column whose values parse as dates (ISO 8601, `dd/mm/YYYY`,
`mm/dd/YYYY`, `YYYY/mm/dd`, `dd.mm.YYYY`, each with an optional time) or, in a column named
like a timestamp (`ts`, `time`, `timestamp`, `epoch`, ...), as unix seconds or milliseconds.
Plain numbers elsewhere are never taken for time: a row number such as `No` would stamp every
row in January 1970. Times without a zone are UTC.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# Share of non-empty values that must parse for a column to be taken as the time axis.
MIN_PARSED = 0.9
MILLISECONDS_ABOVE = 1e11  # a unix time above this is in milliseconds (year 5138 in seconds)
# Unix seconds must be after this (2001-09-09) to count: smaller numbers are counts or indices.
EPOCH_SECONDS_ABOVE = 1e9
_EPOCH_NAMES = frozenset({"ts", "t", "time", "timestamp", "epoch", "unix", "unix_time", "datetime"})
_DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d.%m.%Y", "%d-%m-%Y")
_TIME_FORMATS = ("", " %H:%M", " %H:%M:%S", " %H.%M.%S", " %H:%M:%S.%f", "T%H:%M:%S")
_SPLIT = ("year", "month", "day", "hour", "minute", "second")


class TimeColumnError(ValueError):
    """The named time column is missing or does not hold times."""


@dataclass(frozen=True)
class TimeAxis:
    ts: np.ndarray  # unix seconds per row, float64, NaN where a row's time did not parse
    columns: tuple[str, ...]  # the columns it was read from
    how: str  # e.g. "ISO 8601", "%d/%m/%Y %H.%M.%S", "split year/month/day/hour"

    def describe(self) -> str:
        return f"{'+'.join(self.columns)} ({self.how})"


def read_csv_columns(path: Path) -> dict[str, list[str]]:
    """Every column of a CSV file (`.gz` too) as strings, by header name."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError("the file is empty")
    header = [name.strip() for name in rows[0]]
    if len(rows) > 1 and len(rows[1]) == len(header) + 1:
        header.insert(0, "")  # R's write.csv: a row-name field without a header
    columns: dict[str, list[str]] = {name: [] for name in header}
    for row in rows[1:]:
        if not row:
            continue
        for name, cell in zip(header, row, strict=False):
            columns[name].append(cell.strip())
        for name in header[len(row) :]:
            columns[name].append("")
    return columns


def find_time_axis(
    columns: Mapping[str, Sequence[str]], name: str | None = None
) -> TimeAxis | None:
    """The time axis of a table given as columns of strings, or None when it has none.
    Raises TimeColumnError when `name` is given and is missing or holds no times."""
    if name is not None:
        if name not in columns:
            raise TimeColumnError(f"no column {name!r}; columns: {list(columns)}")
        found = _parse_column(name, columns[name], epoch_allowed=True)
        if found is None:
            sample = next((v for v in columns[name] if v), "")
            raise TimeColumnError(
                f"column {name!r} does not hold dates or unix times (e.g. {sample!r}); formats "
                f"understood: ISO 8601, {', '.join(_DATE_FORMATS)} with an optional time"
            )
        return found
    split = _split_columns(columns)
    if split is not None:
        return split
    lower = {key.lower(): key for key in columns}
    if "date" in lower and "time" in lower:
        date, clock = columns[lower["date"]], columns[lower["time"]]
        joined = [f"{d} {t}" if d and t else d for d, t in zip(date, clock, strict=True)]
        found = _parse_column("", joined, epoch_allowed=False)
        if found is not None:
            return TimeAxis(found.ts, (lower["date"], lower["time"]), found.how)
    for key, values in columns.items():
        found = _parse_column(key, values, epoch_allowed=key.lower() in _EPOCH_NAMES)
        if found is not None:
            return found
    return None


def _split_columns(columns: Mapping[str, Sequence[str]]) -> TimeAxis | None:
    lower = {key.lower(): key for key in columns}
    if not all(part in lower for part in _SPLIT[:3]):
        return None
    parts = [part for part in _SPLIT if part in lower]
    numbers = [_floats(columns[lower[part]]) for part in parts]
    n = len(numbers[0])
    ts = np.full(n, np.nan)
    for i in range(n):
        fields = [int(column[i]) if math.isfinite(column[i]) else None for column in numbers]
        if None in fields:
            continue
        try:
            ts[i] = datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]
        except (ValueError, OverflowError):
            continue
    if np.count_nonzero(np.isfinite(ts)) < MIN_PARSED * max(n, 1):
        return None
    return TimeAxis(ts, tuple(lower[part] for part in parts), f"split {'/'.join(parts)}")


def _floats(values: Sequence[str]) -> list[float]:
    out = []
    for value in values:
        try:
            out.append(float(value))
        except ValueError:
            out.append(math.nan)
    return out


def _parse_column(name: str, values: Sequence[str], epoch_allowed: bool) -> TimeAxis | None:
    present = [v for v in values if v]
    if not present:
        return None
    needed = MIN_PARSED * len(present)
    numbers = np.array(_floats(values))
    if np.count_nonzero(np.isfinite(numbers)) >= needed:
        # A numeric column: a time only where its name says so and the numbers are unix times.
        if not epoch_allowed:
            return None
        finite = numbers[np.isfinite(numbers)]
        if finite.size == 0 or finite.min() <= EPOCH_SECONDS_ABOVE:
            return None
        if finite.min() > MILLISECONDS_ABOVE:
            return TimeAxis(numbers / 1000.0, (name,), "unix milliseconds")
        return TimeAxis(numbers, (name,), "unix seconds")
    sample = present[:: max(1, len(present) // 200)]
    for how, parse in _parsers():
        if sum(_try(parse, v) is not None for v in sample) < MIN_PARSED * len(sample):
            continue
        ts = np.array([_try(parse, v) if v else None for v in values], dtype=np.float64)
        if np.count_nonzero(np.isfinite(ts)) >= needed:
            return TimeAxis(ts, (name,), how)
    return None


def _parsers() -> Iterator[tuple[str, Callable[[str], float]]]:
    yield "ISO 8601", _iso
    for date in _DATE_FORMATS:
        for clock in _TIME_FORMATS:
            fmt = date + clock
            yield fmt, lambda value, fmt=fmt: _utc(datetime.strptime(value, fmt))


def _iso(value: str) -> float:
    return _utc(datetime.fromisoformat(value.replace(" UTC", "Z")))


def _utc(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _try(parse: Callable[[str], float], value: str) -> float | None:
    try:
        return parse(value)
    except (ValueError, OverflowError):
        return None
