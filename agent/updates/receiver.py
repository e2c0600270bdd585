"""The bundle receiver, on its own thread: from a group's retained announcement and chunks to a
verified, loaded model in the inactive slot, handed to the active model for the next tick.

The network thread only enqueues (`FleetInbox.offer`). This thread parses and verifies
announcements (signature, version), reassembles and checks chunks, writes the inactive slot
and loads it with `load_bundle` (checksum, ONNX Runtime, interface, golden test): the new
model is fully built before anything changes. Every step is reported (`UpdateProgress`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.settings import AgentSettings
from moecast.agent.updates.active import ActiveModel
from moecast.agent.updates.progress import NotNewerError, StorageError, UpdateProgress
from moecast.agent.updates.reassembly import Download, MissingChunksError, Reassembler
from moecast.agent.updates.slots import SlotStore

from moecast.bundle.format import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    BundleError,
    ChecksumError,
    Manifest,
    load_bundle,
)
from moecast.bundle.wire import (
    Announcement,
    ChunkChecksumError,
    VerifiedAnnouncement,
    WireError,
    bundle_topic,
    chunk_index,
    decode_chunk,
    verify_announcement,
)

log = logging.getLogger("moecast.agent.updates")

_REMEMBERED_TRANSFERS = 64  # announcements already handled, skipped when replayed
_HOUR_S = 3600.0


class FleetInbox:
    """The fleet messages waiting for the receiver; `offer` is the link's fleet sink."""

    def __init__(self, size: int, metrics: AgentMetrics) -> None:
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue(size)
        self._metrics = metrics

    def offer(self, topic: str, payload: bytes) -> None:
        """Network thread: enqueue, never wait."""
        try:
            self.queue.put_nowait((topic, payload))
        except queue.Full:
            self._metrics.count_dropped("fleet_queue_full")


