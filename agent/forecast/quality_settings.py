"""Settings of the forecasts' self-checks (`quality:`) and of Home Assistant discovery
(`homeassistant:`), kept apart from `moecast.agent.settings` so that the sections the quality
modules own live beside them; `AgentSettings` holds one of each."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _topic_prefix(prefix: str) -> str:
    levels = prefix.split("/")
    if any(not level or "+" in level or "#" in level or "\0" in level for level in levels):
        raise ValueError(
            f"{prefix!r} must be non-empty topic levels joined by '/', without wildcards"
        )
    return prefix


class AnomalySettings(_Section):
    """Closed grid bins judged against the forecast that covered them (quality.anomalies)."""

    enabled: bool = True  # judge closed bins and publish raised/cleared/stale events
    topic: str = "anomalies"  # events go to <topic>/<device>/<sensor>
    # Raise when a bin's mean lies this improbably far in the forecast's tails (one-sided
    # tail probability; beyond the outer quantiles the tails are extrapolated exponentially).
    tail_probability: float = Field(default=0.001, gt=0, lt=0.5)
    # A raised anomaly clears after this many judged bins in a row inside the outer quantiles.
    clear_after: int = Field(default=3, gt=0)
    # Retained events: the last state of each stream is there for late subscribers (Home
    # Assistant's binary_sensor after a restart).
    retain: bool = True
    report_stale: bool = True  # one "stale" event when a forecast stream falls silent

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        return _topic_prefix(topic)


class QualitySettings(_Section):
    """Live skill, calibrated intervals and anomalies (moecast.agent.forecast.quality)."""

    enabled: bool = True  # score issued forecasts, calibrate, judge anomalies
    # Issued forecasts kept per stream and head, spaced h/origins_per_head bins apart, so the
    # scored steps cover every lead time of a head. Memory per stream grows linearly with it.
    origins_per_head: int = Field(default=2, ge=1, le=16)
    # Scored steps the rolling summaries reach back: each new step weighs 1, older ones decay
    # by 1 - 1/skill_window per step (an exponentially weighted window).
    skill_window: int = Field(default=500, ge=1)
    calibrate: bool = True  # adapt published quantiles so their coverage meets their levels
    # Step size of the calibration (adaptive conformal inference on the log of each level's
    # distance from the median), per scored step of the 1-step head; an h-step head takes
    # rate / sqrt(h) per step. Larger adapts faster and fluctuates more.
    calibration_rate: float = Field(default=0.05, gt=0, le=1)
    raw_quantiles: bool = False  # also publish the model's uncalibrated quantiles
    save_interval_s: float = Field(default=300.0, gt=0)  # summaries written to SQLite this often
    # Per-stream summaries on the metrics topic for at most this many streams (aggregates
    # always; Prometheus always has every stream).
    metrics_streams: int = Field(default=50, ge=0)
    anomalies: AnomalySettings = AnomalySettings()


class HomeAssistantSettings(_Section):
    """MQTT discovery for Home Assistant (moecast.agent.ops.homeassistant)."""

    enabled: bool = False  # publish retained discovery configs; false removes earlier ones
    prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    node_id: str | None = None  # default: the agent id
    # The sensor's state is the median this far ahead (rounded to whole grid steps, within
    # the longest head).
    state_ahead_s: float = Field(default=3600.0, gt=0)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return _topic_prefix(prefix)
