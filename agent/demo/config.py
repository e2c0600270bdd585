"""The demo agent's settings: the site's grid, fast ticks, and alert rules for the site.

The grid is 15 minutes: 512 bins of context then hold five days of history, enough for the
model to see the site's daily cycle several times, and the 64-step head reaches 16 hours ahead.
With site time 900 times faster than the wall clock, one bin passes per wall second and the
agent forecasts once a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moecast.agent.settings import AgentSettings, load_settings

INTERVAL_S = 900.0
CADENCE_S = 1.0
CONTEXT_BINS = 512
DAY_S = 86_400.0

# "above X within N steps with probability p": N steps of 15 minutes.
ALERT_RULES: dict[str, list[dict[str, Any]]] = {
    "*/temperature": [
        {"name": "overheat", "above": 28.0, "within_steps": 12, "probability": 0.5},
    ],
    "*/vibration": [
        {"name": "bearing-wear", "above": 6.0, "within_steps": 8, "probability": 0.5},
    ],
    "*/co2": [
        {"name": "stuffy", "above": 1400.0, "within_steps": 8, "probability": 0.6},
    ],
}


def demo_settings(
    broker_url: str,
    v5: bool,
    storage_dir: Path,
    topic_root: str,
    agent_id: str,
    history_s: float,
    live_s: float,
    max_points: int,
) -> AgentSettings:
    """Settings for the agent the demo runs; `topic_root` ("" or "name/") keeps a run's topics
    apart on a shared broker."""
    rules: list[dict[str, Any]] = [
        {"pattern": pattern, "interval_s": INTERVAL_S, "alerts": alerts}
        for pattern, alerts in ALERT_RULES.items()
    ]
    rules.append({"pattern": "*", "interval_s": INTERVAL_S})
    return load_settings(
        None,
        agent_id=agent_id,
        broker={
            "url": broker_url,
            "protocol": "5" if v5 else "3.1.1",
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
            # A shared broker should not keep the demo's session long after it ends.
            "session_expiry_s": 60,
        },
        topics={
            "sensors": f"{topic_root}sensors",
            "forecasts": f"{topic_root}forecasts",
            "alerts": f"{topic_root}alerts",
            "agents": f"{topic_root}moecast/agents",
        },
        streams=rules,
        forecast={"cadence_s": CADENCE_S, "expiry_s": 60},
        quality={"anomalies": {"topic": f"{topic_root}anomalies"}},
        limits={
            # Site time is in the past by up to the whole history; late readings arrive up to
            # half an hour of site time after their neighbours.
            "payload": {"max_age_s": history_s + live_s + DAY_S},
            "streams": {"max_points": max_points, "lateness_s": 3600.0},
            "store": {"retention_points": max_points},
        },
        metrics={"interval_s": 5.0},
        storage_dir=storage_dir,
        trust_dev_key=True,  # the shipped bundle, signed with the development key
        log_level="WARNING",
    )
