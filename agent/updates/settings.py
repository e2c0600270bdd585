"""Settings of fleet model updates: `updates:` in the agent's YAML."""

from __future__ import annotations

from moecast.agent.ingest.readings import name_problem
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_BUNDLE_BYTES = 64 * 2**20


class UpdateSettings(BaseModel):
    """Where updates come from and how much of the network an update may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The fleet group whose bundles this agent installs, from `<fleet>/<group>/bundle`.
    # None: the agent subscribes to no bundle topic and runs the bundle it started with.
    group: str | None = None
    # Healthy forecasting ticks (every output finite, quantiles in order) a new model must
    # run before it is committed; a tick that forecasts nothing does not count.
    trial_ticks: int = Field(default=5, gt=0)
    # Share of forecast steps whose quantiles may cross before a trial tick counts as
    # unhealthy: int8 rounding can swap two nearly equal quantiles of a good model.
    trial_max_crossing_share: float = Field(default=0.01, ge=0.0, le=1.0)
    # Largest model accepted, checked against the signed announcement before any download.
    max_bundle_bytes: int = Field(default=DEFAULT_MAX_BUNDLE_BYTES, gt=0)
    # Largest fleet message (a chunk or the announcement), dropped on the network thread when
    # larger, before it is queued or parsed: a flood of them cannot pile up in the agent. paho
    # has read each one by then; the broker's `max_packet_size` bounds that
    # (firmware_configs/mosquitto.conf).
    max_message_bytes: int = Field(default=2 * 2**20, gt=0)
    # How long after an announcement its chunks may take to arrive before it is rejected.
    download_timeout_s: float = Field(default=600.0, gt=0)
    # Rejected announcements (malformed, unsigned, forged) reported per hour on the progress
    # topic and in the log; more are only counted. Copies of one announcement are skipped
    # unreported, and a validly signed one is never held back by a flood before it.
    max_announcements_per_hour: int = Field(default=60, gt=0)
    # Fleet messages waiting for the update thread; more are dropped (and counted).
    queue_size: int = Field(default=256, gt=0)
    # Let the development key (trust_dev_key) sign fleet updates too. Its private half is
    # public: anyone on the broker could install a model. For a lab bench only; the agent
    # warns at start while it is on.
    accept_dev_key_updates: bool = False

    @field_validator("group")
    @classmethod
    def _group(cls, group: str | None) -> str | None:
        if group is not None and (problem := name_problem(group)) is not None:
            raise ValueError(f"{group!r} {problem}")
        return group
