"""`moecast agent`: run the edge agent until SIGTERM or SIGINT, or `--check` its settings.

`--check` prints the effective settings (YAML, secrets masked) and, on stderr, what the agent
will do with them: which bundle it forecasts with (verified as at start) or that it will only
ingest, the stream rules and alerts, the limits that reject readings.

Exit status: 0 after a clean stop or a valid `--check`; 1 when the agent cannot open its store
or fails while running (its writer thread died); 2 for invalid settings or a bundle that fails
verification. `--health` (a container's health check): 0 while the running agent's heartbeat
file (agent.heartbeat) is fresh, 1 otherwise.

The bundle is `bundle_path`, else the default one shipped in `agent/default_bundle/`. That one
is signed with the development key, so it is used only with `trust_dev_key: true`; without it,
or while the directory is empty, the agent ingests and stores readings but forecasts nothing.
A model installed by a fleet update (`updates.group`, agent.updates) takes precedence over both
once committed.
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

from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ops.broker_config import broker_config_warnings
from moecast.agent.ops.heartbeat import HEARTBEAT_FILE, Heartbeat, check
from moecast.agent.ops.memory import limit_malloc_arenas, map_large_blocks
from moecast.agent.ops.metrics import PrometheusError
from moecast.agent.settings import (
    AgentSettings,
    SettingsFileError,
    StreamRule,
    describe_settings_error,
    load_settings,
)
from moecast.agent.updates.wiring import build_agent, open_slots
from pydantic import ValidationError
from pydantic_settings import SettingsError

from moecast.bundle.format import DEV_PUBLIC_KEY, MANIFEST_FILE, BundleError, load_bundle

log = logging.getLogger("agent")

_HEALTH_CHECK_S = 1.0
DEFAULT_BUNDLE = Path(__file__).parent / "default_bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML settings file; MOECAST_* environment variables override it",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings and the bundle, print the settings as YAML (secrets "
        "masked) and what the agent will do with them, and exit",
    )
    parser.add_argument(
        "--health",
        action="store_true",
        help="exit 0 if the agent using these settings is beating (its heartbeat file), else 1",
    )


def run(args: argparse.Namespace) -> int:
    settings = _settings_or_none(args.config)
    if settings is None:
        return 2
    if args.check:
        print(settings.effective_yaml(), end="")
        try:
            plan, warnings = describe_plan(settings)
        except BundleError as err:
            print(f"error: bundle rejected: {err}", file=sys.stderr)
            return 2
        print("the agent will:", file=sys.stderr)
        for line in plan:
            print(f"  - {line}", file=sys.stderr)
        broker = settings.broker
        for warning in [
            *warnings,
            *trust_warnings(settings),
            *broker_config_warnings(broker.config_file, settings.updates.max_message_bytes),
        ]:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if args.health:
        healthy, why = check(settings.storage_dir / HEARTBEAT_FILE)
        print(why)
        return 0 if healthy else 1
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return serve(settings)


def trust_warnings(settings: AgentSettings) -> list[str]:
    """What an operator must hear about the keys this agent trusts, at every start."""
    warnings = []
    if settings.trust_dev_key:
        warnings.append(
            "trust_dev_key is on: the development key's private half is public, so anyone can "
            "sign a bundle this agent accepts as its configured model; for evaluation only"
        )
        if settings.updates.group is not None and settings.updates.accept_dev_key_updates:
            warnings.append(
                "updates.accept_dev_key_updates is on: anyone who can publish to "
                f"{settings.topics.fleet}/{settings.updates.group}/bundle can install a model"
            )
    return warnings


def serve(settings: AgentSettings) -> int:
    """Run until a termination signal; then store what arrived and say `offline`."""
    limit_malloc_arenas()  # before any thread of ours starts
    map_large_blocks()
    stop = threading.Event()
    for warning in trust_warnings(settings):
        log.warning(warning)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    try:
        # A model installed by a fleet update (a committed slot) comes first.
        slots, installed, interrupted = open_slots(settings)
        forecaster = Forecaster(installed, settings) if installed else _forecaster_or_none(settings)
    except BundleError as err:
        print(f"error: bundle rejected: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot open the model slots: {err}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        agent, updates = build_agent(settings, forecaster, slots, interrupted)
    except (OSError, sqlite3.Error) as err:
        print(f"error: cannot open the store in {settings.storage_dir}: {err}", file=sys.stderr)
        return 1
    try:
        agent.start()
        updates.start()
    except PrometheusError as err:
        print(f"error: {err}", file=sys.stderr)
        agent.stop()
        return 2
    status = 0
    heartbeat = Heartbeat(settings.storage_dir / HEARTBEAT_FILE)
    while not stop.wait(_HEALTH_CHECK_S):
        if not agent.healthy:
            log.critical("the ingest writer thread died; stopping")
            status = 1
            break
        heartbeat.beat(agent.link.connected.is_set())
    heartbeat.stop()
    updates.stop()
    agent.stop()
    return status


def _bundle_choice(settings: AgentSettings) -> tuple[Path | None, str]:
    """The bundle the agent starts with, or None and why it forecasts nothing."""
    if settings.bundle_path is not None:
        return settings.bundle_path, ""
    if not (DEFAULT_BUNDLE / MANIFEST_FILE).exists():
        return None, "no bundle available (bundle_path unset)"
    if not settings.trust_dev_key:
        return None, (
            f"the default bundle {DEFAULT_BUNDLE} is signed with the development key: set "
            "trust_dev_key: true to forecast with it (never in production), or set "
            "bundle_path"
        )
    return DEFAULT_BUNDLE, ""


def _trusted_keys(settings: AgentSettings) -> list[Path]:
    keys: list[Path] = list(settings.trusted_keys)
    if settings.trust_dev_key:
        keys.append(DEV_PUBLIC_KEY)
    return keys


def describe_plan(settings: AgentSettings) -> tuple[list[str], list[str]]:
    """What an agent with `settings` will do, one line each, and warnings: `--check` prints
    them. Verifies the bundle as the agent would (raises BundleError where it would exit 2)."""
    forecast = settings.forecast
    plan = [
        f"subscribe to {settings.topics.sensors}/+/+ on {settings.broker.url} and store readings "
        f"in {settings.readings_db}; readings older than "
        f"{_duration(settings.limits.payload.max_age_s)} are rejected "
        "(limits.payload.max_age_s)"
    ]
    warnings = []
    path, why_not = _bundle_choice(settings)
    if path is None:
        plan.append(f"ingest only, forecast nothing: {why_not}")
        if settings.updates.group is None:
            warnings.append(f"nothing will be forecast: {why_not}")
    else:
        manifest = load_bundle(path, _trusted_keys(settings), 1).manifest
        plan.append(
            f"forecast every {forecast.cadence_s:g} s with {path}: {manifest.name} version "
            f"{manifest.model_version}, {manifest.quantization}, context "
            f"{manifest.context_length}, horizons {'/'.join(map(str, manifest.horizons))} "
            "(signature verified)"
        )
        stale = (
            "16 intervals (at least 600 s)"
            if forecast.stale_after_s == "auto"
            else f"{forecast.stale_after_s:g} s"
        )
        plan.append(
            f"publish to {settings.topics.forecasts}/<device>/<sensor> ({forecast.payload} "
            f"payloads, {forecast.publish.replace('_', ' ')}, retained {forecast.expiry_s} s); "
            f"skip streams nothing arrived for in {stale}"
        )
    if settings.updates.group is not None:
        plan.append(
            f"install fleet updates for group {settings.updates.group!r} from "
            f"{settings.topics.fleet}/{settings.updates.group}/bundle; a committed one is "
            "forecast with from then on"
        )
    for rule in settings.streams:
        plan.append(f"streams matching {rule.pattern!r}: {_describe_rule(rule)}")
    if not any(rule.pattern == "*" for rule in settings.streams):
        plan.append("streams matching no rule: interval detected, the bundle's context")
    return plan, warnings


def _describe_rule(rule: StreamRule) -> str:
    parts = [
        "interval detected" if rule.interval_s == "auto" else f"interval {rule.interval_s:g} s"
    ]
    if rule.context_points:
        parts.append(f"{rule.context_points} points of context")
    if rule.min is not None or rule.max is not None:
        low = "-inf" if rule.min is None else f"{rule.min:g}"
        high = "inf" if rule.max is None else f"{rule.max:g}"
        parts.append(f"forecasts clipped to [{low}, {high}]")
    for alert in rule.alerts:
        side, threshold = (
            ("above", alert.above) if alert.above is not None else ("below", alert.below)
        )
        parts.append(
            f"alert {alert.name!r} when P({side} {threshold:g} within {alert.within_steps} "
            f"steps) >= {alert.probability:g}"
        )
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


def _forecaster_or_none(settings: AgentSettings) -> Forecaster | None:
    """The forecaster of the configured or default bundle; None to run without forecasts.
    Raises BundleError for a bundle that fails verification."""
    path, why_not = _bundle_choice(settings)
    if path is None:
        log.warning("%s: ingesting only, no forecasts", why_not)
        return None
    bundle = load_bundle(path, _trusted_keys(settings), settings.threads)
    manifest = bundle.manifest
    log.info(
        "bundle %s loaded: %s version %d, %s",
        path,
        manifest.name,
        manifest.model_version,
        manifest.quantization,
    )
    return Forecaster(bundle, settings)


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
