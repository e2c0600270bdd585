"""`agent.ops.memory`: the agent caps glibc's malloc arenas, unless the operator chose."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.agent.conftest import REPO

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's"
)

# Twelve threads allocate at once, then glibc's malloc_info counts the arenas (`<heap nr=`).
PROBE = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from moecast.agent.ops.memory import limit_malloc_arenas
    print(limit_malloc_arenas())
    barrier, kept = threading.Barrier(12), []
    def work():
        barrier.wait()
        kept.append([bytearray(4096) for _ in range(50)])
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    path = tempfile.mktemp()
    stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(path).read().count("<heap nr="))
    """
)


def run_probe(probe: str, env: dict[str, str], *args: str) -> list[str]:
    """The words a probe prints, run in a fresh interpreter (its own allocator state)."""
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return done.stdout.split()


def arenas(env: dict[str, str]) -> tuple[str, int]:
    capped, count = run_probe(PROBE, env)
    return capped, int(count)


def test_the_agent_keeps_two_arenas_for_many_threads():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert arenas(env) == ("True", 2)


def test_the_operators_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped, count = arenas({**env, "MALLOC_ARENA_MAX": "4"})
    assert capped == "False"
    assert count == 4


# 64 MB in blocks malloc serves from its heap (above pymalloc's 512 B, below the mmap
# threshold), freed but for the newest, which pins the heap's top: glibc's free() then trims
# nothing, and the pages stay resident until release_free_memory.
TRIM_PROBE = textwrap.dedent(
    """
    import re
    from moecast.agent.ops.memory import release_free_memory
    def rss_mb():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024
    blocks = [bytearray(b"x" * 4000) for _ in range(16_000)]
    pin = blocks.pop()
    del blocks
    freed = rss_mb()
    print(release_free_memory(), freed - rss_mb())
    """
)


def test_freed_heap_pages_go_back_to_the_system() -> None:
    released, returned_mb = run_probe(TRIM_PROBE, dict(os.environ))
    assert released == "True"
    assert float(returned_mb) > 50


# A 4 MB block freed raises glibc's dynamic mmap threshold to 4 MB; then 40 blocks of 1 MB are
# allocated, each followed by a small block that stays, and freed: from the heap, their pages
# stay resident (the small blocks pin them); mapped on their own, they leave at once.
MAPPED_PROBE = textwrap.dedent(
    """
    import ctypes, re, sys
    from moecast.agent.ops.memory import map_large_blocks
    def rss_mb():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024
    mapped = map_large_blocks() if sys.argv[1] == "mapped" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(4 << 20))
    blocks, pins = [], []
    for _ in range(40):
        blocks.append(libc.malloc(1 << 20))
        ctypes.memset(blocks[-1], 1, 1 << 20)
        pins.append(libc.malloc(2000))
    held = rss_mb()
    for block in blocks:
        libc.free(block)
    print(mapped, held - rss_mb())
    """
)


@pytest.mark.parametrize("mapped", [True, False])
def test_large_blocks_leave_the_resident_set_when_freed(mapped: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    was_set, returned_mb = run_probe(MAPPED_PROBE, env, "mapped" if mapped else "heap")
    assert was_set == str(mapped)
    if mapped:
        assert float(returned_mb) > 35
    else:  # the probe's premise: without the setting, the pages stay
        assert float(returned_mb) < 5


def test_the_agent_releases_memory_after_every_tick(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from moecast.agent import runtime
    from moecast.agent.settings import load_settings

    calls: list[str] = []
    monkeypatch.setattr(runtime, "release_free_memory", lambda: calls.append("released"))

    def failing_tick(context: object) -> None:
        calls.append("tick")
        raise RuntimeError("a failed tick releases too")

    agent = runtime.Agent(load_settings(None, storage_dir=tmp_path), on_tick=failing_tick)
    agent._tick()
    assert calls == ["tick", "released"]
