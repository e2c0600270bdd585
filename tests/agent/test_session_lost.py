"""A reconnect that finds the broker without the agent's session is reported: readings the
broker had queued (and acknowledged to their publishers) may be gone."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import pytest
from moecast.agent.runtime import Agent

from tests.agent.conftest import Broker, wait_for

LINK_LOG = "moecast.agent.ingest.link"


def _kill_and_restart(broker: Broker) -> None:
    """kill -9, before mosquitto's first autosave: the restarted broker knows no session."""
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.process = None
    broker.start()


def _lost_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LINK_LOG and r.levelno == logging.WARNING and "session" in r.getMessage()
    ]


def test_a_lost_session_is_warned_about_and_counted(
    broker: Broker, start_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LINK_LOG)
    agent = start_agent()
    assert agent.metrics.snapshot()["session_lost"] == 0  # the first connect may start one
    _kill_and_restart(broker)
    wait_for(lambda: agent.metrics.snapshot()["connects"] == 2, what="the agent to reconnect")
    assert agent.metrics.snapshot()["session_lost"] == 1
    (warning,) = _lost_warnings(caplog)
    assert "may have been lost" in warning


def test_a_resumed_session_is_not_warned_about(
    broker: Broker, start_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LINK_LOG)
    agent = start_agent()
    broker.restart()  # SIGTERM: mosquitto saves its sessions on the way out
    wait_for(lambda: agent.metrics.snapshot()["connects"] == 2, what="the agent to reconnect")
    assert agent.metrics.snapshot()["session_lost"] == 0
    assert _lost_warnings(caplog) == []
