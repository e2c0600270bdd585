"""What paho's MQTT 5 `Properties` cost per packet, as paho builds them and with the tables
shared (`moecast.agent.ingest.mqtt_properties`).

    python benchmarks/mqtt_properties.py

Per received PUBLISH paho builds a `Properties` and unpacks the packet's (here none, as
sensors send them); per forecast the agent publishes, one carries the message expiry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from moecast.agent.ingest.mqtt_properties import share_property_tables
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from timing import cpu_description, timed

EMPTY = Properties(PacketTypes.PUBLISH).pack()
CALLS = 2000


def received() -> None:
    for _ in range(CALLS):
        Properties(PacketTypes.PUBLISH).unpack(EMPTY)


def with_expiry() -> None:
    for _ in range(CALLS):
        Properties(PacketTypes.PUBLISH).MessageExpiryInterval = 900


def microseconds(fn: Callable[[], None]) -> float:
    return timed(fn, min_seconds=1.0, min_runs=5) / CALLS * 1e6


def main() -> int:
    print(f"$ python {' '.join(sys.argv)}")
    print(cpu_description())
    cases = {"received PUBLISH (build, unpack)": received, "publish with expiry": with_expiry}
    own = {name: microseconds(fn) for name, fn in cases.items()}
    if not share_property_tables():
        sys.exit("this paho's Properties are not what mqtt_properties knows: not patched")
    shared = {name: microseconds(fn) for name, fn in cases.items()}
    print(f"{'µs per packet':36s} {'paho':>8s} {'shared':>8s}")
    for name in cases:
        print(f"{name:36s} {own[name]:8.2f} {shared[name]:8.2f}")
    print("(the agent builds the properties of an expiry once and reuses them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
