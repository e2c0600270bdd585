"""The tick's judgement of the model's raw outputs, run by run, also when several runs are
judged in one call (the tick sorts and publishes blocks of runs together)."""

from __future__ import annotations

import warnings

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


def _reference_crossings(q: np.ndarray) -> np.ndarray:
    """Every step judged with its own slack, in float64: what the fast path must equal."""
    values = q.astype(np.float64)
    with np.errstate(invalid="ignore"):
        slack = 1e-6 * (1.0 + np.abs(values).max(axis=-1, keepdims=True))
        return (np.diff(values, axis=-1) < -slack).any(axis=-1).sum(axis=1)


def test_a_crossing_within_float_rounding_is_forgiven_and_a_real_one_counted() -> None:
    rng = np.random.default_rng(1)
    q = (np.sort(rng.normal(size=(6, 3, 5)), axis=-1) * 1e6).astype(np.float32)
    q[0, 0, 2] = q[0, 0, 3] + 0.25  # crosses by far less than 1e-6 of its magnitude
    q[1, 1, 1] = q[1, 1, 2] + 5e3  # a real crossing
    q[2, 2, 4] = np.inf  # not finite: counted there, its order says nothing
    q[3, 0, 0] = -np.inf
    health = OutputHealth()
    health.observe_runs({3: q}, None)
    assert health.non_finite == {"h3": 2}
    # One run with non-finite rows: crossings are not judged on it.
    assert "h3" not in health.crossing_share
    finite_rows = np.r_[0, 1, 4, 5]
    health = OutputHealth()
    health.observe_runs({3: q[finite_rows]}, None)
    assert health.crossing_share == {"h3": 1 / (4 * 3)}
    assert _reference_crossings(q[finite_rows]).sum() == 1


def test_the_fast_crossing_count_equals_a_step_by_step_reference() -> None:
    rng = np.random.default_rng(2)
    q = np.sort(rng.normal(size=(64, 8, 9)), axis=-1).astype(np.float32)
    # Random swaps, some within rounding, some not, at every scale.
    scale = (10.0 ** rng.integers(-3, 8, size=(64, 1, 1))).astype(np.float32)
    q *= scale
    for row, step, level in rng.integers(0, [64, 8, 8], size=(200, 3)):
        bump = rng.choice([1e-8, 1e-7, 1e-3, 1.0]) * scale[row, 0, 0]
        q[row, step, level] = q[row, step, level + 1] + bump
    health = OutputHealth()
    health.observe_runs({8: q}, 8)
    expected = _reference_crossings(q).reshape(8, 8).sum(axis=1) / (8 * 8)
    assert health.crossing_share == {"h8": float(expected.max())}


def test_a_row_of_infinities_is_not_finite_and_judged_without_warnings() -> None:
    q = np.sort(np.random.default_rng(3).normal(size=(4, 2, 5)), axis=-1)
    q[1, 0] = [-np.inf, -np.inf, 3.0, 2.0, np.inf]  # decreasing, and inf - inf on the way
    health = OutputHealth()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        health.observe_runs({2: q}, 2)
    assert health.non_finite == {"h2": 1}
    assert health.crossing_share == {"h2": 0.0}  # the one whole run has no crossing
