"""glibc's malloc, tuned for the agent: at most two arenas, free pages released after ticks.

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
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

MAX_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (whose malloc these functions tune); else None."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def limit_malloc_arenas(count: int = MAX_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `count`; call before the agent's threads start (each takes
    its arena at its first allocation). True when the cap was set."""
    libc = _glibc()
    if os.environ.get("MALLOC_ARENA_MAX") is not None or libc is None:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or mallopt(_M_ARENA_MAX, count) != 1:
        log.debug("could not cap glibc's malloc arenas")
        return False
    return True


def release_free_memory() -> bool:
    """Hand the free pages at the top and inside of glibc's heaps back to the system
    (`malloc_trim(0)`); True when glibc's malloc did it. The agent calls it after every tick:
    a tick's arrays and payloads are freed when it ends, but glibc keeps their pages for
    reuse, and without the release the resident set crept up over the first ticks
    (`python benchmarks/agent_memory.py`: see the README)."""
    trim = getattr(_glibc(), "malloc_trim", None)
    return trim is not None and bool(trim(0))
