"""The `moecast` command. Each subcommand imports its module only when it runs, so an edge
install (no torch) can run the agent, and a command that needs an extra names it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

# Top-level modules whose absence means an optional extra is not installed.
_EXTRA_OF_MODULE = {
    "torch": "train",
    "safetensors": "train",
    "pandas": "train",
    "tqdm": "train",
    "onnx": "export",
    "onnxscript": "export",
}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # provides add_arguments(parser) and run(args) -> int


COMMANDS: tuple[Command, ...] = (
    Command(
        "forecast",
        "forecast a column of a CSV file with a checkpoint",
        "moecast.model.cli_forecast",
    ),
    Command(
        "train", "pretrain a model on synthetic and real series (resumable)", "moecast.model.train"
    ),
    Command("finetune", "adapt a checkpoint to your own series", "moecast.model.finetune"),
    Command(
        "fit-gate",
        "fit the combination's learned weights to a checkpoint (network frozen)",
        "moecast.model.fit_gate",
    ),
    Command("agent", "run the edge agent on MQTT sensor streams", "moecast.agent.cli"),
    Command(
        "demo", "a simulated site, a broker and the agent: see it work", "moecast.agent.demo.cli"
    ),
    Command(
        "replay",
        "publish a CSV file's columns as sensor streams: load history, or replay it",
        "moecast.agent.replay",
    ),
    Command(
        "export", "export a checkpoint as a signed edge bundle", "moecast.quantization.cli_export"
    ),
    Command(
        "experts",
        "which experts fire for which kinds of series",
        "moecast.quantization.cli_experts",
    ),
    Command("fleet", "sign, publish and track model updates for agents", "moecast.fleet.cli"),
)


class MissingExtraError(RuntimeError):
    """A subcommand needs a package from an optional extra that is not installed."""


def _load(command: Command):
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as err:
        root = (err.name or "").split(".")[0]
        extra = _EXTRA_OF_MODULE.get(root)
        if extra is None:
            raise
        raise MissingExtraError(
            f"`moecast {command.name}` needs {root}, which is in the '{extra}' extra: "
            f"pip install 'moecast[{extra}]'"
        ) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecast", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub.add_parser(command.name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in COMMANDS}
    if not argv or argv[0] not in by_name:
        # Top-level help or an unknown command: argparse prints usage without importing anything.
        build_parser().parse_args(argv)
        return 2
    command = by_name[argv[0]]
    try:
        module = _load(command)
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    parser = argparse.ArgumentParser(prog=f"moecast {command.name}", description=command.help)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
