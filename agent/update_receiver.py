"""Reassembly of a chunked bundle: one download at a time, chunks checked as they arrive.

Retained chunks can reach the agent before their announcement (the broker replays retained
messages in no set order), so chunks of an unknown transfer wait in a buffer, bounded in
bytes, oldest transfer evicted first. Pure bookkeeping: no threads, no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from agent.bundle import BundleError
from agent.update_wire import Chunk, VerifiedAnnouncement, check_chunk


class MissingChunksError(BundleError):
    """Not every chunk of an announced bundle arrived before the download timed out."""


class Download:
    """The chunks of one verified announcement received so far."""

    def __init__(self, verified: VerifiedAnnouncement, now: float) -> None:
        self.verified = verified
        self.started = now
        self._parts: dict[int, bytes] = {}
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
        """Raises ChunkChecksumError for bytes the signed transfer does not list."""
        check_chunk(self.verified.transfer, chunk)
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
        that arrived early. Raises ChunkChecksumError if one of those is not the signed one."""
        download = Download(verified, time.monotonic() if now is None else now)
        self.download = download
        early = self._early.pop(verified.transfer_id, {})
        self._early_bytes -= sum(map(len, early.values()))
        for index, data in early.items():
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
        if len(chunk.data) > self._max_buffer:
            return
        parts = self._early.setdefault(chunk.transfer_id, {})
        self._early.move_to_end(chunk.transfer_id)
        self._early_bytes += len(chunk.data) - len(parts.get(chunk.index, b""))
        parts[chunk.index] = chunk.data
        while self._early_bytes > self._max_buffer and self._early:
            _, dropped = self._early.popitem(last=False)
            self._early_bytes -= sum(map(len, dropped.values()))
