"""`moecast agent`: run the edge agent until SIGTERM or SIGINT, or `--check` its settings.

Exit status: 0 after a clean stop or a valid `--check`; 1 when the agent cannot open its store
or fails while running (its writer thread died); 2 for invalid settings.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from pydantic_settings import SettingsError

from agent.metrics import PrometheusError
from agent.runtime import Agent
from agent.settings import (
    AgentSettings,
    SettingsFileError,
    describe_settings_error,
    load_settings,
)

log = logging.getLogger("agent")

_HEALTH_CHECK_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML settings file; MOECAST_* environment variables override it",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings, print them as YAML (secrets masked) and exit",
    )


def run(args: argparse.Namespace) -> int:
    settings = _settings_or_none(args.config)
    if settings is None:
        return 2
    if args.check:
        print(settings.effective_yaml(), end="")
        return 0
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return serve(settings)


def serve(settings: AgentSettings) -> int:
    """Run until a termination signal; then store what arrived and say `offline`."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        agent = Agent(settings)
    except (OSError, sqlite3.Error) as err:
        print(f"error: cannot open the store in {settings.storage_dir}: {err}", file=sys.stderr)
        return 1
    try:
        agent.start()
    except PrometheusError as err:
        print(f"error: {err}", file=sys.stderr)
        agent.stop()
        return 2
    status = 0
    while not stop.wait(_HEALTH_CHECK_S):
        if not agent.healthy:
            log.critical("the ingest writer thread died; stopping")
            status = 1
            break
    agent.stop()
    return status


def _settings_or_none(config: Path | None) -> AgentSettings | None:
    try:
        return load_settings(config)
    except SettingsFileError as err:
        print(f"error: {err}", file=sys.stderr)
    except (ValidationError, SettingsError) as err:
        source = f" ({config} and the MOECAST_* environment)" if config else ""
        print(f"error: invalid agent settings{source}:", file=sys.stderr)
        for line in describe_settings_error(err):
            print(f"  {line}", file=sys.stderr)
    return None
