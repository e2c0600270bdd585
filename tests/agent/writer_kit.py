"""An ingest writer over a SQLite file, fed messages with the arrival times a test chooses (the
agent's clock, injected), and restarted on the same file: no broker, no sleeping."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moecast.agent.ingest.inbox import InboundMessage, Inbox
from moecast.agent.ingest.readings import StreamId
from moecast.agent.ingest.store import ReadingStore
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ingest.writer import IngestWorker
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.settings import AgentSettings, load_settings


class RecordingAcknowledger:
    """Stands for the MQTT link: records the mids the writer acknowledges."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        mids = [m.mid for m in messages if m.qos]
        self.acked += mids
        return len(mids)


class WriterKit:
    """`feed` messages at chosen arrival times, `restart` on the same database."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.settings: AgentSettings = load_settings(
            agent_id="kit", storage_dir=directory, **settings
        )
        self._mid = 0
        self._open()

    def _open(self) -> None:
        self.inbox: Inbox = queue.Queue(1000)
        self.store = ReadingStore(self.settings.readings_db, self.settings.limits.store)
        self.registry = StreamRegistry(self.settings.limits.streams)
        self.metrics = AgentMetrics()
        self.acks = RecordingAcknowledger()
        self.worker = IngestWorker(
            self.inbox,
            self.store,
            self.registry,
            self.acks,
            self.metrics,
            self.settings.ingest,
            self.settings.topics.sensors,
            self.settings.limits.payload,
        )
        self.worker.start()

    def feed(self, stream: str, document: object, arrival: float, qos: int = 1) -> None:
        """Publish `document` (JSON) on sensors/<stream>, arriving at `arrival`; waits until
        it is stored and acknowledged."""
        self._mid += 1
        payload = json.dumps(document).encode()
        self.inbox.put(
            InboundMessage(f"sensors/{stream}", payload, arrival, self._mid, qos, connection=1)
        )
        assert self.worker.flush(5)

    def restart(self) -> None:
        assert self.worker.stop(5)
        self.store.close()
        self._open()

    def close(self) -> None:
        self.worker.stop(5)
        self.store.close()

    def held(self, stream: str) -> list[float]:
        """Event times in the stream's buffer; [] for a stream not held."""
        device, sensor = stream.split("/")
        snapshot = self.registry.snapshot(StreamId(device, sensor))
        return [] if snapshot is None else snapshot[0].tolist()
