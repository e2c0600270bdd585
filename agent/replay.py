"""`moecast replay CSV`: publish a file's columns as sensor streams, to load history into an
agent (backfill) or to watch it forecast a recorded series (replay).

Each numeric column becomes the stream `<sensors>/<device>/<column>` (`--device`, default the
file's name; names made safe for topics), readings `{"ts": ..., "value": ...}` at QoS 1, sent
as JSON lists of up to `--batch` readings per stream, in time order. The time axis is found as
`moecast forecast` finds it (`moecast.csvtime`), or named with `--time-column`.

`--speed 0` (the default) sends everything as fast as the broker acknowledges it; `--speed S`
sends S seconds of the file's time per second. Timestamps are the file's own unless
`--shift-to-now`, which moves them so that the last reading is stamped when it is sent: a
recording from last year then looks live to the agent, whose `limits.payload.max_age_s`
(7 days by default) rejects older readings. The agent judges staleness by when readings
arrive, so a replayed stream is forecast from its last reading either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as paho
from moecast.agent.ingest.readings import MAX_NAME_LENGTH, name_problem
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from moecast.csvtime import TimeColumnError, find_time_axis, read_csv_columns

DEFAULT_MAX_AGE_S = 7 * 86_400.0  # the agent's limits.payload.max_age_s default
_INFLIGHT = 100  # unacknowledged messages before the replay waits for the broker


@dataclass(frozen=True)
class Series:
    """One column to replay: its stream name and values (NaN: no reading) per row."""

    sensor: str
    values: np.ndarray


@dataclass(frozen=True)
class Recording:
    ts: np.ndarray  # unix seconds per row, ascending, finite
    series: list[Series]
    time_source: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path, help="CSV file (.csv or .csv.gz) with a time axis")
    parser.add_argument("--broker", default="mqtt://localhost:1883", help="mqtt[s]://host[:port]")
    parser.add_argument(
        "--username", help="broker user; the password from $MOECAST_REPLAY_PASSWORD"
    )
    parser.add_argument("--device", help="the device level of the topics (default: file name)")
    parser.add_argument(
        "--columns", help="comma-separated columns to send (default: every numeric column)"
    )
    parser.add_argument("--time-column", help="the timestamp column (default: detected)")
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="seconds of the file's time per second; 0 (default): as fast as acknowledged",
    )
    parser.add_argument(
        "--shift-to-now",
        action="store_true",
        help="move the timestamps so that the last reading is stamped when it is sent",
    )
    parser.add_argument("--prefix", default="sensors", help="the agent's topics.sensors")
    parser.add_argument("--batch", type=int, default=500, help="readings per message, at most")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def safe_name(name: str) -> str:
    """`name` as a topic level the agent accepts: [A-Za-z0-9_.-], at most MAX_NAME_LENGTH."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:MAX_NAME_LENGTH]
    return safe if safe and name_problem(safe) is None else "value"


def load_recording(
    path: Path, columns: list[str] | None = None, time_column: str | None = None
) -> Recording:
    """The rows of `path` with a time, in time order. Raises ValueError with a clear message."""
    table = read_csv_columns(path)
    axis = find_time_axis(table, time_column)
    if axis is None:
        raise TimeColumnError(f"no time column found in {path}: name one with --time-column")
    wanted = columns if columns is not None else [c for c in table if c not in axis.columns]
    missing = [c for c in wanted if c not in table]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in {path}; columns: {list(table)}")
    keep = np.isfinite(axis.ts)
    order = np.argsort(axis.ts[keep], kind="stable")
    series = []
    for name in wanted:
        values = np.array([_number(v) for v in table[name]], dtype=np.float64)[keep][order]
        if columns is None and (np.isnan(values).all() or _is_row_number(values)):
            continue  # text, empty, or a row index: not a sensor
        series.append(Series(safe_name(name), values))
    if not series:
        raise ValueError(f"{path} has no numeric columns besides its time axis")
    return Recording(axis.ts[keep][order], series, axis.describe())


