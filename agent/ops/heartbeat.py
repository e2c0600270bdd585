"""A heartbeat file for health checks from outside the process (Docker's HEALTHCHECK).

The agent's main loop rewrites `<storage_dir>/heartbeat` every BEAT_EVERY_S while its writer
thread is alive; `moecast agent --health` reads it. A process that is running but stuck (a
deadlock, a hung store) stops beating, which a mere "is the process alive" check cannot see.
The beat is rare on purpose: a device's SD card should not take a write every second for it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HEARTBEAT_FILE = "heartbeat"
BEAT_EVERY_S = 10.0
STALE_AFTER_S = 60.0  # several missed beats, not one slow one


class Heartbeat:
    """Writes the heartbeat file at most every `every_s`; `stop` removes it."""

    def __init__(self, path: Path, every_s: float = BEAT_EVERY_S) -> None:
        self.path = path
        self._every_s = every_s
        self._last: float | None = None

    def beat(self, connected: bool) -> None:
        now = time.time()
        if self._last is not None and now - self._last < self._every_s:
            return
        self._last = now
        partial = self.path.with_name(self.path.name + ".tmp")
        try:
            partial.write_text(json.dumps({"ts": now, "connected": connected}))
            os.replace(partial, self.path)  # a reader never sees half a file
        except OSError:
            pass  # a full disk shows up as a stale heartbeat, which is the point

    def stop(self) -> None:
        self.path.unlink(missing_ok=True)


def check(path: Path, stale_after_s: float = STALE_AFTER_S) -> tuple[bool, str]:
    """(healthy, one line saying why) from the heartbeat file at `path`."""
    try:
        beat = json.loads(path.read_text())
        age = time.time() - float(beat["ts"])
    except FileNotFoundError:
        return False, f"unhealthy: no heartbeat at {path} (is the agent running?)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"unhealthy: unreadable heartbeat {path}: {err}"
    broker = "connected to the broker" if beat.get("connected") else "not connected to the broker"
    if age > stale_after_s:
        return False, f"unhealthy: last heartbeat {age:.0f} s ago (limit {stale_after_s:.0f} s)"
    return True, f"healthy: heartbeat {age:.0f} s ago, {broker}"
