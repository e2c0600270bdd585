"""The agent's MQTT connection: paho-mqtt 2.x, persistent session, acknowledgement after storage.

Delivery guarantee: the client runs with `manual_ack=True`, so paho does not answer a QoS 1
PUBLISH by itself; the writer thread calls `ack` once the readings are committed to SQLite.
The session is persistent (a stable client id; MQTT 5 `clean_start=False` with a session expiry
interval, MQTT 3.1.1 `clean_session=False`), so the broker redelivers every message that was
not acknowledged when the agent died or the connection broke, and queues new ones meanwhile.

An acknowledgement is only sent on the connection its message arrived on: after a reconnect the
broker redelivers unacknowledged messages anyway, and if it lost the session it may reuse the
packet id for a different message, which a stale PUBACK would then acknowledge unseen.

The network callback only enqueues; nothing that can fail slowly runs on paho's thread. It waits
for room in a full queue (QoS 1 until there is some, QoS 0 at most `ingest.qos0_wait_s`), so
that it reads no faster than the writer stores.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from moecast.agent.ingest.inbox import InboundMessage, Inbox
from moecast.agent.ingest.mqtt_properties import share_property_tables
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.settings import AgentSettings
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from moecast.bundle.wire import bundle_topic, chunk_subscription

log = logging.getLogger(__name__)

FleetSink = Callable[[str, bytes], None]


class _AfterDisconnectNoise(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR once after every clean disconnect,
    when its network loop polls the socket it has just closed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_paho_log = logging.getLogger("moecast.agent.ingest.link.paho")
_paho_log.addFilter(_AfterDisconnectNoise())


class MqttLink:
    """Connects, (re)subscribes, enqueues sensor messages, publishes status and acknowledges."""

    def __init__(
        self,
        settings: AgentSettings,
        inbox: Inbox,
        metrics: AgentMetrics,
        fleet_sink: FleetSink | None = None,
    ) -> None:
        """`fleet_sink` receives the group's bundle messages (topic, payload) on the network
        thread and must only enqueue; without it (or without `updates.group`) the agent does
        not subscribe to fleet topics."""
        self.settings = settings
        self.inbox = inbox
        self.metrics = metrics
        self._qos0_wait_s = settings.ingest.qos0_wait_s
        self._writer_stalled = False  # a QoS 0 wait for room timed out (network thread only)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.model_version: int | None = None  # the active model's, for the status topic
        group = settings.updates.group
        self._fleet_sink = fleet_sink
        self._fleet_topics: list[str] = []
        if group is not None and fleet_sink is not None:
            fleet = settings.topics.fleet
            self._fleet_topics = [bundle_topic(fleet, group), chunk_subscription(fleet, group)]
        self.connected = threading.Event()
        self._stopping = False
        self._unreachable_logged = False  # one warning per outage, not one per retry
        # Bumped on every connect and disconnect; `_ack_lock` makes "is this still the
        # connection the message came on?" and sending the PUBACK one step.
        self._connection = 0
        self._ack_lock = threading.Lock()
        # Building and publishing a status is one step under this lock (set_model_version).
        self._status_lock = threading.Lock()
        self._v5 = settings.broker.protocol == "5"
        # Publish properties per expiry, built once: paho only packs them, and building one
        # with its expiry set costs 5 us even with shared tables (paho validates the name on
        # assignment), for each of a 1000-stream tick's forecasts, all with the same expiry.
        self._expiry_properties: dict[int, Properties] = {}
        share_property_tables()  # paho rebuilds them per packet otherwise: a quarter of its time
        self._client = self._make_client()

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until the broker answers."""
        broker = self.settings.broker
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = broker.session_expiry_s
            properties.ReceiveMaximum = broker.receive_maximum
        self._client.connect_async(
            broker.host,
            broker.port,
            keepalive=broker.keepalive_s,
            clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `offline`, disconnect (keeping the session) and stop the network thread."""
        if self.connected.is_set():
            info = self.publish(self.settings.status_topic, self._status("offline"), 1, True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                log.warning("could not publish the offline status before disconnecting")
        self._stopping = True
        # A clean DISCONNECT: MQTT 5 keeps the session (its expiry was set at connect) and the
        # broker drops the will. It also wakes the network thread, so loop_stop returns at once.
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        """Acknowledge the QoS 1 messages that arrived on the current connection; returns how
        many were acknowledged. Call only once their readings are stored."""
        sent = 0
        with self._ack_lock:
            for message in messages:
                if message.qos and message.connection == self._connection:
                    self._client.ack(message.mid, message.qos)
                    sent += 1
        return sent

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish; `expiry_s` sets the MQTT 5 message expiry interval (ignored on 3.1.1)."""
        properties = None
        if expiry_s is not None and self._v5:
            properties = self._expiry_properties.get(expiry_s)
            if properties is None:
                properties = Properties(PacketTypes.PUBLISH)
                properties.MessageExpiryInterval = expiry_s
                self._expiry_properties[expiry_s] = properties
        return self._client.publish(topic, payload, qos, retain, properties)

    def set_model_version(self, version: int | None) -> None:
        """Report `version` as the active model. When it changed, the retained `online` status
        is republished at once (if connected), and the will carries it from the next connect."""
        with self._status_lock:
            if version == self.model_version:
                return
            self.model_version = version
            self._client.will_set(
                self.settings.status_topic, self._status("offline"), qos=1, retain=True
            )
            # paho is connected before `_on_connect` runs, and that publishes the status under
            # this lock too: whichever of the two publishes last carries the new version.
            if self._client.is_connected():
                self._client.publish(
                    self.settings.status_topic, self._status("online"), qos=1, retain=True
                )

    def _make_client(self) -> paho.Client:
        settings, broker = self.settings, self.settings.broker
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        if broker.username is not None:
            password = broker.password.get_secret_value() if broker.password else None
            client.username_pw_set(broker.username, password)
        if broker.uses_tls:
            tls = broker.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(tls.insecure)
        client.will_set(settings.status_topic, self._status("offline"), qos=1, retain=True)
        # Typed int in paho, but the backoff arithmetic is float: sub-second delays work.
        client.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)  # type: ignore[arg-type]
        client.enable_logger(_paho_log)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # paho routes the group's bundle topics to their own callback; everything else that
        # arrives is a sensor message.
        for topic in self._fleet_topics:
            client.message_callback_add(topic, self._on_fleet_message)
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        return client

    def _status(self, state: str) -> bytes:
        return json.dumps(
            {
                "state": state,
                "agent_id": self.settings.agent_id,
                "model_version": self.model_version,
                "started_at": self.started_at,
                "group": self.settings.updates.group,
                "filters": self.settings.topics.filters,
            }
        ).encode()

    # Callbacks run on paho's network thread.

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        with self._ack_lock:
            self._connection += 1
        topics = self.settings.topics
        subscriptions = topics.sensor_subscriptions()
        if self._v5:
            # Retained readings come once per new subscription, not again on every reconnect.
            options = SubscribeOptions(
                qos=topics.subscribe_qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe([(each, options) for each in subscriptions])
        else:
            client.subscribe([(each, topics.subscribe_qos) for each in subscriptions])
        if self._fleet_topics:
            self._subscribe_fleet(client)
        with self._status_lock:
            client.publish(self.settings.status_topic, self._status("online"), qos=1, retain=True)
        # A process's first connect may rightly start a session; any later one must find the
        # session this process established. A new one there means the broker lost it (a
        # restart without persistence, a crash before its autosave, an expired session) and,
        # with it, the readings it had queued and already acknowledged to their publishers.
        expected_session = self.metrics.connects > 0
        self.metrics.count_connect()
        self._unreachable_logged = False
        self.connected.set()
        log.info(
            "connected to %s:%s (session %s), subscribed to %s",
            self.settings.broker.host,
            self.settings.broker.port,
            "resumed" if flags.session_present else "new",
            ", ".join(subscriptions),
        )
        if expected_session and not flags.session_present:
            self.metrics.count_session_lost()
            log.warning(
                "the broker at %s:%s did not resume this agent's session: readings it had queued "
                "for the agent may have been lost (counted as session_lost; numbered readings "
                "show up in lost_upstream)",
                self.settings.broker.host,
                self.settings.broker.port,
            )

    def _subscribe_fleet(self, client: paho.Client) -> None:
        topics = self._fleet_topics
        if self._v5:
            # Retained bundle messages on every (re)connect, not only on a new subscription:
            # a download cut short by a restart starts over from what the broker retains.
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
            )
            client.subscribe([(topic, options) for topic in topics])
        else:
            client.subscribe([(topic, 1) for topic in topics])

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._connection += 1
        if self.connected.is_set() and not self._stopping:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)
        self.connected.clear()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        broker = self.settings.broker
        level = logging.DEBUG if self._unreachable_logged else logging.WARNING
        log.log(level, "cannot reach the broker at %s:%s; retrying", broker.host, broker.port)
        self._unreachable_logged = True

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker refused a subscription (sensor or fleet topics): %s", refused[0])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        payload, oversized = message.payload, 0
        if len(payload) > self.settings.limits.payload.max_bytes:
            # Dropped here, before it takes memory in the queue; the writer still counts it as
            # "too_large" and acknowledges it in its turn, as it would have unparsed.
            payload, oversized = b"", len(payload)
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        item = InboundMessage(
            topic, payload, time.time(), message.mid, message.qos, self._connection, oversized
        )
        if message.qos == 0:
            # A full queue is waited on for a moment, not dropped into at once: receiving and
            # dropping a flood took the GIL from the writer, which then stored still less
            # (benchmarks/agent_throughput.py, README). Waiting, this thread reads no more
            # than the writer stores; what arrives faster waits in the socket and the broker.
            # Once a wait has timed out, the writer is stalled (a slow commit, a full disk):
            # until it next makes room, messages are dropped at once, so that the socket keeps
            # draining rather than the network thread reading one message per wait.
            try:
                if self._writer_stalled:
                    self.inbox.put_nowait(item)
                else:
                    self.inbox.put(item, timeout=self._qos0_wait_s)
                self._writer_stalled = False
            except queue.Full:
                self._writer_stalled = True
                self.metrics.count_dropped("queue_full")
        else:
            # Not dropped: an unacknowledged message would only come back after a reconnect.
            # Receive Maximum bounds these below the queue size, and a bounded inbox's byte
            # bound makes this wait until the writer has taken enough.
            self.inbox.put(item)

    def _on_fleet_message(
        self, client: paho.Client, userdata: Any, message: paho.MQTTMessage
    ) -> None:
        """Hand a bundle message to the update thread, and acknowledge it at once: the broker
        retains it, and resends it with every subscription, so nothing is lost by a crash."""
        if len(message.payload) > self.settings.updates.max_message_bytes:
            self.metrics.count_dropped("fleet_message_too_large")
        elif self._fleet_sink is not None:
            self._fleet_sink(message.topic, message.payload)
        if message.qos:
            with self._ack_lock:
                client.ack(message.mid, message.qos)
