"""The agent's settings: defaults, a YAML file, `MOECAST_*` environment variables, keyword args.

Precedence, highest first: keyword arguments > environment > YAML file > defaults. Environment
variables are `MOECAST_` plus the field path joined by `__`, e.g. `MOECAST_BROKER__URL`,
`MOECAST_LIMITS__STREAMS__MAX_STREAMS`; lists and mappings are given as JSON.

Every model forbids unknown keys, so a misspelt key in the YAML file is an error that names
it rather than a setting silently left at its default.
"""

from __future__ import annotations

import difflib
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from moecast.agent.forecast.alerts import AlertRule
from moecast.agent.forecast.quality_settings import HomeAssistantSettings, QualitySettings
from moecast.agent.ingest.payloads import PayloadLimits
from moecast.agent.ingest.readings import StreamId, name_problem
from moecast.agent.ingest.store import StoreLimits
from moecast.agent.ingest.streams import StreamLimits
from moecast.agent.ops.metrics import is_loopback_host, prometheus_exposure_warning
from moecast.agent.updates.settings import UpdateSettings
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# The user-info part of anything URL-shaped, up to its last '@': greedy, so a password holding
# '/' or ':' is masked too. Usernames are masked along with passwords, since some brokers take
# a token as the user name.
_URL_USERINFO = re.compile(r"(?<=://)[^\s'\"]*@")


def redact_urls(text: str) -> str:
    """`text` with the credentials of any URL in it masked: error messages echo their input."""
    return _URL_USERINFO.sub("***@", text)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _protocol_text(raw: object) -> object:
    # YAML reads `protocol: 5` as a number (and 5 == 5.0).
    return "5" if raw in (5, "5.0") else raw


