"""The update path as `moecast agent` wires it: the slots opened at start, the fleet inbox the
MQTT link is built with, then the active model (tick thread) and the receiver (its own
thread), each given what it needs up front."""

from __future__ import annotations

from dataclasses import dataclass

from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.link import MqttLink
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import Agent, build_link
from moecast.agent.settings import AgentSettings
from moecast.agent.updates.active import ActiveModel
from moecast.agent.updates.progress import UpdateProgress
from moecast.agent.updates.receiver import BundleReceiver, FleetInbox
from moecast.agent.updates.slots import Interrupted, SlotStore

from moecast.bundle.format import DEV_PUBLIC_KEY, Bundle, PublicKeySource, load_public_key


def update_keys(settings: AgentSettings) -> list[PublicKeySource]:
    """The keys a fleet update (and so a model slot) may be signed with: the operators'; the
    development key only with `updates.accept_dev_key_updates` as well as `trust_dev_key`."""
    keys: list[PublicKeySource] = list(settings.trusted_keys)
    if settings.trust_dev_key and settings.updates.accept_dev_key_updates:
        keys.append(DEV_PUBLIC_KEY)
    return keys


def open_slots(settings: AgentSettings) -> tuple[SlotStore, Bundle | None, Interrupted | None]:
    """At start: the slot store, the model of its active slot (None: run the configured
    bundle), and the trial a restart interrupted (already rolled back), if any."""
    slots = SlotStore(settings.storage_dir / "bundles")
    interrupted = slots.recover()
    keys = update_keys(settings)
    # Without a key nothing can be verified; the slots are left as they are for later.
    bundle = slots.load_active(keys, settings.threads) if keys else None
    return slots, bundle, interrupted


def fleet_inbox(settings: AgentSettings, metrics: AgentMetrics) -> FleetInbox | None:
    """The receiver's inbox (the link's fleet sink), or None when the agent is in no group."""
    if settings.updates.group is None:
        return None
    return FleetInbox(settings.updates.queue_size, metrics)


@dataclass
class UpdatePath:
    active: ActiveModel
    receiver: BundleReceiver | None

    def start(self) -> None:
        if self.receiver is not None:
            self.receiver.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.receiver is not None:
            self.receiver.stop(timeout_s)


def build_update_path(
    settings: AgentSettings,
    forecaster: Forecaster | None,
    slots: SlotStore,
    link: MqttLink,
    inbox: FleetInbox | None,
    interrupted: Interrupted | None = None,
) -> UpdatePath:
    progress = UpdateProgress(settings, link)
    active = ActiveModel(settings, forecaster, slots, progress, link, link.metrics, interrupted)
    receiver = None
    if inbox is not None:
        keys = [load_public_key(k) for k in update_keys(settings)]
        receiver = BundleReceiver(settings, inbox, keys, slots, active, progress, link.metrics)
    return UpdatePath(active, receiver)


def build_agent(
    settings: AgentSettings,
    forecaster: Forecaster | None,
    slots: SlotStore,
    interrupted: Interrupted | None = None,
) -> tuple[Agent, UpdatePath]:
    """The agent and its update path, built in order: metrics and the fleet inbox, the link,
    the update path that publishes through it, then the agent whose tick is the active
    model's. Raises OSError or sqlite3.Error when the store cannot be opened."""
    metrics = AgentMetrics()
    inbox = fleet_inbox(settings, metrics)
    link = build_link(settings, metrics, None if inbox is None else inbox.offer)
    updates = build_update_path(settings, forecaster, slots, link, inbox, interrupted)
    agent = Agent(settings, on_tick=updates.active.tick, on_stop=updates.active.close, link=link)
    return agent, updates
