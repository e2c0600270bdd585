"""Live skill: the forecast steps the agent issued, kept until their grid bins close, and rolling
per-stream, per-head summaries of how they fared.

Everything is held in flat numpy arrays over all streams (a stream is a *slot*, a row of the
per-stream arrays), so a tick scores a thousand streams in a few dozen numpy calls rather than
a loop per stream.

Scoring: a step of a forecast issued with its grid ending at `grid_end` lies in the bin
`(grid_end + (i-1) * interval, grid_end + i * interval]`. Its realised value is the bin's mean,
read from the stream's grid of a later tick (the same `to_grid` bins the model reads); the bin is
closed once the stream's grid has moved past it, i.e. a newer reading exists. A closed bin without
readings is *missing*: dropped, never scored. Each scored step gives the absolute error of the
published median, the naive forecast's error (the last grid value known at issue time) and
whether the value fell inside the outer quantiles (nominally 80 % for levels 0.1..0.9).

Summaries are exponentially weighted over scored steps: each new step weighs 1 and every earlier
one decays by `decay = 1 - 1/window` per step scored after it (steps scored in the same tick
all weigh 1). So with sums S and weight W, MAE = S_abs / W, skill = 1 - S_abs / S_naive and
coverage = S_inside / W; `count` is every step scored, undecayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Bytes one pending step takes in PendingSteps: slot (4), head (1), bin end (8), naive value (4),
# issued at (8) and one float32 per quantile level.
STEP_OVERHEAD_BYTES = 25


@dataclass(frozen=True, slots=True)
class Steps:
    """A set of forecast steps, column-wise."""

    slot: np.ndarray  # int32
    head: np.ndarray  # int8, index into the model's horizons
    bin_end: np.ndarray  # float64, label (end) of the step's bin
    naive: np.ndarray  # float32, the last grid value known when it was issued
    issued_at: np.ndarray  # float64
    quantiles: np.ndarray  # float32 [n, levels], as published (sorted, calibrated)

    @staticmethod
    def empty(levels: int) -> Steps:
        return Steps(
            np.empty(0, np.int32),
            np.empty(0, np.int8),
            np.empty(0, np.float64),
            np.empty(0, np.float32),
            np.empty(0, np.float64),
            np.empty((0, levels), np.float32),
        )

    def __len__(self) -> int:
        return int(self.slot.size)

    def take(self, index: np.ndarray | slice) -> Steps:
        return Steps(
            self.slot[index],
            self.head[index],
            self.bin_end[index],
            self.naive[index],
            self.issued_at[index],
            self.quantiles[index],
        )

    @staticmethod
    def concat(parts: list[Steps]) -> Steps:
        return Steps(*(np.concatenate([getattr(p, f) for p in parts]) for f in Steps.__slots__))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in Steps.__slots__)


class PendingSteps:
    """Issued steps whose bins have not closed yet, for every stream: chunks of at most
    CHUNK_STEPS steps, oldest first.

    Chunks, not one array: taking a tick's closed steps out copies a chunk at a time, so the
    memory a tick adds is a chunk's (~1 MB), not a second copy of every pending step (1000
    streams: ~6 MB pending, 6.4 MB recorded by the first tick alone). Once there are more
    than MAX_CHUNKS, the smallest neighbouring chunks are merged.
    """

    CHUNK_STEPS = 16384
    MAX_CHUNKS = 64

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.chunks: list[Steps] = []

    def add(self, *parts: Steps) -> None:
        """Append steps, packed into chunks of at most CHUNK_STEPS. Each chunk is a copy: a
        view would keep the whole array it came from alive until its last chunk is gone."""
        pieces: list[Steps] = []
        size = 0
        for part in parts:
            for start in range(0, len(part), self.CHUNK_STEPS):
                piece = part.take(slice(start, start + self.CHUNK_STEPS))
                if size + len(piece) > self.CHUNK_STEPS:
                    self.chunks.append(Steps.concat(pieces))
                    pieces, size = [], 0
                pieces.append(piece)
                size += len(piece)
        if pieces:
            self.chunks.append(Steps.concat(pieces))  # concatenating copies, even one piece

    def remove(self, select: Callable[[Steps], np.ndarray]) -> Steps:
        """Take out the steps `select` marks (a boolean mask of a chunk) and return them, in
        the order they were added."""
        taken = []
        for i, chunk in enumerate(self.chunks):
            mask = select(chunk)
            if mask.any():
                taken.append(chunk.take(mask))
                # Replaced at once, so that the old chunk is freed before the next is copied.
                self.chunks[i] = chunk.take(~mask)
        self.chunks = [chunk for chunk in self.chunks if len(chunk)]
        self._merge_small()
        return Steps.concat(taken) if taken else Steps.empty(self.levels)

    def _merge_small(self) -> None:
        while len(self.chunks) > self.MAX_CHUNKS:
            sizes = np.array([len(c) for c in self.chunks])
            i = int(np.argmin(sizes[:-1] + sizes[1:]))
            self.chunks[i : i + 2] = [Steps.concat(self.chunks[i : i + 2])]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)


class SkillBook:
    """Exponentially weighted error sums per (slot, head)."""

    FIELDS = ("count", "weight", "abs_error", "naive_error", "inside")

    def __init__(self, heads: int, window: int, capacity: int = 0) -> None:
        self.heads = heads
        self.decay = 1.0 - 1.0 / window
        self.count = np.zeros((capacity, heads), np.int64)
        self.weight = np.zeros((capacity, heads))
        self.abs_error = np.zeros((capacity, heads))
        self.naive_error = np.zeros((capacity, heads))
        self.inside = np.zeros((capacity, heads))

    def grow(self, capacity: int) -> None:
        for name in self.FIELDS:
            old = getattr(self, name)
            new = np.zeros((capacity, self.heads), old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def reset(self, slot: int) -> None:
        for name in self.FIELDS:
            getattr(self, name)[slot] = 0

    def add(
        self,
        slot: np.ndarray,
        head: np.ndarray,
        abs_error: np.ndarray,
        naive_error: np.ndarray,
        inside: np.ndarray,
    ) -> None:
        """Fold in one tick's scored steps."""
        if slot.size == 0:
            return
        cells = self.count.size
        key = slot.astype(np.intp) * self.heads + head
        n = np.bincount(key, minlength=cells)
        factor = self.decay ** n.astype(np.float64)  # 1 where nothing was scored
        for name, values in (
            ("abs_error", abs_error),
            ("naive_error", naive_error),
            ("inside", inside),
        ):
            flat = getattr(self, name).reshape(-1)
            flat *= factor
            flat += np.bincount(key, weights=values, minlength=cells)
        weight = self.weight.reshape(-1)
        weight *= factor
        weight += n
        self.count.reshape(-1)[:] += n

    def summary(self) -> dict[str, np.ndarray]:
        """Per (slot, head): n, mae, naive_mae, skill, coverage (NaN where undefined)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(self.weight > 0, self.weight, np.nan)
            naive = np.where(self.naive_error > 0, self.naive_error, np.nan)
            return {
                "n": self.count,
                "mae": self.abs_error / w,
                "naive_mae": self.naive_error / w,
                "skill": 1.0 - self.abs_error / naive,
                "coverage": self.inside / w,
            }

    def state(self, slot: int) -> dict[str, list[float]]:
        return {name: getattr(self, name)[slot].tolist() for name in self.FIELDS}

    def restore(self, slot: int, state: dict[str, list[float]]) -> None:
        for name in self.FIELDS:
            values = state.get(name)
            if values is not None and len(values) == self.heads:
                getattr(self, name)[slot] = values
