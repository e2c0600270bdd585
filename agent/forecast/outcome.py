"""What a forecasting tick did, returned by the tick rather than reported through a callback:
who ran, what was skipped, the health of the model's raw outputs (a model on trial is judged
on it) and the routing mass it used (per-site pruning reads it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from moecast.bundle.format import EXPERT_LOAD_NAME, output_name


@dataclass
class OutputHealth:
    """The worst of every model run of a tick, per head, on the raw (unsorted) outputs."""

    rows: int = 0
    non_finite: dict[str, int] = field(default_factory=dict)  # head -> rows with NaN/inf
    crossing_share: dict[str, float] = field(default_factory=dict)  # head -> worst run's share

    def observe(self, outputs: dict[str, np.ndarray], horizons: tuple[int, ...]) -> None:
        """One model run's outputs."""
        self.observe_runs({h: outputs[output_name(h)] for h in horizons}, None)

    def observe_runs(self, quantiles: dict[int, np.ndarray], run_rows: int | None) -> None:
        """The raw quantiles (`[rows, h, levels]` per head) of consecutive model runs of
        `run_rows` rows each (None: one run), judged run by run in a few numpy calls."""
        rows = len(next(iter(quantiles.values())))
        size = rows if run_rows is None else run_rows
        starts = np.arange(0, rows, size)
        per_run = np.diff(np.append(starts, rows))
        for horizon, q in quantiles.items():
            name = output_name(horizon)
            values = np.asarray(q)
            # NaN and inf propagate through a sum, which float64 cannot overflow here.
            with np.errstate(invalid="ignore"):  # inf - inf is NaN: not finite either way
                finite = np.isfinite(values.reshape(rows, -1).sum(axis=1, dtype=np.float64))
            self.non_finite[name] = self.non_finite.get(name, 0) + int(np.count_nonzero(~finite))
            crossed = _crossed_steps(values)
            whole = np.add.reduceat(finite.astype(np.int64), starts) == per_run
            if not whole.any():
                continue  # crossings of NaN say nothing
            shares = np.add.reduceat(crossed, starts) / (per_run * values.shape[1])
            worst = float(shares[whole].max())
            self.crossing_share[name] = max(self.crossing_share.get(name, 0.0), worst)
        self.rows += rows

    def problem(self, max_crossing_share: float) -> tuple[str, str] | None:
        """Why these outputs are unhealthy, as (reason, detail), or None: non-finite values,
        or more than `max_crossing_share` of a run's forecast steps with quantiles out of
        order."""
        for name, bad in self.non_finite.items():
            if bad:
                return "non_finite", f"{name} is not finite for {bad} of {self.rows} streams"
        for name, share in self.crossing_share.items():
            if share > max_crossing_share:
                return "crossing", f"{name}: quantiles cross in {share:.1%} of the steps"
        return None


def _crossed_steps(values: np.ndarray) -> np.ndarray:
    """Per row of `[rows, steps, levels]`, the steps whose quantiles cross by more than a
    relative slack: float rounding of two equal quantiles is not a crossing. The slack is
    worked out only for the steps that decrease at all, which outputs of a healthy model
    rarely do (a 1000-stream tick judges ~1M values)."""
    decreasing = (values[..., 1:] < values[..., :-1]).any(axis=-1)
    rows, steps = np.nonzero(decreasing)
    crossed = np.zeros(values.shape[0], dtype=np.int64)
    if rows.size:
        candidates = values[rows, steps].astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf in a row that is not finite anyway
            slack = 1e-6 * (1.0 + np.abs(candidates).max(axis=-1, keepdims=True))
            real = (np.diff(candidates, axis=-1) < -slack).any(axis=-1)
        np.add.at(crossed, rows[real], 1)
    return crossed


@dataclass
class TickOutcome:
    """One tick of the forecaster."""

    model_version: int
    forecast: int = 0  # streams whose forecast was published
    skipped: Counter[str] = field(default_factory=Counter)
    runs: int = 0  # model runs (batches)
    health: OutputHealth = field(default_factory=OutputHealth)
    expert_load: np.ndarray | None = None  # summed over the runs whose load was finite
    expert_load_runs: int = 0

    def observe_run(
        self, outputs: dict[str, np.ndarray], horizons: tuple[int, ...], health: bool = True
    ) -> None:
        """One model run; `health=False` when the caller judges the outputs of several runs
        at once (`OutputHealth.observe_runs`)."""
        self.runs += 1
        if health:
            self.health.observe(outputs, horizons)
        load = outputs.get(EXPERT_LOAD_NAME)
        if load is None:
            return
        load = np.asarray(load, dtype=np.float64)
        # A forecast of non-finite values says nothing about routing and would poison the sum.
        if not np.isfinite(load).all():
            return
        if self.expert_load is None or self.expert_load.shape != load.shape:
            self.expert_load = np.zeros_like(load)
        self.expert_load += load
        self.expert_load_runs += 1
