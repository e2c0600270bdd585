"""`agent.ops.memory`: the agent caps glibc's malloc arenas, unless the operator chose."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

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


def arenas(env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        check=True,
    )
    capped, count = done.stdout.split()
    return capped, int(count)


def test_the_agent_keeps_two_arenas_for_many_threads():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert arenas(env) == ("True", 2)


def test_the_operators_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped, count = arenas({**env, "MALLOC_ARENA_MAX": "4"})
    assert capped == "False"
    assert count == 4
