"""What the agent's memory goes to: each import, and each stream it holds.

    python benchmarks/agent_memory.py

1. Imports: a fresh interpreter imports the agent's modules one after the other, in the order
   `moecast agent` needs them, and reports the growth of its resident set (VmRSS) at each step;
   and, after the last, how much of it is mapped from files (RssFile: the libraries' code);
   then `python -X importtime -c "import moecast.agent.cli"`, summed per top-level package.
2. Streams: a StreamRegistry filled with STREAMS streams of full buffers (max_points readings
   plus the trimming slack, the most a stream holds), measured with tracemalloc and as RSS.
   Then SQLite's own memory (`sqlite3_memory_used`) once a readings' store holds 600 readings
   of each stream, written ten a stream per transaction, with the store's page cache
   (CACHE_KIB) and with SQLite's default of 2 MB, and the time the writes took.
3. Ticks (`--ticks N`, default 4): the forecasting side of the agent in one process, in its
   order: malloc tuned (arenas capped, large blocks mapped), the default bundle loaded, STREAMS
   streams of 600 readings 10 s apart (`benchmarks/tick_cost.py`'s), then N ticks of the agent's
   Forecaster with the real model, publishing nowhere. Per tick: the peak RSS during it (VmHWM,
   reset before each tick through /proc/self/clear_refs), the RSS after it and after
   `release_free_memory` (as the agent does), and, for one more tick, the peak of what Python
   and numpy allocate during it (tracemalloc; ONNX Runtime's own allocations are not traced).
4. The model session (`--session-rows`, default 256): in a fresh process each, the default
   bundle's (or `--bundle`'s) ONNX Runtime session made as the agent makes it (`new_session`:
   from an in-memory file) and from the bytes (the fallback where there is none), its growth of
   the resident set (after `malloc_trim`), then those rows forecast in runs of MAX_BATCH and of
   2 rows: what the runs add at their peak and what they leave after `malloc_trim` (ONNX
   Runtime's arena and the code they page in), and their time.

Everything is measured in child processes, so that nothing this script imported counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from moecast.agent.forecast.tick import MAX_BATCH
from moecast.agent.ingest.store import CACHE_KIB
from tick_cost import HISTORY
from timing import cpu_description

REPO = Path(__file__).resolve().parents[1]

# In the order the agent's start-up reaches them; each step's growth excludes what earlier ones
# already imported.
IMPORT_STEPS = (
    "pydantic",
    "pydantic_settings",
    "yaml",
    "numpy",
    "moecast.agent.settings",
    "moecast.agent.ingest.writer",  # ingest: payloads (orjson), streams, store (sqlite3)
    "paho.mqtt.client",
    # link imports the bundle format for fleet updates: onnxruntime and cryptography with it.
    "onnxruntime",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "moecast.agent.ingest.link",
    "moecast.agent.forecast.tick",
    "moecast.agent.updates.wiring",
    "moecast.agent.cli",
)
STREAMS = 1000

_IMPORTS_CHILD = """
import json, re, sys, importlib
def rss():
    text = open("/proc/self/status").read()
    return int(re.search(r"^VmRSS:\\s+(\\d+) kB", text, re.M).group(1)) / 1024
steps = [("python", rss(), 0)]
for name in sys.argv[1:]:
    before = len(sys.modules)
    importlib.import_module(name)
    steps.append((name, rss(), len(sys.modules) - before))
text = open("/proc/self/status").read()
mapped = int(re.search(r"^RssFile:\\s+(\\d+) kB", text, re.M).group(1)) / 1024
print(json.dumps({"steps": steps, "file_backed_mb": mapped}))
"""

_STREAMS_CHILD = """
import json, re, sys, time, tracemalloc
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamLimits, StreamRegistry
def rss():
    text = open("/proc/self/status").read()
    return int(re.search(r"^VmRSS:\\s+(\\d+) kB", text, re.M).group(1)) / 1024
streams = int(sys.argv[1])
limits = StreamLimits()
held = limits.max_points + max(limits.max_points // 8, 1)  # just before a trim
now = time.time()
readings = [Reading(now - held + k, 20.0 + k % 7) for k in range(held)]
ids = [StreamId(f"device{i // 10}", f"sensor{i % 10}") for i in range(streams)]
registry = StreamRegistry(limits)
before = rss()
tracemalloc.start()
for stream in ids:
    registry.insert(stream, readings, now)
traced, _ = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps({"streams": streams, "points_per_stream": held, "traced_mb": traced / 2**20,
                  "rss_mb": rss() - before}))
