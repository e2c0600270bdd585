"""Inputs and an ONNX runner shared by the quantization tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def holed_series(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """Float32 series on different scales: scattered holes in every third row, a short history
    left-padded with NaN in the next; the first row has no gap."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    rows = []
    for i in range(batch):
        level, spread = rng.uniform(-50, 50), 10 ** rng.uniform(-1, 1.5)
        row = level + spread * (np.sin(t / rng.uniform(3, 20) + rng.uniform(0, 6)))
        row += 0.2 * spread * rng.normal(size=length)
        if i % 3 == 1:
            row[rng.random(length) < 0.25] = np.nan
        elif i % 3 == 2:
            row[: rng.integers(length // 2, length - 1)] = np.nan
        rows.append(row)
    return np.stack(rows).astype(np.float32)


def run_onnx(path: Path, values: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"values": values}), strict=True))


def site_series(n_series: int = 4, length: int = 600, seed: int = 0) -> list[np.ndarray]:
    """A site's float64 series of different kinds: daily-like cycles, a trend, a random walk,
    noise; every other one with scattered missing readings."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    kinds = [
        lambda: 20 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, length),
        lambda: 0.05 * t + rng.normal(0, 1.0, length),
        lambda: np.cumsum(rng.normal(0, 1.0, length)),
        lambda: 3 * np.sin(2 * np.pi * t / 12) + 0.01 * t + rng.normal(0, 1.0, length),
    ]
    rows = []
    for i in range(n_series):
        row = kinds[i % len(kinds)]()
        if i % 2:
            row[rng.random(length) < 0.1] = np.nan
        rows.append(row)
    return rows
