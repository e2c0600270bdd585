"""An MQTT broker inside the demo's own process (amqtt), so the demo needs nothing installed.

amqtt speaks MQTT 3.1.1 only: the demo's clients connect with 3.1.1 to it. It runs its asyncio
loop on a daemon thread; the rest of the demo stays plain threads, like the agent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

HOST = "127.0.0.1"
_START_ATTEMPTS = 3


class BrokerStartError(RuntimeError):
    """The embedded broker could not start (amqtt missing, or no port to listen on)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """amqtt listening on a free local port; `start`, then `stop`."""

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as err:
            raise BrokerStartError(
                f"the embedded broker needs amqtt ({err}): pip install 'amqtt>=0.12.1,<0.13', "
                "or give a broker with --broker mqtt://HOST:PORT"
            ) from None
        # Its per-packet and per-connection logging would drown the demo's own output.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.ERROR)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="moecast-demo-broker", daemon=True
        )
        self._thread.start()
        problem: Exception | None = None
        # The port is free when probed but may be taken before amqtt binds it: try another.
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port()
            try:
                future = asyncio.run_coroutine_threadsafe(self._start(Broker), self._loop)
                self._broker = future.result(timeout_s)
                return
            except Exception as err:  # amqtt wraps bind errors in its own BrokerError
                problem = err
        self._stop_loop()
        raise BrokerStartError(f"the embedded MQTT broker did not start: {problem}")

    async def _start(self, broker_class: Any) -> Any:
        broker = broker_class(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}},
                # Anonymous local access only; no $SYS topics, no packet logging.
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await broker.start()
        return broker

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is None:
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout_s)
            except Exception:  # a broker that will not shut down cleanly dies with the thread
                future.cancel()
            self._broker = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        assert self._loop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop = None
