"""Timing, and the machine it ran on, shared by the benchmark scripts."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# int8 inference speed hangs on these: VNNI runs int8 dot products several times faster, and
# the same bundle was 3-4x slower on an AVX2-only EPYC than on one with AVX-512 VNNI.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp")


def cpu_description() -> str:
    """The CPU's model name and its SIMD extensions that matter for inference."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    present = set(flags.group(1).split()) if flags else set()
    simd = " ".join(f for f in SIMD_FLAGS if f in present) or "no AVX2/VNNI"
    return f"{name.group(1).strip() if name else platform.machine()} ({simd})"


def timed(fn: Callable[[], object], min_seconds: float, min_runs: int, warmup: int = 1) -> float:
    """Median seconds per call over at least `min_runs` calls and `min_seconds` in total."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def wait(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy, and return that; TimeoutError naming
    `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