class TlsSettings(_Section):
    """TLS for an mqtts:// broker; without `ca_file` the system's trusted CAs apply."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None  # client certificate, for brokers that require one
    key_file: FilePath | None = None
    # Skips certificate and host name verification: for test brokers only.
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerSettings(_Section):
    url: str = "mqtt://localhost:1883"  # mqtt://host[:port] or mqtts:// for TLS
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol_text)] = "5"
    client_id: str | None = None  # default: "moecast-<agent_id>", stable across restarts
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    keepalive_s: int = Field(default=30, ge=5, le=65_535)  # the LWT fires after 1.5x this
    # How long the broker keeps the session (subscriptions, queued QoS 1 readings) while the
    # agent is away; MQTT 5 only, a 3.1.1 session lasts until the broker expires it.
    session_expiry_s: int = Field(default=7 * 86_400, gt=0, lt=2**32 - 1)
    # MQTT 5 Receive Maximum: unacknowledged QoS 1 messages the broker may have in flight to
    # the agent. Bounds what sits in the ingest queue, and caps QoS 1 throughput.
    receive_maximum: int = Field(default=1_000, gt=0, le=65_535)
    reconnect_min_s: float = Field(default=1.0, gt=0)  # first reconnect delay, doubling ...
    reconnect_max_s: float = Field(default=60.0, gt=0)  # ... up to this
    # The broker's mosquitto.conf, when it runs on this device: `--check` reads its queue and
    # persistence limits and warns where they can lose acknowledged readings.
    config_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"must start with mqtt:// or mqtts:// (got {url!r})")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in broker.username and broker.password")
        if not parts.hostname:
            raise ValueError(f"has no host (got {url!r})")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"must be scheme://host[:port] only (got {url!r})")
        try:
            parts.port  # noqa: B018  # raises on a port that is not a number or out of range
        except ValueError as err:
            raise ValueError(f"has a bad port: {err}") from None
        return url

    @model_validator(mode="after")
    def _consistent(self) -> BrokerSettings:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if not self.uses_tls and self.tls != TlsSettings():
            raise ValueError("tls settings need an mqtts:// url")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # the validator guarantees it
        return host

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or _DEFAULT_PORTS[parts.scheme]


class TopicSettings(_Section):
    """Topic prefixes: readings arrive on `<sensors>/<device>/<sensor>`."""

    sensors: str = "sensors"  # readings arrive on <sensors>/<device>/<sensor>
    forecasts: str = "forecasts"  # forecasts go to <forecasts>/<device>/<sensor>
    alerts: str = "alerts"  # alerts go to <alerts>/<device>/<sensor>
    agents: str = "moecast/agents"  # status and metrics: <agents>/<agent_id>/...
    fleet: str = "moecast/fleet"  # bundles for a group: <fleet>/<group>/bundle
    # At most 1: paho keeps a QoS 2 handshake's state in memory only, so a restarted agent
    # would complete (and lose) a message it had not stored; QoS 1 redelivers it instead.
    subscribe_qos: int = Field(default=1, ge=0, le=1)
    # The <device>/<sensor> filters (MQTT wildcards) this agent subscribes to under
    # <sensors>/: to shard a site over agents, give each its own part (e.g. ["line-1/+"] and
    # ["line-2/+", "roof/+"]); a stream's history lives with the agent its readings reach.
    filters: list[str] = Field(default=["+/+"], min_length=1)

    @field_validator("filters")
    @classmethod
    def _filters(cls, filters: list[str]) -> list[str]:
        for topic_filter in filters:
            levels = topic_filter.split("/")
            bad = (
                len(levels) > 2
                or any(not level or "\0" in level for level in levels)
                or any("+" in level and level != "+" for level in levels)
                or any(
                    "#" in level and (level != "#" or i != len(levels) - 1)
                    for i, level in enumerate(levels)
                )
            )
            if bad:
                raise ValueError(
                    f"{topic_filter!r} must be a <device>/<sensor> filter: two levels, '+' a "
                    "whole level, '#' only last (e.g. 'line-1/+', '+/temperature', '#')"
                )
        return filters

    def sensor_subscriptions(self) -> list[str]:
        """The topic filters the link subscribes to."""
        return [f"{self.sensors}/{topic_filter}" for topic_filter in self.filters]

    @field_validator("sensors", "forecasts", "alerts", "agents", "fleet")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        levels = prefix.split("/")
        if any(not level or "+" in level or "#" in level or "\0" in level for level in levels):
            raise ValueError(
                f"{prefix!r} must be non-empty topic levels joined by '/', without wildcards"
            )
        return prefix


class StreamRule(_Section):
    """Settings for the streams whose `device/sensor` matches `pattern`.

    `pattern` is a shell glob over "device/sensor" (`*` also matches across '/'), e.g.
    "site1/temp*" or "*/humidity". The first matching rule in the list applies.
    """

    pattern: str = Field(min_length=1)  # glob over <device>/<sensor>; the first match wins
    interval_s: float | Literal["auto"] = "auto"  # the grid step; "auto": detected
    context_points: int | None = Field(default=None, gt=0)  # None: the bundle's context length
    alerts: list[AlertRule] = []  # rules evaluated on each forecast of a matching stream
    # The sensor's physical lower bound (e.g. 0 for a level or a vibration amplitude): the
    # medians and quantiles of its forecasts are clipped to it. None: unbounded.
    min: float | None = None
    max: float | None = None  # the upper bound, likewise (e.g. 100 for a percentage)

    @field_validator("interval_s", mode="before")
    @classmethod
    def _interval(cls, interval: object) -> object:
        # One clear message instead of one per member of the union.
        if interval == "auto":
            return interval
        problem = ValueError("must be a positive number of seconds or 'auto'")
        if isinstance(interval, bool) or not isinstance(interval, int | float | str):
            raise problem
        try:
            seconds = float(interval)
        except ValueError:
            raise problem from None
        if not 0 < seconds < float("inf"):
            raise problem
        return seconds

    @field_validator("alerts")
    @classmethod
    def _unique_names(cls, alerts: list[AlertRule]) -> list[AlertRule]:
        names = [rule.name for rule in alerts]
        if len(set(names)) != len(names):
            raise ValueError(f"alert rule names must be unique within a pattern: {names}")
        return alerts

    @model_validator(mode="after")
    def _bounds(self) -> StreamRule:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self

    def matches(self, stream: StreamId) -> bool:
        return fnmatchcase(str(stream), self.pattern)


class ForecastSettings(_Section):
    cadence_s: float = Field(default=60.0, gt=0)  # seconds between forecasting ticks
    # MQTT 5 message expiry of published forecasts: a stale forecast is not delivered late.
    expiry_s: int = Field(default=900, gt=0)
    # Observed (non-empty) grid bins a stream needs before it is forecast: fewer say too
    # little for the model's per-series scaling to mean anything.
    min_observed_bins: int = Field(default=8, gt=0)
    # A stream no reading has *arrived* for in this long (agent clock, not the readings' own
    # timestamps, so replayed history counts as fresh) is not forecast: counted and logged as
    # "stale", its retained forecast expires. "auto": 16 of the stream's intervals, at least
    # 600 s (see moecast.agent.forecast.tick); a fixed time would silence daily streams or keep
    # 1 s ones too long.
    stale_after_s: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    # "on_change": publish a stream's forecast when its origin (grid_end) or the model changed,
    # or when the retained one is half way to expiry_s; "every_tick": at every tick.
    publish: Literal["on_change", "every_tick"] = "on_change"
    # "full": every quantile level, 6 significant digits, step timestamps. "compact" (for
    # constrained links): the median and the 80 % interval (0.1 and 0.9), 4 significant
    # digits, no step timestamps (step i lies at grid_end + i * interval_s).
    payload: Literal["full", "compact"] = "full"


class IngestSettings(_Section):
    queue_size: int = Field(default=10_000, gt=0)  # messages between the network and the writer
    # Payload bytes between the network and the writer: over it, QoS 0 messages are dropped
    # ("queue_full", after qos0_wait_s) and QoS 1 ones wait. The message count alone allows
    # gigabytes.
    queue_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # How long a QoS 0 message that finds the queue full waits for the writer to make room
    # before it is dropped ("queue_full"). Readings arriving faster than they can be stored
    # then wait in the socket and the broker (whose limits apply) instead of each costing the
    # network thread paho's decoding only to be dropped, time taken from the writer. After a
    # wait that timed out (a stalled writer), messages are dropped at once until the writer
    # has made room again. 0: drop at once.
    qos0_wait_s: float = Field(default=0.1, ge=0)
    batch_max_messages: int = Field(default=1_000, gt=0)  # per SQLite transaction
    # Payload bytes per transaction (one message may exceed it): a reading takes ~5x its JSON
    # size in memory until committed, so a thousand batch payloads in one transaction would
    # hold hundreds of MB. 256 KiB (~7k readings) already amortises the commit.
    batch_max_bytes: int = Field(default=256 * 1024, gt=0)
    batch_window_s: float = Field(default=0.05, gt=0)  # longest time spent filling one batch
    log_interval_s: float = Field(default=60.0, gt=0)  # at most one log line per reason per this


class Limits(_Section):
    payload: PayloadLimits = PayloadLimits()
    streams: StreamLimits = StreamLimits()
    store: StoreLimits = StoreLimits()


class MetricsSettings(_Section):
    interval_s: float = Field(default=60.0, gt=0)  # publishing period on the metrics topic
    prometheus_port: int | None = Field(default=None, ge=1, le=65_535)  # None: no endpoint
    # The endpoint has no authentication: anything but a loopback address exposes it beyond the
    # device, and the agent warns at start and in --check.
    prometheus_host: str = "127.0.0.1"


def _default_agent_id() -> str:
    """The host name made safe as a topic level: stable on a device across restarts."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-.")[:64]
    return safe or "agent"


