"""firmware_configs/: the mosquitto ACL confines each device to its own topics (enforced by a
real mosquitto), and the secure agent profile is valid settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from moecast.agent.settings import load_settings
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.agent.conftest import Broker, require_mosquitto, wait_for

CONFIGS = Path(__file__).resolve().parents[1] / "firmware_configs"
USERS = ("edge-7", "edge-8", "fleet-operator")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto("mosquitto_passwd")
    passwd_tool = shutil.which("mosquitto_passwd")
    assert passwd_tool is not None
    directory = tmp_path / "broker"
    directory.mkdir()
    passwords = directory / "passwd"
    for i, user in enumerate(USERS):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd_tool, "-b", *create, str(passwords), user, user], check=True)
    broker = Broker(
        directory,
        security=(
            f"allow_anonymous false\npassword_file {passwords}\n"
            f"acl_file {CONFIGS / 'mosquitto-acl.conf'}\n"
        ),
    )
    broker.start()
    yield broker
    broker.stop()


class Peer:
    def __init__(self, broker: Broker, user: str) -> None:
        self.received: list[str] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=user, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.username_pw_set(user, user)
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        self.subacked: set[int] = set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacked.add(mid)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, f"{user} to connect")

    def subscribe(self, topic: str) -> None:
        """Returns once the broker's SUBACK is in."""
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacked, 5, f"the SUBACK of {topic}")

    def publish(self, topic: str) -> None:
        self.client.publish(topic, json.dumps({"x": 1}), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_each_device_is_confined_to_its_own_topics(acl_broker: Broker) -> None:
    edge7, edge8, operator = (Peer(acl_broker, user) for user in USERS)
    try:
        operator.subscribe("moecast/agents/#")
        edge8.subscribe("moecast/fleet/+/bundle")
        edge8.subscribe("moecast/fleet/site-7/bundle/chunk/+")  # as the agent subscribes
        edge8.subscribe("sites/#")  # only its own part of it reaches it
        edge7.publish("moecast/agents/edge-7/status")  # its own: allowed
        edge7.publish("moecast/agents/edge-8/status")  # impersonating another agent
        edge7.publish("moecast/fleet/site-7/bundle")  # forging a bundle announcement
        edge7.publish("sites/edge-7/forecasts/boiler/temp")  # its site's data
        edge8.publish("sites/edge-8/sensors/pump/rpm")
        operator.publish("moecast/fleet/site-7/bundle/chunk/0")  # the operator may publish
        operator.publish("moecast/fleet/site-7/bundle")
        wait_for(lambda: "moecast/fleet/site-7/bundle" in edge8.received, what="the bundle")
        assert "moecast/fleet/site-7/bundle/chunk/0" in edge8.received
        time.sleep(0.3)
        assert operator.received == ["moecast/agents/edge-7/status"]
        assert edge8.received.count("moecast/fleet/site-7/bundle") == 1
        assert "sites/edge-7/forecasts/boiler/temp" not in edge8.received
        assert "sites/edge-8/sensors/pump/rpm" in edge8.received
    finally:
        for peer in (edge7, edge8, operator):
            peer.close()


def test_the_secure_agent_profile_is_valid_settings(tmp_path: Path) -> None:
    profile = yaml.safe_load((CONFIGS / "secure-fleet-agent.yaml").read_text())
    # The profile's files live on a device; stand-ins with the same names are enough here.
    text = json.dumps(profile)
    for path in {*profile["broker"]["tls"].values(), *profile["trusted_keys"]}:
        stand_in = tmp_path / Path(path).name
        stand_in.write_text("stand-in")
        text = text.replace(path, str(stand_in))
    profile = json.loads(text)
    profile["storage_dir"] = str(tmp_path / "data")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(profile))
    settings = load_settings(config)
    assert settings.updates.group == "site-7"
    assert settings.broker.uses_tls
    assert not settings.trust_dev_key
    assert settings.topics.sensors == f"sites/{settings.agent_id}/sensors"
