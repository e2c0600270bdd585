"""What the link publishes reaches subscribers with its MQTT 5 message expiry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from moecast.agent.runtime import Agent
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.agent.conftest import Broker, wait_for


def test_every_publish_carries_its_own_expiry(
    broker: Broker, start_agent: Callable[..., Agent]
) -> None:
    # The link builds the properties of an expiry once and reuses them: a reused object must
    # not leak one publish's expiry into another's, nor go missing the second time.
    received: list[tuple[str, int | None]] = []
    lock = threading.Lock()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        expiry = getattr(message.properties, "MessageExpiryInterval", None)
        with lock:
            received.append((message.topic, expiry))

    subscribed = threading.Event()
    listener = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id="expiry-listener",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    listener.on_message = on_message
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    try:
        listener.subscribe("out/#", 1)
        assert subscribed.wait(5)
        agent = start_agent()
        sent = [("out/a", 900), ("out/b", 900), ("out/c", 60), ("out/d", None), ("out/e", 900)]
        for topic, expiry in sent:
            agent.link.publish(topic, b"{}", 1, expiry_s=expiry).wait_for_publish(5)
        wait_for(lambda: len(received) == len(sent), 5, "the published messages")
        with lock:
            by_topic = dict(received)
        # The broker forwards the remaining interval: at most what was set, and not absent.
        for topic, expiry in sent:
            got = by_topic[topic]
            if expiry is None:
                assert got is None
            else:
                assert got is not None
                assert expiry - 2 <= got <= expiry
    finally:
        listener.disconnect()
        listener.loop_stop()