# The YAML file of the settings being loaded: settings_customise_sources is a classmethod
# without per-call arguments, and a context variable keeps concurrent loads apart.
_yaml_file: ContextVar[Path | None] = ContextVar("moecast_agent_yaml_file", default=None)


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOECAST_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    agent_id: str = Field(default_factory=_default_agent_id)  # default: the host name
    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    streams: list[StreamRule] = []  # per stream pattern: grid interval, context, alert rules
    forecast: ForecastSettings = ForecastSettings()
    ingest: IngestSettings = IngestSettings()
    limits: Limits = Limits()
    metrics: MetricsSettings = MetricsSettings()
    storage_dir: Path = Path("moecast-data")  # readings.db lives here
    threads: int = Field(default=1, gt=0)  # inference threads
    bundle_path: Path | None = None  # the model bundle to load at start
    trusted_keys: list[FilePath] = []  # Ed25519 public keys that may sign bundles
    # Also trust the public development key (moecast/bundle/dev_key): needed for the default bundle,
    # which is signed with it; never in production, where anyone can sign with that key.
    trust_dev_key: bool = False
    updates: UpdateSettings = UpdateSettings()  # fleet model updates (agent.updates)
    quality: QualitySettings = QualitySettings()  # live skill, calibration, anomalies
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()  # MQTT discovery
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _yaml_file.get()
        if yaml_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file)

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, agent_id: str) -> str:
        problem = name_problem(agent_id)
        if problem is not None:
            raise ValueError(f"{agent_id!r} {problem}")
        return agent_id

    @field_validator("bundle_path")
    @classmethod
    def _bundle_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.exists():
            raise ValueError("does not exist")
        return path

    @model_validator(mode="after")
    def _derived(self) -> AgentSettings:
        if self.broker.client_id is None:
            self.broker = self.broker.model_copy(update={"client_id": f"moecast-{self.agent_id}"})
        dev_updates = self.trust_dev_key and self.updates.accept_dev_key_updates
        if self.updates.group is not None and not (self.trusted_keys or dev_updates):
            why = "without one no bundle can be accepted"
            if self.trust_dev_key:
                why = (
                    "trust_dev_key covers the shipped bundle, never fleet updates (anyone can "
                    "sign with the development key; updates.accept_dev_key_updates: true "
                    "allows it on a lab bench)"
                )
            raise ValueError(f"updates.group needs trusted_keys: {why}")
        if self.ingest.queue_size <= self.broker.receive_maximum:
            raise ValueError(
                "ingest.queue_size must exceed broker.receive_maximum, or QoS 1 deliveries "
                "can stall the network thread"
            )
        if self.limits.payload.max_bytes > self.ingest.queue_bytes:
            raise ValueError(
                "limits.payload.max_bytes must not exceed ingest.queue_bytes: such a message "
                "would only fit into an empty queue"
            )
        return self

    @property
    def client_id(self) -> str:
        assert self.broker.client_id is not None  # filled in by the validator
        return self.broker.client_id

    @property
    def status_topic(self) -> str:
        return f"{self.topics.agents}/{self.agent_id}/status"

    @property
    def metrics_topic(self) -> str:
        return f"{self.topics.agents}/{self.agent_id}/metrics"

    @property
    def bundle_status_topic(self) -> str:
        return f"{self.topics.agents}/{self.agent_id}/bundle"

    @property
    def readings_db(self) -> Path:
        return self.storage_dir / "readings.db"

    def rule_for(self, stream: StreamId) -> StreamRule | None:
        """The first stream rule whose pattern matches `stream`, if any."""
        return next((rule for rule in self.streams if rule.matches(stream)), None)

    def warnings(self) -> list[str]:
        """Valid but risky choices, one line each: `--check` prints them as YAML comments."""
        found = []
        if self.metrics.prometheus_port is not None:
            exposed = prometheus_exposure_warning(self.metrics.prometheus_host)
            if exposed is not None:
                found.append(exposed)
        broker = self.broker
        if not is_loopback_host(broker.host):
            if not broker.uses_tls:
                found.append(
                    f"broker.url {broker.url!r} is a remote broker without TLS: readings and "
                    "credentials cross the network in clear text; use mqtts://"
                )
            elif broker.tls.insecure:
                found.append("broker.tls.insecure is set: the broker's identity is not checked")
            if broker.username is None and broker.tls.cert_file is None:
                found.append(
                    "a remote broker without authentication: set broker.username (and the "
                    "password in MOECAST_BROKER__PASSWORD) or a client certificate"
                )
        return found

    def effective_yaml(self) -> str:
        """The settings as YAML, secrets masked, after any warnings as comments: what
        `moecast agent --check` prints."""
        comments = "".join(f"# WARNING: {warning}\n" for warning in self.warnings())
        return comments + yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class SettingsFileError(ValueError):
    """The YAML file cannot be read or is not a mapping of settings."""


