"""What a forecasting tick costs outside the model, stage by stage, without the agent process
around it: steadier than agent_throughput.py's tick figure, and it says where the time goes.

    python benchmarks/tick_cost.py                  # 1000 streams, 12 ticks, no broker
    python benchmarks/tick_cost.py --broker         # plus the same ticks publishing to mosquitto
    python benchmarks/tick_cost.py --payload compact   # forecast.payload: compact
    python benchmarks/tick_cost.py --model          # plus the real model: thread or inline

The agent's own `Forecaster` ticks over a registry of STREAMS streams (HISTORY readings each,
INTERVAL_S apart, one new reading per stream before every tick, so every stream is due) with
the shipped bundle's manifest (context length, horizons, levels) but a fake model that answers
at once: the model's time is not what is measured here. Quality checks are on, as by default.

1. No broker: the tick publishes into a link that drops everything. Per stage, the median
   milliseconds of a tick (wall clock; this thread alone runs): gridding (`_due_rows`, of it
   `_grid`), the quality checks, the model runs' bookkeeping, sorting and calibrating, payload
   encoding, and the tick as a whole less the fake model's time.
2. `--broker`: a real `MqttLink` to a private mosquitto and a subscriber of `forecasts/#`; the
   fake model sleeps MODEL_RUN_S per run (the GIL released, as ONNX Runtime's run does), so
   the tick's own work and paho's network thread run while the model thread computes, as in
   the agent. Reported: the tick less its model time (what the model does not hide), and from
   the tick's start to the last forecast received.

3. `--model`: the shipped bundle instead of the fake model, publishing nowhere; the ticks
   alternate between a Forecaster with its model thread (as the agent runs) and one with the
   model inline, over the same streams. Per kind, medians: the tick's wall time, the model's
   (its runs' wall time), the rest, and the process's CPU time: what the thread hides of the
   tick's own work and what it costs in CPU.

In 1. the model runs inline (`Forecaster(..., model_thread=False)`), so each stage's time is
its own cost; in 2. it runs in the Forecaster's model thread, as in the agent, and the stages
overlap with it (a stage's time is then wall time on its thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from agent_throughput import Broker, load_average
from moecast.agent.forecast import encoding, quality, tick
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext, build_link
from moecast.agent.settings import load_settings
from timing import cpu_description, wait

from moecast.bundle.format import output_name

REPO = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((REPO / "agent" / "default_bundle" / "manifest.json").read_text())
HISTORY = 600
INTERVAL_S = 10.0
MODEL_RUN_S = 0.015  # --broker: one run of tick.MAX_BATCH (3) rows of the shipped bundle, here

STAGES = (
    ("gridding", tick.Forecaster, "_due_rows"),
    ("  of it, to_grids and rows", tick.Forecaster, "_grid"),
    ("quality: score earlier forecasts", quality.QualityMonitor, "observe"),
    ("model runs' bookkeeping (+ fake model)", tick.Forecaster, "_run_model"),
    ("sort, calibrate, encode, publish", tick.Forecaster, "_publish"),
    ("  of it, calibration", quality.QualityMonitor, "calibrate"),
    ("  of it, payload encoding", encoding.PayloadEncoder, "encode"),
    ("quality: save state", quality.QualityMonitor, "finish"),
)


class _Manifest:
    model_version = MANIFEST["model_version"]
    context_length = MANIFEST["context_length"]
    horizons = tuple(MANIFEST["horizons"])
    quantiles = tuple(MANIFEST["quantiles"])


class FakeBundle:
    """Quantiles around each row's last observed value, at once or after `run_s` asleep."""

    manifest = _Manifest()

    def __init__(self, run_s: float = 0.0) -> None:
        self.run_s = run_s
        self.seconds = 0.0  # its own time, taken off the tick's
        self._offsets = np.linspace(-1.0, 1.0, len(self.manifest.quantiles), dtype=np.float32)

    def run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        if self.run_s:
            time.sleep(self.run_s)
        last = values[:, -1:].astype(np.float32)  # the tick's rows end on an observed bin
        base = last + self._offsets
        out = {
            output_name(h): np.repeat(base[:, None, :], h, axis=1) for h in self.manifest.horizons
        }
        self.seconds += time.perf_counter() - started
        return out


class NullLink:
    def publish(self, *args: object, **kwargs: object) -> None:
        pass


