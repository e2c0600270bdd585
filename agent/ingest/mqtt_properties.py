"""paho's MQTT 5 `Properties`, without rebuilding its tables for every packet.

With MQTT 5, paho 2.x makes a `Properties` object for every PUBLISH it receives and every
PUBACK it gets back, and each one rebuilds three tables in its constructor (property names,
types, and the packets each property applies to), then `unpack` calls `clear`, which scans
every property name with a string replacement and a `hasattr`. The tables never change. On a
QoS 0 flood into the agent (py-spy, sampling whichever thread held the GIL) the constructor
and `clear` took 27 % of the network thread's time, more than decoding the packets.

`share_property_tables` makes every object refer to one copy of the tables, built by paho's
own constructor, and `clear` delete just the properties an object holds. Everything else,
including validation on assignment and packing, stays paho's. It patches the class only when
the tables look as expected (the same for every packet type, so an object's tables never
depended on its type), and is idempotent; a paho that changes this code keeps its own.
"""

from __future__ import annotations

import logging
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

# The attributes paho's `Properties.__setattr__` stores as they are (not as properties).
_TABLES = ("types", "names", "properties")
_PRIVATE = frozenset(("packetType", *_TABLES))
_PATCHED = "_moecast_shared_tables"


def share_property_tables() -> bool:
    """Patch paho's `Properties` (once per process); True when it is patched."""
    if getattr(Properties, _PATCHED, False):
        return True
    original_init = Properties.__init__
    try:
        kinds = (PacketTypes.PUBLISH, PacketTypes.PUBACK, PacketTypes.CONNECT)
        built = [_tables_of(original_init, kind) for kind in kinds]
    except Exception:  # a paho whose constructor is not what this module knows
        log.debug("paho's Properties left as they are", exc_info=True)
        return False
    if any(tables != built[0] for tables in built) or set(built[0]) != set(_TABLES):
        log.debug("paho's Properties tables differ per packet type: left as they are")
        return False
    shared = built[0]

    def __init__(self: Properties, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        for name, table in shared.items():
            object.__setattr__(self, name, table)

    def clear(self: Properties) -> None:
        for name in [name for name in vars(self) if name not in _PRIVATE]:
            delattr(self, name)

    Properties.__init__ = __init__  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]
    setattr(Properties, _PATCHED, original_init)
    return True


def _tables_of(init: Any, packet_type: int) -> dict[str, Any]:
    """The tables paho's own constructor gives an object of `packet_type`."""
    instance = Properties.__new__(Properties)
    init(instance, packet_type)
    state = vars(instance)
    if set(state) != _PRIVATE:
        raise ValueError(f"unexpected attributes {sorted(state)}")
    return {name: state[name] for name in _TABLES}
