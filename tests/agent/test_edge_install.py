"""The edge install, as Dockerfile.arm64 does it (Docker is not needed): build the wheel, install
it with its default dependencies into a fresh virtual environment, check that torch is absent,
and run `moecast agent --config` from there against mosquitto until it publishes a forecast.

Needs PyPI (or pip's cache); skipped when pip cannot reach an index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.agent.conftest import REPO, Broker, Client, wait_for

# What Dockerfile.arm64 copies into its builder (.dockerignore drops model/weights).
SOURCES = ("pyproject.toml", "README.md", "moecast", "agent", "model", "quantization")
ONNXRUNTIME = "onnxruntime>=1.22,!=1.21.*"  # the Dockerfile's pin
_NETWORK_TROUBLE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No matching distribution found",
    "Could not find a version that satisfies",
    "ConnectTimeoutError",
    "ReadTimeoutError",
)


def _copy_sources(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "weights")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def _run(command: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    # Without the repository on the path: the environment must import what it installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def _pip(command: list[str], cwd: Path) -> None:
    done = _run(command, cwd, 480)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(sign in output for sign in _NETWORK_TROUBLE):
            pytest.skip(f"pip cannot reach a package index: {output[-500:]}")
        pytest.fail(f"{' '.join(command)} failed:\n{output[-3000:]}")


def test_the_wheel_holds_the_single_top_level_package_moecast(edge_venv) -> None:
    wheel = next((edge_venv.parent / "wheels").glob("moecast-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    roots = {name.split("/")[0] for name in names}
    assert {root for root in roots if not root.endswith(".dist-info")} == {"moecast"}
    # Every package folder is in it (pyproject lists them), with the bundle and keys.
    for path in (
        "moecast/agent/ingest/writer.py",
        "moecast/agent/default_bundle/model.onnx",
        "moecast/bundle/dev_key/DEV-PUBLIC-KEY.pem",
        "moecast/fleet/cli.py",
        "moecast/model/data/corpus.py",
        "moecast/quantization/export.py",
    ):
        assert path in names
    packages = {str(p.parent.relative_to(REPO)) for p in REPO.glob("**/__init__.py")}
    folders = {
        p for p in packages if p.split("/")[0] in ("agent", "model", "quantization", "moecast")
    }
    mapped = {f"moecast/{p}" if not p.startswith("moecast") else p for p in folders}
    assert mapped <= {name.rsplit("/", 1)[0] for name in names}


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("edge")
    source = work / "src"
    source.mkdir()
    _copy_sources(source)
    wheels = work / "wheels"
    _pip(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."], source
    )
    venv = work / "venv"
    done = _run([sys.executable, "-m", "venv", str(venv)], work, 120)
    assert done.returncode == 0, done.stderr
    wheel = next(wheels.glob("moecast-*.whl"))
    _pip([str(venv / "bin" / "pip"), "install", "-q", str(wheel), ONNXRUNTIME], work)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_edge_install_has_no_torch_and_has_the_agent_and_the_demo(edge_venv, tmp_path):
    python = str(edge_venv / "bin" / "python")
    no_torch = _run([python, "-c", "import torch"], tmp_path, 60)
    assert no_torch.returncode != 0
    assert "No module named 'torch'" in no_torch.stderr
    code = "import moecast.agent, amqtt, rich; print(moecast.agent.__file__)"
    where = _run([python, "-c", code], tmp_path, 60)
    assert where.returncode == 0, where.stderr
    assert str(edge_venv) in where.stdout  # the installed package, not the checkout
    # One import root: the folders are mapped into `moecast`, not installed as top-level names
    # that collide with any user's `model.py` or `agent/`.
    for name in ("model", "agent", "quantization"):
        done = _run([python, "-c", f"import {name}"], tmp_path, 60)
        assert f"No module named '{name}'" in done.stderr
    check = _run([str(edge_venv / "bin" / "moecast"), "agent", "--check"], tmp_path, 60)
    assert check.returncode == 0, check.stderr
    assert "agent_id:" in check.stdout
    # The demo runs from the edge install: its broker, site and dashboard need no torch.
    demo = _run(
        [str(edge_venv / "bin" / "moecast"), "demo", "--no-tui", "--duration", "20"],
        tmp_path,
        300,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (tmp_path / "demo-report.json").exists()
    # The shipped bundle is in the wheel; a command needing torch names its extra.
    forecast = _run([str(edge_venv / "bin" / "moecast"), "forecast"], tmp_path, 60)
    assert forecast.returncode == 3
    assert "pip install 'moecast[train]'" in forecast.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_installed_agent_forecasts_from_mosquitto(
    edge_venv, broker: Broker, tmp_path, client_factory
):
    storage = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent_id: edge-install\n"
        f"broker: {{url: '{broker.url}'}}\n"
        f"storage_dir: {storage}\n"
        "trust_dev_key: true\n"  # the shipped bundle
        "forecast: {cadence_s: 1}\n"
        "streams: [{pattern: '*', interval_s: 1}]\n"
    )
    watcher: Client = client_factory("watcher")
    watcher.subscribe("forecasts/#")
    watcher.subscribe("moecast/agents/edge-install/status")
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [str(edge_venv / "bin" / "moecast"), "agent", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:

        def online() -> bool:
            if agent.poll() is not None:
                pytest.fail(f"the agent exited: {log.read_text(errors='replace')[-3000:]}")
            states = watcher.messages_on("moecast/agents/edge-install/status")
            return bool(states) and json.loads(states[-1])["state"] == "online"

        # Readings published before the agent's first subscription would reach nobody.
        wait_for(online, 60, "the installed agent to come online")
        sensor = client_factory("sensor")
        now = time.time()
        readings = [{"ts": now - 60 + i, "value": 20 + (i % 10) * 0.1} for i in range(60)]
        sensor.publish("sensors/pi/temperature", json.dumps(readings))

        def forecast() -> bytes | None:
            found = watcher.messages_on("forecasts/pi/temperature")
            return found[-1] if found else None

        payload = json.loads(wait_for(forecast, 60, "a forecast from the installed agent"))
        assert payload["stream"] == "pi/temperature"
        assert len(payload["horizons"]["64"]["median"]) == 64
        wait_for(lambda: (storage / "heartbeat").exists(), 30, "the agent's heartbeat")
        health = _run(
            [str(edge_venv / "bin" / "moecast"), "agent", "--health", "--config", str(config)],
            tmp_path,
            60,
        )
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        agent.terminate()
        assert agent.wait(30) == 0, log.read_text(errors="replace")[-3000:]