def load_settings(config: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from defaults, `config` (YAML), the environment and `overrides`, in rising
    precedence. Raises SettingsFileError, pydantic's ValidationError or SettingsError."""
    if config is not None:
        _check_yaml_file(config)
    with _reading_yaml(config):
        return AgentSettings(**overrides)


@contextmanager
def _reading_yaml(config: Path | None) -> Iterator[None]:
    token = _yaml_file.set(config)
    try:
        yield
    finally:
        _yaml_file.reset(token)


def _check_yaml_file(config: Path) -> None:
    # YamlConfigSettingsSource skips a missing file and fails obscurely on a non-mapping one.
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as err:
        raise SettingsFileError(f"cannot read {config}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SettingsFileError(f"{config} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or err
        raise SettingsFileError(f"{config} is not valid YAML{at}: {problem}") from None
    if document is not None and not isinstance(document, dict):
        kind = type(document).__name__
        raise SettingsFileError(f"{config} must hold a mapping of settings, not a {kind}")


def describe_settings_error(error: Exception) -> list[str]:
    """One short line per problem, each naming the field path: no traceback, no secrets."""
    if isinstance(error, ValidationError):
        lines = []
        for problem in error.errors(include_url=False):
            path = _field_path(problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            shown = problem.get("input")
            secret = any("password" in str(part) for part in problem["loc"])
            if problem["type"] == "extra_forbidden":
                message = "unknown setting"
                closest = closest_setting(problem["loc"])
                if closest is not None:
                    message += f"; did you mean {closest!r}?"
            elif isinstance(shown, str | int | float) and not secret and repr(shown) not in message:
                message += f" (got {shown!r})"
            line = f"{path}: {message}" if path else message
            # Validators quote the URL they reject, and a URL can carry a password.
            lines.append(redact_urls(line))
        return lines
    # SettingsError: an environment variable that is not valid JSON for a list or mapping.
    return [redact_urls(str(error))]


def closest_setting(loc: tuple[int | str, ...]) -> str | None:
    """The known setting nearest in spelling to the unknown one at `loc` (its last part), among
    the fields of the section that holds it; None when nothing is close."""
    fields = _fields_of_section(loc[:-1])
    if fields is None or not loc or not isinstance(loc[-1], str):
        return None
    found = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.6)
    return found[0] if found else None


def _fields_of_section(loc: tuple[int | str, ...]) -> list[str] | None:
    model: type[BaseModel] | None = AgentSettings
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: its model is the list's
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = _model_in(field.annotation)
    return None if model is None else list(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The settings model an annotation holds: itself, a list's items, an optional's value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "literal[")):
            path += f".{part}" if path else part
    return path
