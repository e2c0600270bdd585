"""At most two glibc malloc arenas for the agent's threads.

glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in
one arena is not reused by another: the MQTT network loop, the ingest writer, the scheduler
and the forecasting tick each grow a heap of their own. Measured with
`benchmarks/agent_throughput.py --quick` (1000 streams, the default bundle, 2-vCPU EPYC):
peak RSS 210 MB with glibc's default, 190 MB with two arenas (174 and 146 MB before the first
tick), at the same ingest rates and tick time. `MALLOC_ARENA_MAX` in the environment, the
operator's choice, wins. Without glibc (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MAX_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(count: int = MAX_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `count`; call before the agent's threads start (each takes
    its arena at its first allocation). True when the cap was set."""
    if os.environ.get("MALLOC_ARENA_MAX") is not None or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or mallopt(_M_ARENA_MAX, count) != 1:
        log.debug("could not cap glibc's malloc arenas")
        return False
    return True


_libc: ctypes.CDLL | None = None


def release_free_memory() -> bool:
    """Hand the free pages at the top and inside of glibc's heaps back to the system
    (`malloc_trim(0)`); True when glibc's malloc did it. The agent calls it after every tick:
    a tick's arrays and payloads are freed when it ends, but glibc keeps the pages for
    reuse, and with the ingest writer allocating between ticks the heap fragments and only
    grows. Measured with `benchmarks/agent_memory.py --ticks`: see the README."""
    global _libc
    if platform.libc_ver()[0] != "glibc":
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None)
    trim = getattr(_libc, "malloc_trim", None)
    return trim is not None and bool(trim(0))
