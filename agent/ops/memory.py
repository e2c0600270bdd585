"""glibc's malloc, tuned for the agent: at most two arenas, large blocks mapped on their own,
free pages released after ticks.

glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in
one arena is not reused by another: the MQTT network loop, the ingest writer, the scheduler
and the forecasting tick each grow a heap of their own. Measured with
`benchmarks/agent_throughput.py --quick` (1000 streams, the default bundle, 2-vCPU EPYC):
peak RSS 210 MB with glibc's default, 190 MB with two arenas (174 and 146 MB before the first
tick), at the same ingest rates and tick time. `MALLOC_ARENA_MAX` in the environment, the
operator's choice, wins. Without glibc (musl, macOS) nothing changes.

Large blocks: glibc maps a block of at least its mmap threshold on its own and unmaps it when
freed, but the threshold rises to the size of every mapped block freed (up to 32 MB), so after
the first tick a tick's arrays of a few hundred KB to a few MB come from the heap, and their
pages stay resident until the release after the tick: the tick's peak was the sum of all it
allocated. Fixed at 128 KiB (glibc's starting value), each goes back as it is freed: with
`python benchmarks/agent_memory.py`, ticks peaked 4-5 MB lower (164-165 against 168-170 MB).
`MALLOC_MMAP_THRESHOLD_` in the environment wins.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

MAX_ARENAS = 2
MMAP_THRESHOLD = 128 * 1024
# From glibc's malloc.h.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (whose malloc these functions tune); else None."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def limit_malloc_arenas(count: int = MAX_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `count`; call before the agent's threads start (each takes
    its arena at its first allocation). True when the cap was set."""
    return _mallopt(_M_ARENA_MAX, count, "MALLOC_ARENA_MAX")


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Map every block of `threshold` bytes or more on its own, for good (the threshold no
    longer rises), so that it leaves the resident set as it is freed. True when set."""
    return _mallopt(_M_MMAP_THRESHOLD, threshold, "MALLOC_MMAP_THRESHOLD_")


def _mallopt(option: int, value: int, environment: str) -> bool:
    libc = _glibc()
    if os.environ.get(environment) is not None or libc is None:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or mallopt(option, value) != 1:
        log.debug("could not set glibc's malloc option %d to %d", option, value)
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
