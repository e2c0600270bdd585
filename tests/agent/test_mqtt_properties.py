"""paho's MQTT 5 properties with shared tables behave as paho's own."""

from __future__ import annotations

import pytest
from moecast.agent.ingest.mqtt_properties import share_property_tables
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties


def _paho_built(packet_type: int) -> Properties:
    """An object built by paho's own constructor, patched or not."""
    original = getattr(Properties, "_moecast_shared_tables", Properties.__init__)
    instance = Properties.__new__(Properties)
    original(instance, packet_type)
    return instance


@pytest.fixture(autouse=True)
def _shared() -> None:
    assert share_property_tables()
    assert share_property_tables()  # idempotent


def _full_publish(properties: Properties) -> Properties:
    properties.MessageExpiryInterval = 900
    properties.ContentType = "application/json"
    properties.ResponseTopic = "replies/a"
    properties.CorrelationData = b"\x00\x01"
    properties.UserProperty = ("site", "line-1")
    properties.UserProperty = ("unit", "degC")  # several: paho appends
    return properties


def test_packed_the_same_as_paho_builds_them() -> None:
    ours = _full_publish(Properties(PacketTypes.PUBLISH))
    paho_own = _full_publish(_paho_built(PacketTypes.PUBLISH))
    assert ours.pack() == paho_own.pack()
    assert str(ours) == str(paho_own)
    assert Properties(PacketTypes.PUBLISH).pack() == _paho_built(PacketTypes.PUBLISH).pack()


def test_unpacking_reads_every_property_and_forgets_the_last_packets() -> None:
    packed = _full_publish(_paho_built(PacketTypes.PUBLISH)).pack()
    received = Properties(PacketTypes.PUBLISH)
    received.unpack(packed)
    assert received.MessageExpiryInterval == 900
    assert received.UserProperty == [("site", "line-1"), ("unit", "degC")]
    assert received.CorrelationData == b"\x00\x01"
    # Reused for a packet without properties (unpack clears first): nothing stays behind.
    empty = Properties(PacketTypes.PUBLISH).pack()
    received.unpack(empty)
    assert not hasattr(received, "MessageExpiryInterval")
    assert not hasattr(received, "UserProperty")
    assert received.pack() == empty
    assert received.packetType == PacketTypes.PUBLISH


def test_objects_share_tables_but_not_values() -> None:
    one, two = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBACK)
    assert one.names is two.names
    one.MessageExpiryInterval = 60
    assert not hasattr(two, "MessageExpiryInterval")
    assert two.packetType == PacketTypes.PUBACK


def test_paho_still_validates_what_is_set() -> None:
    puback = Properties(PacketTypes.PUBACK)
    with pytest.raises(MQTTException, match="does not apply"):
        puback.MessageExpiryInterval = 60  # a PUBLISH property
    with pytest.raises(MQTTException, match="must be one of"):
        puback.NoSuchProperty = 1
    connect = Properties(PacketTypes.CONNECT)
    with pytest.raises(MQTTException, match="range"):
        connect.ReceiveMaximum = 0
