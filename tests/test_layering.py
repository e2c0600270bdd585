"""The layering is import-linter contracts (pyproject.toml, [tool.importlinter]): the agent
never needs torch, the model imports neither side of the bundle, quantization imports only the
model and the bundle format, the fleet commands need no torch."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where pyproject's package-dir maps each folder into the `moecast` namespace.
MAPPED = {"agent": "agent", "model": "model", "quantization": "quantization"}


def namespace_tree(into: Path) -> Path:
    """The installed layout as symlinks (moecast/agent -> agent/, ...), for grimp, which
    finds a package's modules by walking its folder rather than through package-dir."""
    package = into / "moecast"
    package.mkdir()
    for entry in (ROOT / "moecast").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(ROOT / folder)
    return into


def lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command;"
            " sys.exit(lint_imports_command())",
            "--config",
            str(config),
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,  # not ROOT: its moecast/ folder would come first on sys.path
    )


def test_import_contracts_hold(tmp_path: Path) -> None:
    pytest.importorskip("importlinter")
    done = lint_imports(namespace_tree(tmp_path), ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    """The contracts can fail: the same check on a copy of the agent that imports the model."""
    pytest.importorskip("importlinter")
    tree = tmp_path / "tree"
    tree.mkdir()
    package = tree / "moecast"
    package.mkdir()
    for entry in (ROOT / "moecast").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in ("model", "quantization"):
        (package / name).symlink_to(ROOT / name)
    agent = package / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    (agent / "leak.py").write_text("from moecast.model.network import MoecastModel\n")
    done = lint_imports(tree, ROOT / "pyproject.toml")
    assert done.returncode == 1
    assert "moecast.agent.leak -> moecast.model.network" in done.stdout


def test_every_agent_module_imports_without_torch():
    import moecast.agent

    modules = [m.name for m in pkgutil.walk_packages(moecast.agent.__path__, "moecast.agent.")]
    code = (
        "import sys, importlib\n"
        "for blocked in ('torch', 'moecast.model', 'moecast.quantization', 'pandas'):\n"
        "    sys.modules[blocked] = None\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert len(modules) >= 20
