"""Warnings about a local mosquitto's configuration, for `moecast agent --check`.

The agent acknowledges a reading only once it is stored, but the broker acknowledges it to the
publisher on arrival: what the broker drops or forgets after that is lost without a trace but
the sequence gaps (`lost_upstream`). Two mosquitto settings decide it:

- `max_queued_messages` (default 1000) / `max_queued_bytes`: what the broker holds for the agent
  while it is away or busy. Beyond that, mosquitto drops new messages silently.
- `persistence` / `autosave_interval` (default 1800 s): mosquitto writes its sessions and queues
  to disk only at these intervals and at a clean shutdown, so a crash (kill -9, OOM, power)
  loses everything since the last save, the agent's session included.

The agent cannot ask a broker for its limits; when the profile names the broker's config file
(`broker.config_file`, a broker on the same device), `--check` reads it. Only the settings above
are read, from the file and its `include_dir` directories, the last occurrence winning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# mosquitto 2.x defaults (mosquitto.conf(5)).
DEFAULT_MAX_QUEUED_MESSAGES = 1000
DEFAULT_AUTOSAVE_INTERVAL_S = 1800
# Below this many queued messages an agent outage of seconds overflows the queue at a few
# thousand readings/s; the README's sizing rule gives the number for a given site.
MIN_QUEUED_MESSAGES = 100_000
# Longest autosave interval that is not warned about: a crash loses up to this many seconds of
# acknowledged readings.
MAX_AUTOSAVE_INTERVAL_S = 60


@dataclass(frozen=True, slots=True)
class MosquittoLimits:
    """The durability-relevant settings of one mosquitto configuration."""

    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES  # 0: no limit
    max_queued_bytes: int = 0  # 0: no limit
    persistence: bool = False
    autosave_interval: int = DEFAULT_AUTOSAVE_INTERVAL_S
    autosave_on_changes: bool = False  # then autosave_interval counts changes, not seconds
    max_packet_size: int | None = None  # None: no limit


_INT_KEYS = ("max_queued_messages", "max_queued_bytes", "autosave_interval", "max_packet_size")
_BOOL_KEYS = ("persistence", "autosave_on_changes")


class BrokerConfigError(ValueError):
    """The file cannot be read, or a setting we read has a value mosquitto would refuse."""


def read_mosquitto(path: Path) -> MosquittoLimits:
    """The limits `path` sets, mosquitto's defaults for the rest."""
    values: dict[str, int | bool] = {}
    _read_into(path, values, depth=0)
    return MosquittoLimits(**values)  # type: ignore[arg-type]


def _read_into(path: Path, values: dict[str, int | bool], depth: int) -> None:
    if depth > 4:  # include_dir loops: mosquitto itself would not start
        raise BrokerConfigError(f"{path}: include_dir nested too deep")
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise BrokerConfigError(f"cannot read {path}: {err.strerror or err}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()  # mosquitto takes '#' as a comment only at the start of a line
        if len(words) < 2 or words[0].startswith("#"):
            continue
        key, value = words[0], words[1]
        where = f"{path}:{number}"
        if key == "include_dir":
            directory = Path(value)
            for included in sorted(directory.glob("*.conf")) if directory.is_dir() else []:
                _read_into(included, values, depth + 1)
        elif key in _INT_KEYS:
            try:
                values[key] = int(value)
            except ValueError:
                raise BrokerConfigError(f"{where}: {key} {value!r} is not a number") from None
        elif key in _BOOL_KEYS:
            if value not in ("true", "false"):
                raise BrokerConfigError(f"{where}: {key} must be true or false")
            values[key] = value == "true"


def mosquitto_warnings(
    limits: MosquittoLimits, source: str, max_message_bytes: int | None = None
) -> list[str]:
    """One line per unsafe setting; `max_message_bytes`: the agent's largest fleet message."""
    found = []
    queued = limits.max_queued_messages
    if queued == 0 and limits.max_queued_bytes == 0:
        found.append(
            f"{source}: max_queued_messages 0 without max_queued_bytes: the broker's memory for "
            "an absent agent's readings is unbounded; set max_queued_bytes"
        )
    elif 0 < queued < MIN_QUEUED_MESSAGES:
        default = " (mosquitto's default)" if queued == DEFAULT_MAX_QUEUED_MESSAGES else ""
        found.append(
            f"{source}: max_queued_messages {queued}{default}: while the agent is away or busy "
            "the broker acknowledges readings beyond that to the publisher and drops them; size "
            "it as peak messages/s x the longest agent outage (README, 'The broker')"
        )
    if not limits.persistence:
        found.append(
            f"{source}: persistence is off: a broker restart loses the agent's session and every "
            "reading queued for it"
        )
    elif limits.autosave_interval == 0:
        found.append(
            f"{source}: autosave_interval 0: the broker saves only at a clean shutdown, so a "
            "crash loses the agent's session and everything queued since it started"
        )
    elif not limits.autosave_on_changes and limits.autosave_interval > MAX_AUTOSAVE_INTERVAL_S:
        found.append(
            f"{source}: autosave_interval {limits.autosave_interval} s: a broker crash loses up to "
            "that long of acknowledged readings; the shipped config saves every 10 s"
        )
    packet = limits.max_packet_size
    if max_message_bytes is not None and packet is not None and packet < max_message_bytes:
        found.append(
            f"{source}: max_packet_size {packet} is below the agent's updates.max_message_bytes "
            f"{max_message_bytes}: the largest fleet messages the agent takes cannot pass it"
        )
    return found


def broker_config_warnings(config_file: Path | None, max_message_bytes: int) -> list[str]:
    """Warnings for `broker.config_file`, or none when the profile names none."""
    if config_file is None:
        return []
    try:
        limits = read_mosquitto(config_file)
    except BrokerConfigError as err:
        return [f"broker.config_file: {err}; its queue and persistence limits are unchecked"]
    return mosquitto_warnings(limits, str(config_file), max_message_bytes)