"""


_TICKS_CHILD = """
import json, re, sys, tempfile, time, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[1])
def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{key}:\\s+(\\d+) kB", text, re.M).group(1)) / 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
from moecast.agent.ops.memory import limit_malloc_arenas, map_large_blocks, release_free_memory
limit_malloc_arenas()
map_large_blocks()
import tick_cost
from moecast.agent.forecast import tick
from moecast.agent.settings import load_settings
from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle
streams, ticks = int(sys.argv[2]), int(sys.argv[3])
out = {"imported": status("VmRSS")}
bundle = load_bundle(Path(sys.argv[1]).parent / "agent" / "default_bundle", [DEV_PUBLIC_KEY])
out["bundle"] = status("VmRSS")
start = time.time() - (tick_cost.HISTORY + ticks + 1) * tick_cost.INTERVAL_S
registry, ids = tick_cost.make_registry(streams, start)
out["streams"] = status("VmRSS")
out["ticks"] = []
with tempfile.TemporaryDirectory() as tmp:
    forecaster = tick.Forecaster(bundle, load_settings(None, storage_dir=Path(tmp)))
    for k in range(ticks + 1):
        traced = k == ticks
        if traced:
            tracemalloc.start()
        reset_peak()
        before = status("VmRSS")
        tick_cost.run_ticks(forecaster, bundle, registry, ids, start + k * tick_cost.INTERVAL_S,
                            1, tick_cost.NullLink())
        if traced:
            out["traced_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            break
        row = {"before": before, "peak": status("VmHWM"), "after": status("VmRSS")}
        release_free_memory()
        row["released"] = status("VmRSS")
        out["ticks"].append(row)
    forecaster.close()
print(json.dumps(out))
"""


def measure_ticks(streams: int, ticks: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _TICKS_CHILD, str(Path(__file__).parent), str(streams), str(ticks)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout
    return json.loads(out)


_SESSION_CHILD = """
import json, os, re, sys, time, ctypes
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from moecast.agent.ops.memory import limit_malloc_arenas, map_large_blocks, release_free_memory
limit_malloc_arenas()
map_large_blocks()
from moecast.bundle.format import new_session
def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{key}:\\s+(\\d+) kB", text, re.M).group(1)) / 1024
source, rows, per_run = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if source == "bytes":
    del os.memfd_create  # the fallback, as where Linux has none
model = Path(sys.argv[5]).read_bytes()
release_free_memory()
before = status("VmRSS")
session = new_session(model)
del model
release_free_memory()
out = {"session_mb": status("VmRSS") - before}
rng = np.random.default_rng(0)
values = (20 + np.cumsum(rng.normal(0, 0.1, (rows, 512)), axis=1)).astype(np.float32)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
started = time.perf_counter()
for start in range(0, rows, per_run):
    session.run(None, {"values": values[start : start + per_run]})
out["runs_s"] = time.perf_counter() - started
out["runs_peak_mb"] = status("VmHWM") - base
release_free_memory()
out["runs_after_mb"] = status("VmRSS") - base  # what the runs leave: ONNX Runtime's arena, code
print(json.dumps(out))
"""


def measure_session(source: str, rows: int, per_run: int, model: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _SESSION_CHILD, str(Path(__file__).parent), source, str(rows),
         str(per_run), str(model)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout  # fmt: skip
    return json.loads(out)


_SQLITE_CHILD = """
import ctypes, ctypes.util, json, sys, tempfile, time
from pathlib import Path
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.store import ReadingStore
streams, readings, cache_kib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
name = ctypes.util.find_library("sqlite3")
lib = ctypes.CDLL(name) if name else None
used = getattr(lib, "sqlite3_memory_used", None)
if used is not None:
    used.restype = ctypes.c_int64
ids = [StreamId(f"d{i // 10}", f"s{i}") for i in range(streams)]
start = time.time() - readings * 10.0
with tempfile.TemporaryDirectory() as tmp, ReadingStore(Path(tmp) / "r.db") as store:
    if cache_kib:
        store._db.execute(f"PRAGMA cache_size=-{cache_kib}")
    started = time.perf_counter()
    for first in range(0, readings, 10):  # ten readings a stream per transaction
        store.write({s: [Reading(start + (first + j) * 10.0, float(j)) for j in range(10)]
                     for s in ids})
    seconds = time.perf_counter() - started
    mb = used() / 2**20 if used is not None else None
print(json.dumps({"sqlite_mb": mb, "write_s": seconds}))
"""


def measure_sqlite(streams: int, cache_kib: int) -> dict[str, Any]:
    """SQLite's own memory (`sqlite3_memory_used`, None where Python's SQLite is not the
    shared library) once the readings' store holds HISTORY readings of each stream, written
    ten a stream per transaction; `cache_kib` 0: the store's setting, else that page cache."""
    out = subprocess.run(
        [sys.executable, "-c", _SQLITE_CHILD, str(streams), str(HISTORY), str(cache_kib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def measure_imports() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS_CHILD, *IMPORT_STEPS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def measure_importtime(module: str) -> tuple[float, dict[str, float]]:
    """Total import time of `module` (s) and the time spent in each package's own modules
    (moecast's by subpackage, everything else by top-level package)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    per_package: dict[str, float] = defaultdict(float)
    for line in err.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            parts = match.group(2).split(".")
            root = ".".join(parts[:3] if parts[0] == "moecast" else parts[:1])
            per_package[root] += int(match.group(1)) / 1e6
    return sum(per_package.values()), dict(per_package)


def measure_streams(streams: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _STREAMS_CHILD, str(streams)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--ticks", type=int, default=4, help="forecasting ticks (0: none)")
    parser.add_argument(
        "--session-rows", type=int, default=256, help="rows run in the session part (0: none)"
    )
    parser.add_argument(
        "--bundle", default=str(REPO / "agent" / "default_bundle"), help="the session part's"
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{cpu_description()}, {len(os.sched_getaffinity(0))} cores")

    imported = measure_imports()
    steps = imported["steps"]
    print("resident set after each import (MB), and its growth:")
    previous = None
    for name, rss, modules in steps:
        growth = "" if previous is None else f"+{rss - previous:6.1f}"
        print(f"  {name:<52} {rss:7.1f} {growth:>7}  ({modules} modules)")
        previous = rss
    print(
        f"  of the {previous:.1f} MB, {imported['file_backed_mb']:.1f} MB are pages mapped from "
        "files (the code of the interpreter and the libraries: shared, and dropped under pressure)"
    )

    total, per_package = measure_importtime("moecast.agent.cli")
    print(
        f"\npython -X importtime -c 'import moecast.agent.cli': {total:.2f} s, own time by package:"
    )
    for name, seconds in sorted(per_package.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {name:<44} {seconds:6.3f} s")

    streams = measure_streams(args.streams)
    per_stream_kb = streams["traced_mb"] * 1024 / streams["streams"]
    print(
        f"\n{streams['streams']} streams of {streams['points_per_stream']} points (full buffers):"
        f" {streams['traced_mb']:.1f} MB allocated (tracemalloc), {streams['rss_mb']:.1f} MB RSS,"
        f" {per_stream_kb:.1f} KB per stream"
    )
    sqlite = {
        "store": measure_sqlite(args.streams, 0),
        "default": measure_sqlite(args.streams, 2000),
    }
    if sqlite["store"]["sqlite_mb"] is not None:
        print(
            f"\nSQLite, {args.streams} streams of {HISTORY} readings stored: page cache "
            f"{CACHE_KIB} KiB (the store's) {sqlite['store']['sqlite_mb']:.2f} MB in "
            f"{sqlite['store']['write_s']:.2f} s, 2 MB (SQLite's default) "
            f"{sqlite['default']['sqlite_mb']:.2f} MB in {sqlite['default']['write_s']:.2f} s"
        )
    ticks: dict[str, Any] = {}
    if args.ticks:
        ticks = measure_ticks(args.streams, args.ticks)
        print(
            f"\nforecasting, {args.streams} streams of {HISTORY} readings, the default bundle "
            f"(RSS, MB): imported {ticks['imported']:.1f}, bundle loaded {ticks['bundle']:.1f}, "
            f"streams held {ticks['streams']:.1f}"
        )
        for k, row in enumerate(ticks["ticks"]):
            print(
                f"  tick {k}: before {row['before']:.1f}, peak {row['peak']:.1f}, after "
                f"{row['after']:.1f}, after release_free_memory {row['released']:.1f}"
            )
        print(f"  one more tick: Python and numpy allocated at most {ticks['traced_peak']:.1f} MB")
    sessions: dict[str, Any] = {}
    if args.session_rows:
        model = Path(args.bundle) / "model.onnx"
        print(f"\n{model}: the session, then {args.session_rows} rows (MB, s):")
        for source in ("memfd", "bytes"):
            for per_run in (MAX_BATCH, 2):
                key = f"{source}, runs of {per_run}"
                sessions[key] = m = measure_session(source, args.session_rows, per_run, model)
                print(
                    f"  from {'an in-memory file' if source == 'memfd' else 'the bytes':<18}"
                    f" session +{m['session_mb']:5.1f}; runs of {per_run}: peak"
                    f" +{m['runs_peak_mb']:5.1f}, after them +{m['runs_after_mb']:5.1f},"
                    f" {m['runs_s']:.2f} s"
                )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "imports": steps,
                    "importtime": per_package,
                    "streams": streams,
                    "sqlite": sqlite,
                    "ticks": ticks,
                    "sessions": sessions,
                },
                out,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
