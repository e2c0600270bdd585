"""Reassembly of a chunked bundle: one download at a time, chunks checked as they arrive.

Retained chunks can reach the agent before their announcement (the broker replays retained
messages in no set order), so chunks of an unknown transfer wait in a buffer, bounded in
bytes (each chunk counted with its bookkeeping, so a flood of tiny chunks is bounded too) and
in transfers, oldest transfer evicted first. Pure bookkeeping: no threads, no I/O.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict

from moecast.bundle.format import BundleError
from moecast.bundle.wire import Chunk, ChunkChecksumError, VerifiedAnnouncement, check_chunk

# What a buffered chunk costs beyond its data (dictionary entry, bytes object, key), measured
# at ~430 B in CPython 3.11: charged so that a million 1-byte chunks cannot pass as 1 MB.
CHUNK_OVERHEAD_BYTES = 512
# Transfers whose chunks may wait for their announcement: a real publisher sends one at a time.
MAX_EARLY_TRANSFERS = 4


class MissingChunksError(BundleError):
    """Not every chunk of an announced bundle arrived before the download timed out."""


class Download:
    """The chunks of one verified announcement received so far."""

    def __init__(self, verified: VerifiedAnnouncement, now: float) -> None:
        self.verified = verified
        self.started = now
        self._parts: dict[int, bytes] = {}
        self.bad: set[int] = set()  # indices that came with bytes the transfer does not list
        inline = verified.announcement.model
        if inline is not None:
            self._parts[0] = inline

    @property
    def expected(self) -> int:
        return max(1, len(self.verified.transfer.chunks))

    @property
    def received(self) -> int:
        return len(self._parts)

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    def add(self, chunk: Chunk) -> None:
        """Raises ChunkChecksumError for bytes the signed transfer does not list (and notes
        the index: a download that times out says which chunks only came corrupted)."""
        try:
            check_chunk(self.verified.transfer, chunk)
        except ChunkChecksumError:
            self.bad.add(chunk.index)
            raise
        self._parts[chunk.index] = chunk.data

    def missing(self) -> list[int]:
        return [i for i in range(self.expected) if i not in self._parts]

    def model(self) -> bytes:
        return b"".join(self._parts[i] for i in range(self.expected))


class Reassembler:
    """Holds the current download and the chunks that came before their announcement."""

    def __init__(self, max_buffer_bytes: int) -> None:
        self.download: Download | None = None
        self._max_buffer = max_buffer_bytes
        self._early: OrderedDict[bytes, dict[int, bytes]] = OrderedDict()
        self._early_bytes = 0

    def start(self, verified: VerifiedAnnouncement, now: float | None = None) -> Download:
        """Begin downloading `verified`, replacing any other download, with the chunks of it
        that arrived early; those the signed transfer does not list are dropped."""
        download = Download(verified, time.monotonic() if now is None else now)
        self.download = download
        early = self._early.pop(verified.transfer_id, {})
        self._early_bytes -= _cost(early)
        for index, data in early.items():
            with contextlib.suppress(ChunkChecksumError):
                download.add(Chunk(verified.transfer_id, index, data))
        return download

    def add(self, chunk: Chunk) -> Download | None:
        """File `chunk`; returns the current download when the chunk belongs to it."""
        download = self.download
        if download is not None and chunk.transfer_id == download.verified.transfer_id:
            download.add(chunk)
            return download
        self._buffer(chunk)
        return None

    def finish(self) -> None:
        self.download = None

    def timed_out(self, timeout_s: float, now: float | None = None) -> Download | None:
        """The current download when it has waited longer than `timeout_s` for chunks."""
        download = self.download
        now = time.monotonic() if now is None else now
        if download is not None and now - download.started > timeout_s:
            return download
        return None

    def _buffer(self, chunk: Chunk) -> None:
        if len(chunk.data) + CHUNK_OVERHEAD_BYTES > self._max_buffer:
            return
        parts = self._early.setdefault(chunk.transfer_id, {})
        self._early.move_to_end(chunk.transfer_id)
        old = parts.get(chunk.index)
        self._early_bytes += len(chunk.data) - (0 if old is None else len(old))
        self._early_bytes += CHUNK_OVERHEAD_BYTES if old is None else 0
        parts[chunk.index] = chunk.data
        while self._early and (
            self._early_bytes > self._max_buffer or len(self._early) > MAX_EARLY_TRANSFERS
        ):
            _, dropped = self._early.popitem(last=False)
            self._early_bytes -= _cost(dropped)

    @property
    def buffered_bytes(self) -> int:
        """What the chunks waiting for their announcement cost, as counted against the bound."""
        return self._early_bytes


def _cost(parts: dict[int, bytes]) -> int:
    return sum(len(data) + CHUNK_OVERHEAD_BYTES for data in parts.values())
