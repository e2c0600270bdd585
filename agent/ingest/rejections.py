"""What a rejection log line says: what was dropped, and the setting that would have let it in.

Kept apart from the parsers (agent.ingest.payloads) so that the hot path stays free of it: a
`Rejection` is formatted only when the rate-limited log actually writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from moecast.agent.ingest.payloads import PayloadLimits
from moecast.agent.ingest.readings import StreamId

# Reasons that drop the whole message, counted once whatever it held.
WHOLE_MESSAGE = frozenset({"not_json", "too_many_readings", "too_large"})

# Reason -> (the setting that bounds it, the PayloadLimits field, what to do).
GOVERNED_BY = {
    "too_old": ("limits.payload.max_age_s", "max_age_s", "raise it to load older history"),
    "too_far_future": (
        "limits.payload.max_future_s",
        "max_future_s",
        "fix the device's clock, or raise it",
    ),
    "too_many_readings": (
        "limits.payload.max_readings",
        "max_readings",
        "split the message, or raise it",
    ),
    "out_of_range": ("limits.payload.max_abs_value", "max_abs_value", "rescale the values"),
    "too_large": ("limits.payload.max_bytes", "max_bytes", "split the message, or raise it"),
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """One message's rejections for one reason, as a log line (its `str`)."""

    reason: str
    count: int
    stream: StreamId | str
    limits: PayloadLimits
    log_interval_s: float

    def __str__(self) -> str:
        if self.reason in WHOLE_MESSAGE:
            what = f"rejected a whole message on {self.stream}: {self.reason}"
        else:
            what = f"rejected {self.count} reading(s) on {self.stream}: {self.reason}"
        governed = GOVERNED_BY.get(self.reason)
        if governed is not None:
            setting, field, advice = governed
            what += f" (limit {setting} = {getattr(self.limits, field):g}; {advice})"
        return (
            f"{what}; more within {self.log_interval_s:g} s (ingest.log_interval_s) are only "
            f"counted, as rejected.{self.reason} in the metrics"
        )
