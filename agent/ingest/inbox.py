"""What passes from the network thread to the writer thread: one bounded queue of messages,
plus markers the writer answers once everything queued before them is stored."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One PUBLISH as the network thread saw it."""

    topic: str | None  # None: the topic was not valid UTF-8
    payload: bytes
    arrival_ts: float  # unix seconds, stamps readings that carry no time
    mid: int
    qos: int
    connection: int  # which connection delivered it: acks go back only on that one (agent.mqtt)


class Flush:
    """A marker in the ingest queue: the writer sets `done` once everything before it is
    stored and acknowledged, and stops afterwards if `then_stop`."""

    def __init__(self, then_stop: bool = False) -> None:
        self.done = threading.Event()
        self.then_stop = then_stop


Inbox = queue.Queue[InboundMessage | Flush]
