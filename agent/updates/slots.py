"""A/B model slots on disk, and the state file that says which one runs.

    <storage_dir>/bundles/a/          a bundle directory (model.onnx, manifest.json, .sig)
    <storage_dir>/bundles/b/
    <storage_dir>/bundles/state.json  {"active": "a", "previous": "b", "phase": "trial", ...}

A new bundle is written into the slot that is not active, under a staging name first, and
renamed into place once every file is on disk; only then, and only after it verified, does
the state file name it active. The state file is replaced atomically (write, fsync, rename,
fsync the directory), so a kill at any moment leaves either the old state, naming a slot that
was never touched, or the new one, naming a complete, verified slot. A kill during a trial is
treated as the trial failing: the model that was on trial may be what killed the agent.

`active: null` means the configured bundle (`bundle_path`, or the shipped default) runs.
Slot names are the two constants here; nothing from the network ever names a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from moecast.bundle.format import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    Bundle,
    BundleError,
    PublicKeySource,
    load_bundle,
)

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
STATE_FILE = "state.json"
_STAGING = ".staging"
_DISCARDED = ".discarded"
# Manifests (by sha256) refused after download or rolled back: their retained announcement
# comes back on every reconnect and must not be installed again. Bounded: only recent ones.
MAX_FAILED = 32

Phase = Literal["committed", "trial"]


@dataclass(frozen=True)
class SlotState:
    active: str | None = None  # None: the configured bundle
    previous: str | None = None  # what to fall back to; None: the configured bundle
    phase: Phase = "committed"
    failed: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Interrupted:
    """What `recover` found: a trial cut short by a restart, now rolled back."""

    slot: str
    manifest_sha256: str | None
    model_version: int | None


class SlotStore:
    """The slots under `root`; thread-safe (the update and tick threads both change state)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self._state = self._read_state()

    @property
    def state(self) -> SlotState:
        with self._lock:
            return self._state

    def path(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"no slot {slot!r}")
        return self.root / slot

    def recover(self) -> Interrupted | None:
        """At start: clear half-written slots; roll back a trial the last run did not finish."""
        for leftover in (_STAGING, _DISCARDED):
            shutil.rmtree(self.root / leftover, ignore_errors=True)
        (self.root / f"{STATE_FILE}.tmp").unlink(missing_ok=True)
        with self._lock:
            state = self._state
            if state.phase != "trial" or state.active is None:
                return None
            manifest = self._manifest_bytes(state.active)
            sha = hashlib.sha256(manifest).hexdigest() if manifest else None
            self._save(
                SlotState(state.previous, None, "committed", _failed(state.failed, sha)),
            )
        return Interrupted(state.active, sha, _version_of(manifest))

    def load_active(self, keys: list[PublicKeySource], threads: int) -> Bundle | None:
        """The active slot's bundle, else the previous slot's (and the state then says so);
        None when neither loads and the configured bundle must run."""
        for _ in range(2):
            with self._lock:
                slot = self._state.active
            if slot is None:
                return None
            try:
                return load_bundle(self.path(slot), keys, threads)
            except BundleError as err:
                log.error("slot %s does not load (%s); falling back", slot, err)
                with self._lock:
                    state = self._state
                    self._save(replace(state, active=state.previous, previous=None))
        return None

    def write_inactive(self, files: dict[str, bytes]) -> str:
        """Write a bundle's files into the slot that is not active; returns the slot."""
        with self._lock:
            state = self._state
            slot = "b" if state.active == "a" else "a"
            if state.previous == slot:
                # It is about to be overwritten: never leave the state pointing at it.
                self._save(replace(state, previous=None))
        staging = self.root / _STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in BUNDLE_FILES:
            _write_synced(staging / name, files[name])
        _fsync_dir(staging)
        target = self.path(slot)
        if target.exists():
            # Renamed away before it is deleted: a partly deleted tree never has a slot's name.
            discarded = self.root / _DISCARDED
            shutil.rmtree(discarded, ignore_errors=True)
            os.rename(target, discarded)
            shutil.rmtree(discarded)
        os.rename(staging, target)
        _fsync_dir(self.root)
        return slot

    def begin_trial(self, slot: str) -> None:
        with self._lock:
            state = self._state
            self._save(SlotState(slot, state.active, "trial", state.failed))

    def commit(self) -> None:
        with self._lock:
            self._save(replace(self._state, phase="committed"))

    def roll_back(self, manifest_sha256: str | None) -> None:
        """Make the previous model active again and never retry the one on trial."""
        with self._lock:
            state = self._state
            failed = _failed(state.failed, manifest_sha256)
            self._save(SlotState(state.previous, None, "committed", failed))

    def mark_failed(self, manifest_sha256: str) -> None:
        with self._lock:
            state = self._state
            self._save(replace(state, failed=_failed(state.failed, manifest_sha256)))

    def _manifest_bytes(self, slot: str) -> bytes | None:
        try:
            return (self.path(slot) / MANIFEST_FILE).read_bytes()
        except OSError:
            return None

    def _read_state(self) -> SlotState:
        path = self.root / STATE_FILE
        try:
            document = json.loads(path.read_bytes())
            state = SlotState(
                active=document["active"],
                previous=document["previous"],
                phase=document["phase"],
                failed=tuple(document["failed"]),
            )
        except FileNotFoundError:
            return SlotState()
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Written atomically, so this is damage from outside: run the configured bundle.
            log.error("%s is unreadable (%s): starting from the configured bundle", path, err)
            return SlotState()
        valid = {None, *SLOTS}
        if state.active not in valid or state.previous not in valid:
            log.error("%s names an unknown slot: starting from the configured bundle", path)
            return SlotState()
        return state

    def _save(self, state: SlotState) -> None:
        """Replace the state file atomically; the caller holds the lock."""
        document = {**asdict(state), "failed": list(state.failed)}
        temporary = self.root / f"{STATE_FILE}.tmp"
        _write_synced(temporary, json.dumps(document).encode())
        os.replace(temporary, self.root / STATE_FILE)
        _fsync_dir(self.root)
        self._state = state


def _failed(failed: tuple[str, ...], sha: str | None) -> tuple[str, ...]:
    if sha is None or sha in failed:
        return failed
    return (*failed, sha)[-MAX_FAILED:]


def _version_of(manifest: bytes | None) -> int | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        version = json.loads(manifest or b"").get("model_version")
        return version if isinstance(version, int) else None
    return None


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
