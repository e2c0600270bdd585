"""Fleet model updates on the agent: receive, verify, swap, trial, commit or roll back.

Three threads take part, and only the first two ever wait on anything slow:

- the network thread hands every bundle message to `offer`, which only enqueues;
- the update thread parses and verifies announcements (signatures, version), reassembles and
  checks chunks, writes the inactive slot and loads it with `load_bundle` (checksum, ONNX
  Runtime, interface, golden test): the new model is fully built before anything changes;
- the tick thread (`on_tick`, the agent's forecasting callback) swaps a ready model in between
  two ticks, watches the trial ticks' outputs, and commits after `trial_ticks` healthy ones or
  rolls back; a tick whose outputs failed is run again on the restored model, so no tick goes
  without forecasts and readings keep flowing into the store throughout.

Every step is published, retained, on `<agents>/<agent_id>/bundle`:
`{"state": "received"|"verified"|"active"|"committed"|"rolled_back"|"rejected", "reason": ...,
"detail": ..., "model_version": <the update's>, "active_version": ..., "group": ..., "ts": ...}`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from moecast.agent.forecast.expert_load import ExpertLoad
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.runtime import Agent, TickContext
from moecast.agent.settings import AgentSettings
from moecast.agent.updates.receiver import Download, MissingChunksError, Reassembler
from moecast.agent.updates.slots import Interrupted, SlotStore

from moecast.bundle.format import (
    DEV_PUBLIC_KEY,
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Bundle,
    BundleError,
    ChecksumError,
    GoldenMismatchError,
    InterfaceError,
    Manifest,
    ManifestError,
    ModelLoadError,
    NoTrustedKeyError,
    PublicKeySource,
    SignatureError,
    UnsupportedFormatError,
    load_bundle,
    load_public_key,
    output_name,
)
from moecast.bundle.wire import (
    Announcement,
    ChunkChecksumError,
    TransferError,
    UnsignedError,
    VerifiedAnnouncement,
    WireError,
    bundle_topic,
    chunk_index,
    decode_chunk,
    verify_announcement,
)

log = logging.getLogger(__name__)


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
_REMEMBERED_TRANSFERS = 64  # announcements already handled, skipped when replayed
_HOUR_S = 3600.0


def reason_of(error: BaseException) -> str:
    return next((REASONS[c] for c in type(error).__mro__ if c in REASONS), "bundle")


def trusted_keys(settings: AgentSettings) -> list[PublicKeySource]:
    keys: list[PublicKeySource] = list(settings.trusted_keys)
    if settings.trust_dev_key:
        keys.append(DEV_PUBLIC_KEY)
    return keys


def open_slots(settings: AgentSettings) -> tuple[SlotStore, Bundle | None, Interrupted | None]:
    """At start: the slot store, the model of its active slot (None: run the configured
    bundle), and the trial a restart interrupted (already rolled back), if any."""
    slots = SlotStore(settings.storage_dir / "bundles")
    interrupted = slots.recover()
    keys = trusted_keys(settings)
    # Without a key nothing can be verified; the slots are left as they are for later.
    bundle = slots.load_active(keys, settings.threads) if keys else None
    return slots, bundle, interrupted


@dataclass
class _Trial:
    """A newly active model on probation, and what to go back to."""

    bundle: Bundle
    previous: Bundle | None
    manifest_sha256: str
    healthy: int = 0
    ran: bool = False
    problem: tuple[str, str] | None = None  # (reason, detail) of the first bad output


class UpdateManager:
    """Owns which model runs; `attach` to an agent, then `start` and `stop` with it."""

    def __init__(
        self,
        settings: AgentSettings,
        forecaster: Forecaster | None,
        slots: SlotStore,
        interrupted: Interrupted | None = None,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.forecaster = forecaster
        self._config = settings.updates
        self._keys = [load_public_key(k) for k in trusted_keys(settings)]
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(self._config.queue_size)
        self._reassembler = Reassembler(self._config.max_bundle_bytes)
        self._lock = threading.Lock()  # guards _ready, _trial, _deferred
        # Verified and loaded (bundle, manifest sha256, slot), waiting for the next tick.
        self._ready: tuple[Bundle, str, str] | None = None
        self._trial: _Trial | None = None
        self._deferred: VerifiedAnnouncement | None = None
        self._handled: deque[bytes] = deque(maxlen=_REMEMBERED_TRANSFERS)
        self._announcement_times: deque[float] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._agent: Agent | None = None
        self._reports: list[bytes] = []  # made before the agent was attached
        self.expert_load = ExpertLoad(self._config.group)
        if forecaster is not None:
            self._watch(forecaster.bundle)
        if interrupted is not None:
            self._report(
                "rolled_back",
                interrupted.model_version,
                "restarted_during_trial",
                "the agent stopped while the model was on trial; the previous model runs",
            )

    # Wiring.

    def attach(self, agent: Agent) -> None:
        self._agent = agent
        agent.metrics.add_section("expert_load", self.expert_load.snapshot)
        if self.forecaster is not None:
            agent.link.set_model_version(str(self.forecaster.model_version))
        if self._config.group is not None:
            agent.link.fleet_sink = self.offer
        for payload in self._reports:
            self._publish(payload)
        self._reports.clear()

    def start(self) -> None:
        if self._config.group is None:
            return
        self._thread = threading.Thread(target=self._run, name="moecast-updates", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def offer(self, topic: str, payload: bytes) -> None:
        """Network thread: enqueue a fleet message, never wait."""
        try:
            self._queue.put_nowait((topic, payload))
        except queue.Full:
            if self._agent is not None:
                self._agent.metrics.count_dropped("fleet_queue_full")

    # The tick thread.

    def on_tick(self, context: TickContext) -> None:
        self._swap_in_ready()
        forecaster = self.forecaster
        if forecaster is None:
            return
        trial = self._trial
        if trial is not None:
            trial.ran, trial.problem = False, None
        try:
            forecaster(context)
        except Exception as err:
            if trial is None:
                raise
            # A model that breaks the tick (e.g. fails on a batch size the golden test did
            # not use) fails its trial.
            trial.ran, trial.problem = True, ("tick_failed", f"{type(err).__name__}: {err}")
        if trial is None or not trial.ran:
            return  # nothing forecast, nothing learnt about the model
        if trial.problem is not None:
            self._roll_back(trial, *trial.problem)
            if self.forecaster is not None:
                self.forecaster(context)  # this tick's forecasts, from the restored model
            return
        trial.healthy += 1
        if trial.healthy >= self._config.trial_ticks:
            self.slots.commit()
            with self._lock:
                self._trial = None
            self._report("committed", trial.bundle.manifest.model_version)

    def _swap_in_ready(self) -> None:
        """Start the trial of a model the update thread made ready. Taken and begun in one
        critical section: the update thread must never see neither a ready model nor a trial
        (it would start the next update over this one's rollback slot)."""
        previous = self.forecaster.bundle if self.forecaster is not None else None
        with self._lock:
            if self._ready is None:
                return
            (bundle, manifest_sha256, slot), self._ready = self._ready, None
            self._trial = _Trial(bundle, previous, manifest_sha256)
        # On disk only now: a restart before this tick keeps the old model committed, and the
        # retained announcement brings the new one again, instead of failing a model that
        # never ran.
        self.slots.begin_trial(slot)
        self._use(bundle)
        self._report("active", bundle.manifest.model_version)

    def _roll_back(self, trial: _Trial, reason: str, detail: str) -> None:
        self.slots.roll_back(trial.manifest_sha256)
        self._use(trial.previous)
        with self._lock:
            self._trial = None
        self._report("rolled_back", trial.bundle.manifest.model_version, reason, detail)

    def _use(self, bundle: Bundle | None) -> None:
        """Make `bundle` the one the forecaster runs (None: forecast nothing)."""
        if bundle is None:
            self.forecaster = None
        elif self.forecaster is None:
            self.forecaster = Forecaster(bundle, self.settings)
        else:
            # Between ticks (this runs on the tick thread); alert states carry over.
            self.forecaster.use_bundle(bundle)
        if bundle is not None:
            self._watch(bundle)
        if self._agent is not None:
            version = None if bundle is None else str(bundle.manifest.model_version)
            self._agent.link.set_model_version(version)

    def _watch(self, bundle: Bundle) -> None:
        self.expert_load.reset(bundle.manifest)
        bundle.on_run = lambda outputs: self._observe(bundle, outputs)

    def _observe(self, bundle: Bundle, outputs: dict[str, np.ndarray]) -> None:
        self.expert_load.observe(outputs)
        trial = self._trial
        if trial is None or trial.bundle is not bundle:
            return
        trial.ran = True
        if trial.problem is None:
            trial.problem = _output_problem(
                bundle.manifest, outputs, self._config.trial_max_crossing_share
            )

    # The update thread.

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                # A message that breaks a check, or a full disk, must not end updates for good.
                log.exception("fleet update step failed")

    def _step(self) -> None:
        try:
            topic, payload = self._queue.get(timeout=0.2)
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
            self._count("fleet_bad_chunk")
            return
        if chunk.index != index:
            self._count("fleet_bad_chunk")
            return
        try:
            download = self._reassembler.add(chunk)
        except ChunkChecksumError:
            # Dropped, not fatal: anyone who saw the announcement could otherwise cancel the
            # real download with one junk chunk. A chunk that never comes times out instead.
            self._count("fleet_bad_chunk")
            return
        if download is not None and download.complete:
            self._install(download)

    def _on_announcement(self, payload: bytes) -> None:
        # The rate first: a flood of malformed announcements must not flood the log and the
        # retained progress topic either.
        if not self._within_rate():
            self._count("fleet_announcement_rate")
            log.warning("too many bundle announcements this hour; ignored one")
            return
        try:
            announcement = Announcement.parse(payload)
        except WireError as err:
            self._report("rejected", None, reason_of(err), str(err))
            return
        if announcement.transfer_id in self._handled:
            return  # replayed on a reconnect: already installed or rejected
        try:
            verified = verify_announcement(announcement, self._keys, self._config.max_bundle_bytes)
        except BundleError as err:
            self._handled.append(announcement.transfer_id)
            self._report("rejected", None, reason_of(err), str(err))
            return
        self._consider(verified)

    def _consider(self, verified: VerifiedAnnouncement) -> None:
        manifest = verified.manifest
        if verified.manifest_sha256 in self.slots.state.failed:
            self._handled.append(verified.transfer_id)
            return  # refused or rolled back before, and reported then
        active = self._active_manifest()
        if (
            active is not None
            and active.model_sha256 == manifest.model_sha256
            and active.model_version == manifest.model_version
        ):
            self._handled.append(verified.transfer_id)
            return  # the model running already
        with self._lock:
            if self._ready is not None or self._trial is not None:
                self._deferred = verified  # after the current trial
                return
        try:
            self._check_version(manifest)
        except NotNewerError as err:
            self._handled.append(verified.transfer_id)
            self._report("rejected", manifest.model_version, reason_of(err), str(err))
            return
        # Replaces any download in progress: the newest announcement is the one wanted.
        download = self._reassembler.start(verified)
        if download.bad:
            self._count("fleet_bad_chunk", len(download.bad))
        if download.complete:
            self._install(download)

    def _install(self, download: Download) -> None:
        verified = download.verified
        version = verified.manifest.model_version
        self._reassembler.finish()
        self._handled.append(verified.transfer_id)
        model = download.model()
        self._report("received", version, detail=f"{download.expected} part(s), {len(model)} B")
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
            self._report("rejected", version, reason_of(error), str(error))
            return
        except BundleError as err:
            self.slots.mark_failed(verified.manifest_sha256)
            self._report("rejected", version, reason_of(err), str(err))
            return
        self._report("verified", version, detail=f"slot {slot}")
        with self._lock:
            self._ready = (bundle, verified.manifest_sha256, slot)

    def _abandon(self, error: BundleError) -> None:
        download = self._reassembler.download
        self._reassembler.finish()
        version = None
        if download is not None:
            self._handled.append(download.verified.transfer_id)
            version = download.verified.manifest.model_version
        self._report("rejected", version, reason_of(error), str(error))

    def _check_timeout(self) -> None:
        download = self._reassembler.timed_out(self._config.download_timeout_s)
        if download is not None:
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
        with self._lock:
            if self._deferred is None or self._ready is not None or self._trial is not None:
                return
            deferred, self._deferred = self._deferred, None
        self._consider(deferred)

    def _check_version(self, manifest: Manifest) -> None:
        active = self._active_manifest()
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

    def _active_manifest(self) -> Manifest | None:
        forecaster = self.forecaster
        return None if forecaster is None else forecaster.bundle.manifest

    def _within_rate(self) -> bool:
        now = time.monotonic()
        times = self._announcement_times
        while times and now - times[0] > _HOUR_S:
            times.popleft()
        if len(times) >= self._config.max_announcements_per_hour:
            return False
        times.append(now)
        return True

    # Reporting.

    def _report(
        self,
        state: str,
        model_version: int | None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        active = self._active_manifest()
        message: dict[str, Any] = {
            "state": state,
            "agent_id": self.settings.agent_id,
            "group": self._config.group,
            "model_version": model_version,
            "active_version": None if active is None else active.model_version,
            "reason": reason,
            "detail": detail,
            "ts": round(time.time(), 3),
        }
        level = logging.WARNING if state in ("rejected", "rolled_back") else logging.INFO
        log.log(level, "bundle update: %s %s %s", state, reason or "", detail or "")
        payload = json.dumps(message).encode()
        if self._agent is None:
            self._reports.append(payload)
        else:
            self._publish(payload)

    def _publish(self, payload: bytes) -> None:
        assert self._agent is not None
        self._agent.link.publish(self.settings.bundle_status_topic, payload, 1, retain=True)

    def _count(self, reason: str, n: int = 1) -> None:
        if self._agent is not None:
            self._agent.metrics.count_dropped(reason, n)


def _output_problem(
    manifest: Manifest, outputs: dict[str, np.ndarray], max_crossing_share: float
) -> tuple[str, str] | None:
    """Why one run's forecasts are unhealthy, or None: non-finite values, or more than
    `max_crossing_share` of the forecast steps with quantiles out of order."""
    for horizon in manifest.horizons:
        name = output_name(horizon)
        values = np.asarray(outputs[name], dtype=np.float64)
        if not np.isfinite(values).all():
            bad = int(np.count_nonzero(~np.isfinite(values).all(axis=(1, 2))))
            return "non_finite", f"{name} is not finite for {bad} of {len(values)} streams"
        # A relative slack: float rounding of two equal quantiles is not a crossing.
        slack = 1e-6 * (1.0 + np.abs(values).max(axis=-1, keepdims=True))
        crossed = (np.diff(values, axis=-1) < -slack).any(axis=-1)
        if crossed.mean() > max_crossing_share:
            return "crossing", f"{name}: quantiles cross in {crossed.mean():.1%} of the steps"
    return None
