"""`updates:` settings: no fleet group without a trusted key, and names that stay names."""

from __future__ import annotations

from pathlib import Path

import pytest
from moecast.agent.settings import load_settings
from pydantic import ValidationError

from moecast.bundle.format import DEV_PUBLIC_KEY


def test_updates_are_off_by_default(tmp_path: Path) -> None:
    settings = load_settings(None, storage_dir=tmp_path)
    assert settings.updates.group is None
    assert settings.bundle_status_topic == f"moecast/agents/{settings.agent_id}/bundle"


def test_a_group_needs_a_trusted_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs trusted_keys"):
        load_settings(None, storage_dir=tmp_path, updates={"group": "site-7"})
    assert (
        load_settings(
            None, storage_dir=tmp_path, updates={"group": "site-7"}, trusted_keys=[DEV_PUBLIC_KEY]
        ).updates.group
        == "site-7"
    )


def test_the_development_key_alone_never_admits_fleet_updates(tmp_path: Path) -> None:
    """Its private half is public: trusting it for the shipped bundle must not let anyone on
    the broker install a model. A second, explicit setting is needed (a lab bench)."""
    with pytest.raises(ValidationError, match="never fleet updates"):
        load_settings(None, storage_dir=tmp_path, updates={"group": "site-7"}, trust_dev_key=True)
    lab = load_settings(
        None,
        storage_dir=tmp_path,
        trust_dev_key=True,
        updates={"group": "site-7", "accept_dev_key_updates": True},
    )
    assert lab.updates.accept_dev_key_updates


@pytest.mark.parametrize("group", ["../etc", "a/b", "+", "#", "", "x" * 65])
def test_a_group_is_a_single_safe_topic_level(tmp_path: Path, group: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(
            None, storage_dir=tmp_path, trusted_keys=[DEV_PUBLIC_KEY], updates={"group": group}
        )


def test_the_fleet_prefix_has_no_wildcards(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="wildcards"):
        load_settings(None, storage_dir=tmp_path, topics={"fleet": "moecast/+"})
