"""Piecewise-constant series: what state-like and coarse sensors report.

Occupancy and door contacts (0/1), relays and pumps (off / on / a few stages), light levels,
setpoints, and slow quantities read through a coarse ADC (a room temperature at 0.5 degC
resolution) stay exactly on one value for long runs and then jump. Persistence is the best
forecast for most of their steps, and any wobble around a flat run costs more than the jumps:
the smooth generator families never teach that.

States switch as a Markov chain whose switching rate may follow the time of day (lights and
occupancy change in the daytime); levels are held exactly, optionally with a little noise
only while "on" (a running motor vibrates, an idle one reads 0).
"""

from __future__ import annotations

import numpy as np
from moecast.model.data._validation import require_length

STEPS_PER_DAY = (24, 48, 96, 288, 1440)  # hourly .. one-minute readings


def regime_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """A piecewise-constant series: a Markov-switching state or a coarsely quantised walk."""
    require_length(length)
    if rng.random() < 0.3:
        return _coarse_walk(rng, length)
    return _switching_states(rng, length)


def _switching_states(rng: np.random.Generator, length: int) -> np.ndarray:
    n_states = int(rng.choice([2, 2, 3, 4, 6]))
    levels = np.sort(rng.normal(0.0, 1.0, size=n_states))
    if rng.random() < 0.5:
        levels[0] = 0.0  # "off" reads exactly zero
    # Mean run length from a few readings to a few hundred.
    switch_rate = 10 ** rng.uniform(-2.5, -0.7)
    rate = np.full(length, switch_rate)
    if rng.random() < 0.6:
        per_day = int(rng.choice(STEPS_PER_DAY))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        daytime = 0.5 * (1.0 + np.sin(2.0 * np.pi * np.arange(length) / per_day + phase))
        rate = switch_rate * (0.1 + 1.9 * daytime)
    switches = rng.random(length) < np.clip(rate, 0.0, 1.0)
    # Next state: a neighbour most of the time (stages step up and down), else any state.
    moves = np.where(rng.random(length) < 0.8, rng.choice([-1, 1], size=length), 0)
    jumps = rng.integers(0, n_states, size=length)
    state = np.empty(length, dtype=np.int64)
    current = int(rng.integers(n_states))
    for i in range(length):
        if switches[i]:
            current = (
                int(np.clip(current + moves[i], 0, n_states - 1)) if moves[i] else int(jumps[i])
            )
        state[i] = current
    values = levels[state]
    if rng.random() < 0.3:
        noise = rng.normal(0.0, 0.05 * np.ptp(levels) + 1e-3, size=length)
        values = values + np.where(state > 0, noise, 0.0)
    return values.astype(np.float32)


def _coarse_walk(rng: np.random.Generator, length: int) -> np.ndarray:
    steps = rng.normal(0.0, 1.0, size=length)
    walk = np.cumsum(steps) * 0.05
    if rng.random() < 0.5:
        per_day = int(rng.choice(STEPS_PER_DAY))
        walk = walk + np.sin(2.0 * np.pi * np.arange(length) / per_day + rng.uniform(0, 6.3))
    # A resolution of several typical steps: the reading holds, then ticks by one unit.
    resolution = float(np.std(np.diff(walk)) * 10 ** rng.uniform(0.3, 1.5)) + 1e-9
    return (np.round(walk / resolution) * resolution).astype(np.float32)