@contextmanager
def stage_clock() -> Iterator[dict[str, float]]:
    """Seconds spent in each of STAGES, summed, while the block runs."""
    spent: dict[str, float] = defaultdict(float)
    originals = []
    for name, owner, method in STAGES:
        original = getattr(owner, method)
        originals.append((owner, method, original))

        def clocked(*args: Any, _f: Callable[..., Any] = original, _n: str = name) -> Any:
            started = time.perf_counter()
            try:
                return _f(*args)
            finally:
                spent[_n] += time.perf_counter() - started

        setattr(owner, method, clocked)
    try:
        yield spent
    finally:
        for owner, method, original in originals:
            setattr(owner, method, original)


def make_registry(streams: int, start: float) -> tuple[StreamRegistry, list[StreamId]]:
    registry = StreamRegistry()
    rng = np.random.default_rng(0)
    ids = [StreamId(f"dev{i // 10}", f"s{i % 10}") for i in range(streams)]
    for stream in ids:
        history = [Reading(start + k * INTERVAL_S, float(rng.normal())) for k in range(HISTORY)]
        registry.insert(stream, history, arrival_ts=time.time())
    return registry, ids


def run_ticks(
    forecaster: tick.Forecaster,
    bundle: FakeBundle,
    registry: StreamRegistry,
    ids: list[StreamId],
    start: float,
    ticks: int,
    link: Any,
    after_tick: Callable[[], None] = lambda: None,
) -> list[dict[str, float]]:
    """Per tick: each stage's seconds, the tick's, its CPU and the fake model's."""
    rng = np.random.default_rng(1)
    results = []
    for k in range(HISTORY, HISTORY + ticks):
        for stream in ids:
            reading = Reading(start + k * INTERVAL_S, float(rng.normal()))
            registry.insert(stream, [reading], arrival_ts=time.time())
        context = TickContext(time.time(), forecaster.settings, registry, link, AgentMetrics())
        bundle.seconds = 0.0
        with stage_clock() as spent:
            cpu, started = time.process_time(), time.perf_counter()
            forecaster(context)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu
        after_tick()
        done = time.perf_counter() - started
        results.append(
            {**spent, "tick": seconds, "cpu": cpu, "model": bundle.seconds, "done": done}
        )
    return results


def median_ms(results: list[dict[str, float]], key: str) -> float:
    return 1e3 * statistics.median(r.get(key, 0.0) for r in results)


def without_broker(streams: int, ticks: int, storage: Path, payload: str) -> None:
    start = time.time() - (HISTORY + ticks) * INTERVAL_S
    registry, ids = make_registry(streams, start)
    bundle = FakeBundle()
    settings = load_settings(None, storage_dir=storage, forecast={"payload": payload})
    forecaster = tick.Forecaster(bundle, settings, model_thread=False)  # type: ignore[arg-type]
    results = run_ticks(forecaster, bundle, registry, ids, start, ticks, NullLink())[2:]
    print(
        f"\n1. no broker, the model inline: median of {len(results)} ticks (after 2 to warm up), "
        "milliseconds"
    )
    for name, _, _ in STAGES:
        print(f"  {name:42s} {median_ms(results, name):7.1f}")
    rest = [r["tick"] - r["model"] for r in results]
    print(f"  {'the tick less the fake model':42s} {1e3 * statistics.median(rest):7.1f}")
    print(f"  {'its CPU (this process, all threads)':42s} {median_ms(results, 'cpu'):7.1f}")
    print(f"  {'the fake model':42s} {median_ms(results, 'model'):7.1f}")


