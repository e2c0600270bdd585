"""Shared fixtures. Tests that need torch skip cleanly on an agent-only install."""

from __future__ import annotations

import os

# Small models run fastest single-threaded; it also keeps test timings stable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