class BundleReceiver:
    """`start` and `stop` with the agent."""

    def __init__(
        self,
        settings: AgentSettings,
        inbox: FleetInbox,
        keys: list[Ed25519PublicKey],
        slots: SlotStore,
        active: ActiveModel,
        progress: UpdateProgress,
        metrics: AgentMetrics,
    ) -> None:
        self.settings = settings
        self._config = settings.updates
        self._inbox = inbox
        self._keys = keys
        self.slots = slots
        self._active = active
        self._progress = progress
        self._metrics = metrics
        self._reassembler = Reassembler(self._config.max_bundle_bytes)
        self._deferred: VerifiedAnnouncement | None = None  # waits for the current trial
        self._handled: deque[bytes] = deque(maxlen=_REMEMBERED_TRANSFERS)
        self._announcement_times: deque[float] = deque()  # rejections reported this hour
        self._rate_logged = False
        self._seen_payloads: deque[bytes] = deque(maxlen=_REMEMBERED_TRANSFERS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="moecast-updates", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                # A message that breaks a check, or a full disk, must not end updates for good.
                log.exception("fleet update step failed")

    def _step(self) -> None:
        try:
            topic, payload = self._inbox.queue.get(timeout=0.2)
        except queue.Empty:
            pass
        else:
            self._handle(topic, payload)
        self._check_timeout()
        self._resume_deferred()

    def _handle(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained message being cleared
        fleet, group = self.settings.topics.fleet, self._config.group
        assert group is not None
        if topic == bundle_topic(fleet, group):
            self._on_announcement(payload)
            return
        index = chunk_index(topic, fleet, group)
        if index is None:
            return
        try:
            chunk = decode_chunk(payload)
        except WireError:
            self._metrics.count_dropped("fleet_bad_chunk")
            return
        if chunk.index != index:
            self._metrics.count_dropped("fleet_bad_chunk")
            return
        try:
            download = self._reassembler.add(chunk)
        except ChunkChecksumError:
            # Dropped, not fatal: anyone who saw the announcement could otherwise cancel the
            # real download with one junk chunk. A chunk that never comes times out instead.
            self._metrics.count_dropped("fleet_bad_chunk")
            return
        if download is not None and download.complete:
            self._install(download)

    def _on_announcement(self, payload: bytes) -> None:
        # A copy of an announcement already seen (a replay, a flood of one message) is
        # skipped before anything else, and counts against nothing.
        digest = hashlib.sha256(payload).digest()
        if digest in self._seen_payloads:
            self._metrics.count_dropped("fleet_duplicate_announcement")
            return
        self._seen_payloads.append(digest)
        try:
            announcement = Announcement.parse(payload)
        except WireError as err:
            self._reject_announcement(err)
            return
        if announcement.transfer_id in self._handled:
            return  # replayed on a reconnect: already installed or rejected
        try:
            verified = verify_announcement(announcement, self._keys, self._config.max_bundle_bytes)
        except BundleError as err:
            self._handled.append(announcement.transfer_id)
            self._reject_announcement(err)
            return
        # Signed by a trusted key: never held back by the rate of junk before it.
        self._consider(verified)

    def _reject_announcement(self, error: BundleError) -> None:
        """Report an announcement that is not one (malformed, unsigned, forged): the hourly
        rate bounds these reports, so a flood cannot fill the log or the progress topic; it
        never bounds the checks, so a genuine announcement after a flood still installs."""
        if self._within_rate():
            self._progress.rejected(error, None, self._active.version)
            return
        self._metrics.count_dropped("fleet_announcement_rate")
        if not self._rate_logged:
            log.warning("too many rejected bundle announcements this hour; not reporting more")
            self._rate_logged = True

    def _consider(self, verified: VerifiedAnnouncement) -> None:
        manifest = verified.manifest
        if verified.manifest_sha256 in self.slots.state.failed:
            self._handled.append(verified.transfer_id)
            return  # refused or rolled back before, and reported then
        active = self._active.manifest
        if (
            active is not None
            and active.model_sha256 == manifest.model_sha256
            and active.model_version == manifest.model_version
        ):
            self._handled.append(verified.transfer_id)
            return  # the model running already
        if self._active.busy:
            self._deferred = verified  # after the current trial
            return
        try:
            self._check_version(manifest)
        except NotNewerError as err:
            self._handled.append(verified.transfer_id)
            self._progress.rejected(err, manifest.model_version, self._active.version)
            return
        # Replaces any download in progress: the newest announcement is the one wanted.
        download = self._reassembler.start(verified)
        if download.bad:
            self._metrics.count_dropped("fleet_bad_chunk", len(download.bad))
        if download.complete:
            self._install(download)

    def _install(self, download: Download) -> None:
        verified = download.verified
        version = verified.manifest.model_version
        self._reassembler.finish()
        self._handled.append(verified.transfer_id)
        model = download.model()
        active = self._active.version
        self._progress.report(
            "received", version, active, detail=f"{download.expected} part(s), {len(model)} B"
        )
        files = {
            MODEL_FILE: model,
            MANIFEST_FILE: verified.announcement.manifest,
            SIGNATURE_FILE: verified.announcement.manifest_sig,
        }
        try:
            slot = self.slots.write_inactive(files)
            # Everything again, from the files on disk: signature, checksum, ONNX Runtime,
            # interface and the golden test; this also builds the session the ticks will use.
            bundle = load_bundle(self.slots.path(slot), self._keys, self.settings.threads)
            self._check_version(bundle.manifest)
        except OSError as err:
            # Not marked failed: once space is freed, the retained bundle installs.
            error = StorageError(f"cannot write or read the bundle's slot: {err}")
            self._progress.rejected(error, version, active)
            return
        except ChecksumError as err:
            # The bytes that came are not the signed model: a fault of this transfer, not of
            # the manifest. Not marked failed, so a correct transfer of it still installs.
            self._progress.rejected(err, version, active)
            return
        except BundleError as err:
            # The signed model itself is bad (it does not load, or fails its golden test):
            # never again, whoever sends it.
            self.slots.mark_failed(verified.manifest_sha256)
            self._progress.rejected(err, version, active)
            return
        self._progress.report("verified", version, active, detail=f"slot {slot}")
        self._active.offer(bundle, verified.manifest_sha256, slot)

    def _abandon(self, error: BundleError) -> None:
        download = self._reassembler.download
        self._reassembler.finish()
        version = None
        if download is not None:
            self._handled.append(download.verified.transfer_id)
            version = download.verified.manifest.model_version
        self._progress.rejected(error, version, self._active.version)

    def _check_timeout(self) -> None:
        download = self._reassembler.timed_out(self._config.download_timeout_s)
        if download is None:
            return
        missing = download.missing()
        within = f"within {self._config.download_timeout_s:g} s"
        corrupted = sorted(download.bad.intersection(missing))
        self._abandon(
            ChunkChecksumError(
                f"chunks {corrupted[:5]} came only with bytes the signed transfer does not "
                f"list, no good copy {within}"
            )
            if corrupted
            else MissingChunksError(
                f"{len(missing)} of {download.expected} chunks (first: {missing[:5]}) did not "
                f"arrive {within}"
            )
        )

    def _resume_deferred(self) -> None:
        if self._deferred is None or self._active.busy:
            return
        deferred, self._deferred = self._deferred, None
        self._consider(deferred)

    def _check_version(self, manifest: Manifest) -> None:
        active = self._active.manifest
        if active is None or manifest.model_version > active.model_version:
            return
        if manifest.allow_downgrade and manifest.created > active.created:
            # Signed after the active model was: a downgrade signed to back out of version N
            # cannot be replayed later to undo N + 1.
            log.warning(
                "installing version %d over %d: the signed manifest allows the downgrade",
                manifest.model_version,
                active.model_version,
            )
            return
        why = " and its downgrade was signed before the active model" * manifest.allow_downgrade
        raise NotNewerError(
            f"version {manifest.model_version} is not newer than the active version "
            f"{active.model_version}{why}"
        )

    def _within_rate(self) -> bool:
        now = time.monotonic()
        times = self._announcement_times
        while times and now - times[0] > _HOUR_S:
            times.popleft()
            self._rate_logged = False
        if len(times) >= self._config.max_announcements_per_hour:
            return False
        times.append(now)
        return True