def _number(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _is_row_number(values: np.ndarray) -> bool:
    return values.size > 2 and bool(np.all(np.diff(values) == 1))


def _messages(
    recording: Recording, rows: slice, device: str, prefix: str, batch: int, shift_s: float
) -> Iterator[tuple[str, bytes, int]]:
    ts = recording.ts[rows] + shift_s
    for series in recording.series:
        values = series.values[rows]
        present = np.flatnonzero(~np.isnan(values))
        topic = f"{prefix}/{device}/{series.sensor}"
        for start in range(0, present.size, batch):
            chosen = present[start : start + batch]
            readings = [{"ts": round(float(ts[i]), 3), "value": float(values[i])} for i in chosen]
            yield topic, json.dumps(readings).encode(), len(readings)


def connect(url: str, username: str | None, client_id: str) -> paho.Client:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"--broker must be mqtt://host[:port] or mqtts://host[:port], not {url!r}")
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    if parts.scheme == "mqtts":
        client.tls_set()
    if username is not None:
        client.username_pw_set(username, os.environ.get("MOECAST_REPLAY_PASSWORD"))
    client.max_inflight_messages_set(_INFLIGHT)
    default_port = 8883 if parts.scheme == "mqtts" else 1883
    client.connect(parts.hostname, parts.port or default_port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise ConnectionError(f"could not connect to {url} within 10 s")
        time.sleep(0.02)
    return client


def replay(
    recording: Recording,
    client: paho.Client,
    device: str,
    *,
    prefix: str = "sensors",
    speed: float = 0.0,
    shift_to_now: bool = False,
    batch: int = 500,
) -> tuple[int, int]:
    """Publish `recording`; returns (readings, messages) once the broker acknowledged all."""
    first, last = float(recording.ts[0]), float(recording.ts[-1])
    duration_s = (last - first) / speed if speed > 0 else 0.0
    started = time.time()
    # The last reading is stamped when it is sent (see the module docstring): earlier ones stay
    # in the past of the wall clock even when sent faster than real time.
    shift_s = started + duration_s - last if shift_to_now else 0.0
    pending: deque[paho.MQTTMessageInfo] = deque()
    readings = messages = 0
    sent_rows = 0
    n = recording.ts.size
    while sent_rows < n:
        if speed > 0:
            due_t = first + (time.time() - started) * speed
            due = int(np.searchsorted(recording.ts, due_t, side="right"))
            if due <= sent_rows:
                wait = (recording.ts[sent_rows] - due_t) / speed
                time.sleep(min(max(wait, 0.001), 1.0))
                continue
        else:
            due = n
        for topic, payload, count in _messages(
            recording, slice(sent_rows, due), device, prefix, batch, shift_s
        ):
            pending.append(client.publish(topic, payload, qos=1))
            readings += count
            messages += 1
            while len(pending) >= _INFLIGHT:
                pending.popleft().wait_for_publish(30)
        sent_rows = due
    for info in pending:
        info.wait_for_publish(30)
    return readings, messages


def run(args: argparse.Namespace) -> int:
    if args.speed < 0 or not math.isfinite(args.speed):
        return _fail("--speed must be 0 (as fast as possible) or a positive factor")
    if args.batch <= 0:
        return _fail("--batch must be positive")
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        recording = load_recording(args.csv, columns, args.time_column)
    except OSError as err:
        return _fail(f"cannot read {args.csv}: {err.strerror or err}")
    except ValueError as err:
        return _fail(str(err))
    device = safe_name(args.device or args.csv.name.split(".")[0])
    streams = ", ".join(f"{device}/{s.sensor}" for s in recording.series)
    print(f"{args.csv.name}: {recording.ts.size} rows, time from {recording.time_source}")
    print(f"streams: {streams} on {args.prefix}/{device}/...")
    span_s = float(recording.ts[-1] - recording.ts[0])
    age_s = span_s if args.shift_to_now else time.time() - float(recording.ts[0])
    if age_s > DEFAULT_MAX_AGE_S:
        hint = "raise it for a backfill" + ("" if args.shift_to_now else ", or --shift-to-now")
        print(
            f"note: the oldest reading will be {age_s / 86_400:.0f} days old: an agent rejects "
            f"readings older than limits.payload.max_age_s (7 days by default) as too_old; {hint}"
        )
    try:
        client = connect(args.broker, args.username, f"moecast-replay-{os.getpid()}")
    except (OSError, ValueError, ConnectionError) as err:
        return _fail(f"cannot connect to {args.broker}: {err}")
    started = time.monotonic()
    try:
        readings, messages = replay(
            recording,
            client,
            device,
            prefix=args.prefix,
            speed=args.speed,
            shift_to_now=args.shift_to_now,
            batch=args.batch,
        )
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        client.disconnect()
        client.loop_stop()
    print(
        f"published {readings} readings in {messages} messages in "
        f"{time.monotonic() - started:.1f} s, all acknowledged by the broker"
    )
    return 0
