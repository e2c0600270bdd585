"""The tick's judgement of the model's raw outputs, run by run, also when several runs are
judged in one call (the tick sorts and publishes blocks of runs together)."""

from __future__ import annotations

import numpy as np
from moecast.agent.forecast.outcome import OutputHealth


def _runs(rng: np.random.Generator, rows: int) -> np.ndarray:
    return np.sort(rng.normal(size=(rows, 4, 5)), axis=-1)


def test_runs_judged_together_equal_runs_judged_one_by_one() -> None:
    rng = np.random.default_rng(0)
    q = _runs(rng, 20)
    q[3, 1, ::-1] = q[3, 1].copy()  # crossings in the first run of 8
    q[17, :, 2] = np.nan  # the last run (4 rows) is not finite: its crossings say nothing
    q[16, 0, ::-1] = q[16, 0].copy()
    together, apart = OutputHealth(), OutputHealth()
    together.observe_runs({4: q}, 8)
    for start in range(0, 20, 8):
        apart.observe_runs({4: q[start : start + 8]}, None)
    assert together.rows == apart.rows == 20
    assert together.non_finite == apart.non_finite == {"h4": 1}
    assert together.crossing_share == apart.crossing_share
    assert together.crossing_share["h4"] == 1 / (8 * 4)  # the worst run's share
    assert together.problem(0.01) == (
        "non_finite",
        "h4 is not finite for 1 of 20 streams",
    )
