"""Which model runs, on the tick thread: swap in a model the receiver made ready, run the tick,
judge a model on trial by what its ticks return, commit it after `trial_ticks` healthy ticks
or roll back to the previous one.

A tick whose outputs failed is run again on the restored model, so no tick goes without
forecasts and readings keep flowing into the store throughout. Only this class changes the
running model; the receiver's thread hands it verified, loaded bundles through `offer`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from moecast.agent.forecast.expert_load import ExpertLoad
from moecast.agent.forecast.outcome import TickOutcome
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.link import MqttLink
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext
from moecast.agent.settings import AgentSettings
from moecast.agent.updates.progress import UpdateProgress
from moecast.agent.updates.slots import Interrupted, SlotStore

from moecast.bundle.format import Bundle, Manifest


@dataclass
class _Trial:
    """A newly active model on probation, and what to go back to."""

    bundle: Bundle
    previous: Bundle | None
    manifest_sha256: str
    healthy: int = 0


class ActiveModel:
    """Owns the forecaster and the model it runs; `tick` is the agent's `on_tick`."""

    def __init__(
        self,
        settings: AgentSettings,
        forecaster: Forecaster | None,
        slots: SlotStore,
        progress: UpdateProgress,
        link: MqttLink,
        metrics: AgentMetrics,
        interrupted: Interrupted | None = None,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.forecaster = forecaster
        self._progress = progress
        self._link = link
        self._config = settings.updates
        self._lock = threading.Lock()  # guards _ready and _trial against the receiver thread
        # Verified and loaded (bundle, manifest sha256, slot), waiting for the next tick.
        self._ready: tuple[Bundle, str, str] | None = None
        self._trial: _Trial | None = None
        self.expert_load = ExpertLoad(self._config.group)
        metrics.add_section("expert_load", self.expert_load.snapshot)
        if forecaster is not None:
            self.expert_load.reset(forecaster.bundle.manifest)
            link.set_model_version(forecaster.model_version)
        if interrupted is not None:
            progress.report(
                "rolled_back",
                interrupted.model_version,
                self.version,
                "restarted_during_trial",
                "the agent stopped while the model was on trial; the previous model runs",
            )

    @property
    def manifest(self) -> Manifest | None:
        forecaster = self.forecaster
        return None if forecaster is None else forecaster.bundle.manifest

    @property
    def version(self) -> int | None:
        manifest = self.manifest
        return None if manifest is None else manifest.model_version

    @property
    def busy(self) -> bool:
        """A model is waiting to be swapped in or on trial: the next update waits."""
        with self._lock:
            return self._ready is not None or self._trial is not None

    def offer(self, bundle: Bundle, manifest_sha256: str, slot: str) -> None:
        """Receiver thread: a verified, loaded bundle in `slot`, to run from the next tick."""
        with self._lock:
            self._ready = (bundle, manifest_sha256, slot)

    def tick(self, context: TickContext) -> TickOutcome | None:
        self._swap_in_ready()
        forecaster = self.forecaster
        if forecaster is None:
            return None
        trial = self._trial
        try:
            outcome = forecaster(context)
        except Exception as err:
            if trial is None:
                raise
            # A model that breaks the tick (e.g. fails on a batch size the golden test did
            # not use) fails its trial.
            return self._roll_back(trial, "tick_failed", f"{type(err).__name__}: {err}", context)
        self.expert_load.add(outcome.expert_load, outcome.expert_load_runs)
        if trial is None or outcome.runs == 0:
            return outcome  # nothing forecast, nothing learnt about the model
        problem = outcome.health.problem(self._config.trial_max_crossing_share)
        if problem is not None:
            return self._roll_back(trial, *problem, context)
        trial.healthy += 1
        if trial.healthy >= self._config.trial_ticks:
            self.slots.commit()
            with self._lock:
                self._trial = None
            self._progress.report("committed", trial.bundle.manifest.model_version, self.version)
        return outcome

    def close(self) -> None:
        """On a clean stop, after the last tick (the agent's `on_stop`)."""
        if self.forecaster is not None:
            self.forecaster.close()

    def _swap_in_ready(self) -> None:
        """Start the trial of a model the receiver made ready. Taken and begun in one critical
        section: the receiver must never see neither a ready model nor a trial (it would start
        the next update over this one's rollback slot)."""
        previous = self.forecaster.bundle if self.forecaster is not None else None
        with self._lock:
            if self._ready is None:
                return
            (bundle, manifest_sha256, slot), self._ready = self._ready, None
            self._trial = _Trial(bundle, previous, manifest_sha256)
        # On disk only now: a restart before this tick keeps the old model committed, and the
        # retained announcement brings the new one again, instead of failing a model that
        # never ran.
        self.slots.begin_trial(slot)
        self._use(bundle)
        self._progress.report("active", bundle.manifest.model_version, self.version)

    def _roll_back(
        self, trial: _Trial, reason: str, detail: str, context: TickContext
    ) -> TickOutcome | None:
        self.slots.roll_back(trial.manifest_sha256)
        self._use(trial.previous)
        with self._lock:
            self._trial = None
        version = trial.bundle.manifest.model_version
        self._progress.report("rolled_back", version, self.version, reason, detail)
        if self.forecaster is None:
            return None
        outcome = self.forecaster(context)  # this tick's forecasts, from the restored model
        self.expert_load.add(outcome.expert_load, outcome.expert_load_runs)
        return outcome

    def _use(self, bundle: Bundle | None) -> None:
        """Make `bundle` the one the forecaster runs (None: forecast nothing)."""
        if bundle is None:
            if self.forecaster is not None:
                self.forecaster.close()
            self.forecaster = None
        elif self.forecaster is None:
            self.forecaster = Forecaster(bundle, self.settings)
        else:
            # Between ticks (this runs on the tick thread); alert states carry over.
            self.forecaster.use_bundle(bundle)
        self.expert_load.reset(None if bundle is None else bundle.manifest)
        self._link.set_model_version(None if bundle is None else bundle.manifest.model_version)