def with_broker(streams: int, ticks: int, storage: Path, directory: Path, payload: str) -> None:
    broker = Broker(directory)
    # The subscriber is a process of its own, as a dashboard would be: a paho client in this
    # process would take the GIL from the tick for every forecast it receives.
    mosquitto_sub = shutil.which("mosquitto_sub")
    if mosquitto_sub is None:
        sys.exit("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    subscriber = subprocess.Popen(
        [mosquitto_sub, "-p", str(broker.port), "-t", "forecasts/#", "-q", "1", "-F", "%t"],
        stdout=subprocess.PIPE,
    )
    received = [0]

    def count_lines() -> None:
        assert subscriber.stdout is not None
        for _ in subscriber.stdout:
            received[0] += 1

    threading.Thread(target=count_lines, daemon=True).start()
    time.sleep(0.5)  # subscribed before the first tick
    settings = load_settings(
        None,
        storage_dir=storage,
        agent_id="tick-cost",
        broker={"url": f"mqtt://127.0.0.1:{broker.port}"},
        forecast={"payload": payload},
    )
    link = build_link(settings)
    link.start()
    try:
        if not link.wait_connected(10):
            sys.exit("the link did not connect to mosquitto")
        start = time.time() - (HISTORY + ticks) * INTERVAL_S
        registry, ids = make_registry(streams, start)
        bundle = FakeBundle(MODEL_RUN_S)
        forecaster = tick.Forecaster(bundle, settings)  # type: ignore[arg-type]
        expected = [0]

        def all_received() -> None:
            expected[0] += streams
            wait(lambda: received[0] >= expected[0], 60, "every forecast at the subscriber")

        results = run_ticks(forecaster, bundle, registry, ids, start, ticks, link, all_received)
        results = results[2:]
    finally:
        link.stop()
        subscriber.terminate()
        subscriber.wait(10)
        broker.stop()
    rest = [r["tick"] - r["model"] for r in results]
    last = [r["done"] - r["model"] for r in results]
    print(
        f"\n2. publishing to mosquitto, the fake model asleep {MODEL_RUN_S * 1e3:.0f} ms a run "
        f"(GIL released): median of {len(results)} ticks, milliseconds"
    )
    for name, _, _ in STAGES:
        print(f"  {name:42s} {median_ms(results, name):7.1f}")
    print(f"  {'the tick less the model':42s} {1e3 * statistics.median(rest):7.1f}")
    name = "to the last forecast received, less model"
    print(f"  {name:42s} {1e3 * statistics.median(last):7.1f}")


def real_model(streams: int, ticks: int, storage: Path) -> None:
    from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle

    bundle = load_bundle(REPO / "agent" / "default_bundle", [DEV_PUBLIC_KEY])
    start = time.time() - (HISTORY + 2 * ticks + 2) * INTERVAL_S
    registry, ids = make_registry(streams, start)
    kinds = {
        "model thread": tick.Forecaster(bundle, load_settings(None, storage_dir=storage / "t")),
        "model inline": tick.Forecaster(
            bundle, load_settings(None, storage_dir=storage / "i"), model_thread=False
        ),
    }
    results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for k in range(2 * ticks + 2):
        name = list(kinds)[k % 2]
        for stream in ids:
            reading = Reading(start + (HISTORY + k) * INTERVAL_S, float(np.sin(k)))
            registry.insert(stream, [reading], arrival_ts=time.time())
        metrics = AgentMetrics()
        context = TickContext(time.time(), kinds[name].settings, registry, NullLink(), metrics)
        cpu, started = time.process_time(), time.perf_counter()
        kinds[name](context)  # type: ignore[arg-type]
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if k >= 2:  # after one tick of each to warm up
            model = metrics.snapshot()["forecast_inference_s"]["sum"]
            results[name].append((wall, model, cpu))
    for forecaster in kinds.values():
        forecaster.close()
    print(
        f"\n3. the shipped bundle ({bundle.manifest.model_version}), one thread, publishing "
        f"nowhere: median of {ticks} ticks of each kind, alternating, seconds"
    )
    print(f"  {'':14s} {'tick':>7s} {'model':>7s} {'rest':>7s} {'CPU':>7s}")
    for name, rows in results.items():
        wall, model, cpu = (statistics.median(r[i] for r in rows) for i in range(3))
        rest = statistics.median(r[0] - r[1] for r in rows)
        print(f"  {name:14s} {wall:7.3f} {model:7.3f} {rest:7.3f} {cpu:7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=12)
    parser.add_argument("--broker", action="store_true", help="also publish to a mosquitto")
    parser.add_argument("--model", action="store_true", help="also tick with the real model")
    parser.add_argument(
        "--payload", choices=("full", "compact"), default="full", help="forecast.payload"
    )
    args = parser.parse_args()
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"{cpu_description()}, {len(os.sched_getaffinity(0))} cores, load {load_average()}; "
        f"{args.streams} streams, context {_Manifest.context_length}, "
        f"horizons {list(_Manifest.horizons)}, {len(_Manifest.quantiles)} levels, "
        f"{args.payload} payloads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        without_broker(args.streams, args.ticks, Path(tmp) / "alone", args.payload)
        if args.broker:
            broker_dir = Path(tmp) / "broker"
            broker_dir.mkdir()
            with_broker(args.streams, args.ticks, Path(tmp) / "linked", broker_dir, args.payload)
        if args.model:
            real_model(args.streams, args.ticks, Path(tmp) / "model")
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
