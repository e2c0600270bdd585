"""A/B slots: a kill at any point of a swap leaves a slot that loads, on the old model or the
new one, and a trial cut short by a restart is rolled back."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import moecast.agent.updates.slots as slots_module
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moecast.agent.updates.slots import SlotStore

from moecast.bundle.format import BUNDLE_FILES, Bundle, load_bundle, read_bundle_files
from tests.agent import fleet_kit as kit


class Crash(BaseException):
    """The process dying: not an Exception, so nothing on the way catches it."""


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> dict:
    root = tmp_path_factory.mktemp("versions")
    return {v: read_bundle_files(kit.default_as(root / f"v{v}", key, v)) for v in (2, 3)}


def install(store: SlotStore, files: dict[str, bytes], key: Ed25519PrivateKey) -> None:
    """What the update thread and the tick thread do, in order, for one good update."""
    slot = store.write_inactive(files)
    load_bundle(store.path(slot), [key.public_key()])
    store.begin_trial(slot)
    store.commit()


def loaded_version(root: Path, key: Ed25519PrivateKey) -> int | None:
    """What a restarted agent runs: recover, then the active slot (None: the configured one)."""
    store = SlotStore(root)
    store.recover()
    bundle: Bundle | None = store.load_active([key.public_key()], 1)
    return None if bundle is None else bundle.manifest.model_version


def test_install_commit_and_roll_back(tmp_path: Path, versions: dict, key) -> None:
    store = SlotStore(tmp_path)
    install(store, versions[2], key)
    assert store.state.active == "a"
    assert store.state.previous is None
    slot = store.write_inactive(versions[3])
    assert slot == "b"
    store.begin_trial(slot)
    assert (store.state.active, store.state.previous, store.state.phase) == ("b", "a", "trial")
    store.roll_back("f" * 64)
    assert (store.state.active, store.state.phase) == ("a", "committed")
    assert store.state.failed == ("f" * 64,)
    assert loaded_version(tmp_path, key) == 2


def test_a_restart_during_the_trial_rolls_back(tmp_path: Path, versions: dict, key) -> None:
    store = SlotStore(tmp_path)
    install(store, versions[2], key)
    store.begin_trial(store.write_inactive(versions[3]))

    restarted = SlotStore(tmp_path)
    interrupted = restarted.recover()
    assert interrupted is not None
    assert interrupted.model_version == 3
    assert restarted.state.active == "a"
    assert interrupted.manifest_sha256 in restarted.state.failed
    assert loaded_version(tmp_path, key) == 2


def test_an_unloadable_active_slot_falls_back_to_the_previous(
    tmp_path: Path, versions: dict, key
) -> None:
    store = SlotStore(tmp_path)
    install(store, versions[2], key)
    install(store, versions[3], key)
    (tmp_path / "b" / "model.onnx").write_bytes(b"damaged on disk")
    assert loaded_version(tmp_path, key) == 2
    assert SlotStore(tmp_path).state.active == "a"


@pytest.mark.parametrize("damage", ["garbage", "unknown slot", "missing"])
def test_a_damaged_state_file_means_the_configured_bundle(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state.json"
    if damage == "garbage":
        state.write_bytes(b"\x00{")
    elif damage == "unknown slot":
        payload = {"active": "../etc", "previous": None, "phase": "committed", "failed": []}
        state.write_text(json.dumps(payload))
    assert SlotStore(tmp_path).state.active is None


Step = Callable[..., object]


def _crashing_at(target: int, root: Path, torn: bool) -> Callable[[str, Step], Step]:
    """Wrappers for the file-system steps under `root` that crash at step number `target`
    (counted from 0), before it happens or, with `torn`, half-way through a file write."""
    count = [0]

    def step(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*args: object, **kwargs: object) -> object:
            if not str(args[0]).startswith(str(root)):
                return real(*args, **kwargs)
            if count[0] == target:
                count[0] += 1
                if torn and name == "write":
                    Path(str(args[0])).write_bytes(bytes(args[1])[: len(args[1]) // 2])
                raise Crash(f"killed at {name} {args[0]}")
            count[0] += 1
            return real(*args, **kwargs)

        return wrapped

    return step


@pytest.mark.parametrize("torn", [False, True], ids=["before-step", "torn-write"])
def test_a_kill_at_any_step_of_a_swap_leaves_a_model_that_loads(
    tmp_path: Path, versions: dict, key, monkeypatch: pytest.MonkeyPatch, torn: bool
) -> None:
    """Crash at every file-system step of installing v3 over a committed v2 in turn; each
    time, a restarted agent runs v2 or v3 (never nothing, never a broken slot)."""
    base = tmp_path / "base"
    install(SlotStore(base), versions[2], key)
    outcomes: dict[int, int | None] = {}
    target = 0
    while True:
        root = tmp_path / f"crash{target}"
        shutil.copytree(base, root)
        step = _crashing_at(target, root, torn)
        with monkeypatch.context() as patch:
            patch.setattr(slots_module, "_write_synced", step("write", slots_module._write_synced))
            patch.setattr(slots_module.os, "rename", step("rename", os.rename))
            patch.setattr(slots_module.os, "replace", step("replace", os.replace))
            patch.setattr(slots_module.shutil, "rmtree", step("rmtree", shutil.rmtree))
            try:
                install(SlotStore(root), versions[3], key)
            except Crash:
                crashed = True
            else:
                crashed = False
        outcomes[target] = loaded_version(root, key)
        if not crashed:
            break
        target += 1
    assert target >= 8, f"only {target} steps were interrupted"
    assert set(outcomes.values()) == {2, 3}, outcomes
    assert outcomes[target] == 3  # the run that was not interrupted
    for root in tmp_path.glob("crash*"):
        leftovers = {p.name for p in root.iterdir()} - {"a", "b", "state.json"}
        assert not leftovers, leftovers
        for slot in ("a", "b"):
            if (root / slot).exists():
                assert sorted(p.name for p in (root / slot).iterdir()) == sorted(BUNDLE_FILES)
