"""The running model's routing, summed over forecasting runs: what `moecast fleet prune-for`
needs to prune a model for a site without ever seeing the site's readings.

Published in the agent's metrics message as

    "expert_load": {"group": "site-7", "model_version": 3, "experts_per_layer": [[0, 1, ...], ...],
                    "runs": 120, "load": [[...], ...]}

`load[l][j]` is the router probability mass layer l gave its j-th kept expert
(`experts_per_layer[l][j]`), summed over every observed token the model read since the model
became active; a layer's row sums to the tokens it saw.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from moecast.bundle.format import Manifest


class ExpertLoad:
    """Sums `expert_load` outputs; observed on the tick thread, read on the metrics thread."""

    def __init__(self, group: str | None = None) -> None:
        self._group = group  # the fleet group, so that prune-for can pick its agents
        self._lock = threading.Lock()
        self._manifest: Manifest | None = None
        self._sum: np.ndarray | None = None
        self._runs = 0

    def reset(self, manifest: Manifest | None) -> None:
        """Start over for a newly active model: loads of two models do not add up."""
        with self._lock:
            self._manifest, self._sum, self._runs = manifest, None, 0

    def add(self, load: np.ndarray | None, runs: int) -> None:
        """Add the summed load of `runs` model runs (a tick's `TickOutcome.expert_load`)."""
        if load is None or runs == 0:
            return
        with self._lock:
            if self._sum is None or self._sum.shape != load.shape:
                self._sum = np.zeros_like(load, dtype=np.float64)
            self._sum += load
            self._runs += runs

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if self._manifest is None or self._sum is None:
                return None
            return {
                "group": self._group,
                "model_version": self._manifest.model_version,
                "experts_per_layer": self._manifest.experts_per_layer,
                "runs": self._runs,
                "load": np.round(self._sum, 3).tolist(),
            }
