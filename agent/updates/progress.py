"""Progress of fleet updates, published retained on `<agents>/<agent_id>/bundle`:

    {"state": "received"|"verified"|"active"|"committed"|"rolled_back"|"rejected",
     "agent_id": ..., "group": ..., "model_version": <the update's>, "active_version": ...,
     "reason": ..., "detail": ..., "ts": ...}

`reason` is a short word from REASONS (or "restarted_during_trial", "tick_failed",
"non_finite", "crossing") that `moecast fleet status` tabulates; `detail` says it in words.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson
from moecast.agent.settings import AgentSettings
from moecast.agent.updates.reassembly import MissingChunksError

from moecast.bundle.format import (
    BundleError,
    ChecksumError,
    GoldenMismatchError,
    InterfaceError,
    ManifestError,
    ModelLoadError,
    NoTrustedKeyError,
    SignatureError,
    UnsupportedFormatError,
)
from moecast.bundle.wire import ChunkChecksumError, TransferError, UnsignedError, WireError

log = logging.getLogger("moecast.agent.updates")


class NotNewerError(BundleError):
    """The bundle is not newer than the active one, and its signed manifest allows no
    downgrade."""


class StorageError(BundleError):
    """The bundle could not be written to its slot (disk full, read-only storage)."""


# Looked up along the exception's class hierarchy: the most specific class wins.
REASONS: dict[type[BaseException], str] = {
    UnsignedError: "unsigned",
    NoTrustedKeyError: "no_trusted_key",
    SignatureError: "signature",
    UnsupportedFormatError: "format_version",
    ManifestError: "manifest",
    WireError: "malformed",
    TransferError: "transfer",
    ChunkChecksumError: "chunk_checksum",
    MissingChunksError: "missing_chunks",
    ChecksumError: "model_checksum",
    ModelLoadError: "model_load",
    InterfaceError: "interface",
    GoldenMismatchError: "golden",
    NotNewerError: "not_newer",
    StorageError: "storage",
}


def reason_of(error: BaseException) -> str:
    return next((REASONS[c] for c in type(error).__mro__ if c in REASONS), "bundle")


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes | str, qos: int, retain: bool = False
    ) -> object: ...


class UpdateProgress:
    """Logs each step of an update and publishes it, retained (the link queues what is
    published before it connects)."""

    def __init__(self, settings: AgentSettings, link: Publisher) -> None:
        self._settings = settings
        self._link = link

    def report(
        self,
        state: str,
        model_version: int | None,
        active_version: int | None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        message: dict[str, Any] = {
            "state": state,
            "agent_id": self._settings.agent_id,
            "group": self._settings.updates.group,
            "model_version": model_version,
            "active_version": active_version,
            "reason": reason,
            "detail": detail,
            "ts": round(time.time(), 3),
        }
        level = logging.WARNING if state in ("rejected", "rolled_back") else logging.INFO
        log.log(level, "bundle update: %s %s %s", state, reason or "", detail or "")
        self._link.publish(
            self._settings.bundle_status_topic, orjson.dumps(message), 1, retain=True
        )

    def rejected(self, error: BaseException, model_version: int | None, active: int | None) -> None:
        self.report("rejected", model_version, active, reason_of(error), str(error))
