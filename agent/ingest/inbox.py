"""What passes from the network thread to the writer thread: one queue of messages, bounded in
messages and in payload bytes, plus markers the writer answers once everything queued before
them is stored.

Both ends run once per message, so both are kept short: a message is a tuple (built and read in
C), and the writer takes everything queued, up to its batch limits, under one lock (`take`)
rather than a Queue.get and its notifications per message."""

from __future__ import annotations

import queue
import threading
import time
from typing import NamedTuple


class InboundMessage(NamedTuple):
    """One PUBLISH as the network thread saw it."""

    topic: str | None  # None: the topic was not valid UTF-8
    payload: bytes
    arrival_ts: float  # unix seconds, stamps readings that carry no time
    mid: int
    qos: int
    connection: int  # which connection delivered it: acks go back only on that one (agent.mqtt)
    # The size of a payload over the limit, which the network thread dropped (`payload` is then
    # empty): the message still passes through the writer, to be counted and acknowledged.
    oversized: int = 0


class Flush:
    """A marker in the ingest queue: the writer sets `done` once everything before it is
    stored and acknowledged, and stops afterwards if `then_stop`."""

    def __init__(self, then_stop: bool = False) -> None:
        self.done = threading.Event()
        self.then_stop = then_stop


def _size(item: InboundMessage | Flush) -> int:
    return len(item.payload) if type(item) is InboundMessage else 0


class Inbox(queue.Queue[InboundMessage | Flush]):
    """A queue bounded by `maxsize` messages and by `max_bytes` of queued payloads (0: no
    bound). A count alone lets a flood of large messages take gigabytes: ten thousand of one
    MB each. A message larger than `max_bytes` still fits into an empty queue, so nothing
    waits forever. `put_nowait` raises `queue.Full` on either bound, `put` waits for room."""

    def __init__(self, maxsize: int = 0, max_bytes: int = 0) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self._bytes = 0

    @property
    def queued_bytes(self) -> int:
        """Payload bytes queued now."""
        with self.mutex:
            return self._bytes

    def put(
        self, item: InboundMessage | Flush, block: bool = True, timeout: float | None = None
    ) -> None:
        # queue.Queue.put with the byte bound added to its condition.
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        size = _size(item)
        with self.not_full:
            if self._no_room(size):
                if not block:
                    raise queue.Full
                if timeout is None:
                    while self._no_room(size):
                        self.not_full.wait()
                else:
                    deadline = time.monotonic() + timeout
                    while self._no_room(size):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0.0:
                            raise queue.Full
                        self.not_full.wait(remaining)
            self.queue.append(item)
            self._bytes += size
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def take(self, max_messages: int, max_bytes: int) -> list[InboundMessage | Flush]:
        """Wait for an item, then take the queued ones, oldest first, while fewer than
        `max_messages` and `max_bytes` of payload are taken (so at least one), up to and
        including the first Flush."""
        items: list[InboundMessage | Flush] = []
        size = 0
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait()
            pending = self.queue
            while pending and len(items) < max_messages and size < max_bytes:
                item = pending.popleft()
                items.append(item)
                if type(item) is not InboundMessage:
                    break
                size += len(item.payload)
            self._bytes -= size
            self.not_full.notify_all()
        return items

    def _no_room(self, size: int) -> bool:
        if 0 < self.maxsize <= len(self.queue):
            return True
        return 0 < self.max_bytes < self._bytes + size and self._bytes > 0

    def _put(self, item: InboundMessage | Flush) -> None:
        super()._put(item)
        self._bytes += _size(item)

    def _get(self) -> InboundMessage | Flush:
        item = super()._get()
        size = _size(item)
        if size:
            self._bytes -= size
            # Queue.get wakes one waiter, but freed bytes may make room for several puts.
            self.not_full.notify_all()
        return item
