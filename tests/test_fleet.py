"""`moecast fleet keygen | sign | publish | status` (no torch needed), against mosquitto."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from moecast.bundle.format import DEV_PUBLIC_KEY, SignatureError, load_bundle
from moecast.bundle.wire import Announcement, decode_chunk
from moecast.cli import main
from moecast.fleet.client import Connection, connected, retained
from tests.agent import fleet_kit as kit
from tests.agent.conftest import Broker, broker  # noqa: F401  # the fixture

ROOT = Path(__file__).resolve().parents[1]
GROUP = "site-7"
BUNDLE = "moecast/fleet/site-7/bundle"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    assert main(["fleet", "keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys" / "signing-key.pem", tmp_path / "keys" / "signing-key.pub.pem"


def test_keygen_writes_a_private_key_only_its_owner_reads(
    keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    assert main(["fleet", "keygen", "--out", str(private.parent)]) == 2
    assert "not overwriting" in capsys.readouterr().err


def test_sign_in_place_and_into_a_new_bundle(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    bundle = kit.default_as(tmp_path / "b", Ed25519PrivateKey.generate(), 1)
    code = main(["fleet", "sign", str(bundle), "--key", str(private), "--model-version", "7"])
    assert code == 0
    assert load_bundle(bundle, [public]).manifest.model_version == 7
    with pytest.raises(SignatureError):
        load_bundle(bundle, [DEV_PUBLIC_KEY])
    out = tmp_path / "dev"
    assert main(["fleet", "sign", str(bundle), "--dev-key", "--out", str(out)]) == 0
    assert load_bundle(out, [DEV_PUBLIC_KEY]).manifest.model_version == 7


def test_sign_needs_exactly_one_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "sign", str(tmp_path)]) == 2
    assert "exactly one of --key" in capsys.readouterr().err


def _publish(broker_url: str, bundle: Path, private: Path, chunk_bytes: int) -> int:
    return main(
        [
            "fleet", "publish", str(bundle), "--group", GROUP, "--broker", broker_url,
            "--key", str(private), "--chunk-bytes", str(chunk_bytes),
        ]
    )  # fmt: skip


def test_publish_retains_the_announcement_and_clears_stale_chunks(
    broker: Broker,  # noqa: F811
    keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    private = keys[0]
    key = Ed25519PrivateKey.generate()
    v1 = kit.default_as(tmp_path / "v1", key, 1)
    assert main(["fleet", "sign", str(v1), "--key", str(private)]) == 0
    assert _publish(broker.url, v1, private, 1_000_000) == 0
    conn = Connection(broker.url)
    first = retained(conn, ["moecast/fleet/site-7/bundle/#"], listen_s=1.0)
    assert len(first) == 1 + 4  # the announcement and 4 chunks of the 3.5 MB model

    v2 = tmp_path / "v2"
    assert main(["fleet", "sign", str(v1), "--key", str(private), "--out", str(v2)]) == 0
    assert main(["fleet", "sign", str(v2), "--key", str(private), "--model-version", "2"]) == 0
    assert _publish(broker.url, v2, private, 2_000_000) == 0
    second = retained(conn, ["moecast/fleet/site-7/bundle/#"], listen_s=1.0)
    assert sorted(second) == [BUNDLE, f"{BUNDLE}/chunk/0", f"{BUNDLE}/chunk/1"]
    announcement = Announcement.parse(second[BUNDLE])
    assert json.loads(announcement.manifest)["model_version"] == 2
    chunk = decode_chunk(second[f"{BUNDLE}/chunk/1"])
    assert chunk.transfer_id == announcement.transfer_id


def test_publish_refuses_a_bundle_its_key_did_not_sign(
    broker: Broker,  # noqa: F811
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = kit.default_as(tmp_path / "v1", Ed25519PrivateKey.generate(), 1)
    assert _publish(broker.url, bundle, keys[0], 1_000_000) == 2
    assert "does not verify" in capsys.readouterr().err
    assert retained(Connection(broker.url), [BUNDLE], listen_s=0.5) == {}


def test_status_tabulates_the_groups_agents(
    broker: Broker,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    messages = {
        "moecast/agents/a1/status": {
            "state": "online",
            "model_version": 2,
            "group": GROUP,
            "filters": ["line-1/+", "roof/+"],
        },
        "moecast/agents/a1/bundle": {"state": "committed", "model_version": 2, "group": GROUP},
        "moecast/agents/a2/status": {"state": "online", "model_version": 1, "group": "other"},
        "moecast/agents/a3/status": {"state": "offline", "model_version": 1, "group": GROUP},
        "moecast/agents/a1/metrics": {
            "streams": 12,
            "readings_accepted": 3400,
            "forecast_tick_s": {"count": 4, "sum": 0.5},
        },
        "moecast/agents/a3/bundle": {
            "state": "rejected",
            "model_version": None,
            "group": GROUP,
            "reason": "signature",
        },
    }
    with connected(Connection(broker.url)) as client:
        for topic, document in messages.items():
            client.publish(topic, json.dumps(document), 1, True).wait_for_publish(5)
    code = main(["fleet", "status", "--group", GROUP, "--broker", broker.url, "--listen", "1"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["agent", "status", "model", "update", "version", "reason"]
    assert [line.split() for line in lines[1:3]] == [
        ["a1", "online", "2", "committed", "2"],
        ["a3", "offline", "1", "rejected", "-", "signature"],
    ]
    # Then each agent's share of the site and its load.
    assert lines[3] == ""
    assert lines[4].split() == ["agent", "streams", "readings", "tick_s", "filters"]
    assert [line.split() for line in lines[5:]] == [
        ["a1", "12", "3400", "0.125", "line-1/+,roof/+"],
        ["a3", "-", "-", "-", "-"],
    ]


def test_fleet_commands_run_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "for blocked in ('torch', 'moecast.model', 'pandas'):\n"
        "    sys.modules[blocked] = None\n"
        "from moecast.cli import main\n"
        f"assert main(['fleet', 'keygen', '--out', {str(tmp_path / 'k')!r}]) == 0\n"
        "sys.exit(main(['fleet', 'prune-for', '--group', 'g', '--broker', 'mqtt://127.0.0.1:9',"
        " '--dev-key', '--checkpoint', 'c', '--out', 'o', '--model-version', '2']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "pip install 'moecast[export]'" in done.stderr
