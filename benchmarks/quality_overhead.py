"""What the forecast quality checks (#16) cost the tick: a thousand streams, one reading each
per grid step, a fake bundle that answers at once (so the model does not hide the overhead),
ticks with `quality.enabled` on and off; and the memory they hold per stream.

    python -m benchmarks.quality_overhead [--streams 1000] [--ticks 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from moecast.agent.forecast.tick import Forecaster
from moecast.agent.ingest.readings import Reading, StreamId
from moecast.agent.ingest.streams import StreamRegistry
from moecast.agent.ops.metrics import AgentMetrics
from moecast.agent.runtime import TickContext
from moecast.agent.settings import load_settings

from moecast.bundle.format import output_name

HORIZONS = (1, 8, 32, 64)
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
START = 1_764_000_000.0
INTERVAL = 60.0


class _Manifest:
    model_version = 1
    context_length = 128
    horizons = HORIZONS
    quantiles = LEVELS


class FastBundle:
    manifest = _Manifest()
    offsets = np.linspace(-1.3, 1.3, 9)

    def run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        centre = np.nanmean(values[:, -8:], axis=1)
        base = (centre[:, None] + self.offsets).astype(np.float32)
        return {output_name(h): np.repeat(base[:, None, :], h, axis=1) for h in HORIZONS}


class NullLink:
    def publish(self, *args: object, **kwargs: object) -> None:
        pass


def run(streams: int, ticks: int, storage: Path) -> tuple[dict[bool, list[float]], object]:
    """Ticks of two forecasters over the same registry, one with the quality checks and one
    without, taking turns (and turns at going first) so both see the same load: CPU seconds
    per tick of each, and the monitor of the one with them."""
    forecasters = {}
    for enabled in (False, True):
        settings = load_settings(
            None,
            storage_dir=storage / str(enabled),
            streams=[{"pattern": "*", "interval_s": INTERVAL}],
            quality={"enabled": enabled},
        )
        forecasters[enabled] = Forecaster(FastBundle(), settings)  # type: ignore[arg-type]
    registry = StreamRegistry()
    rng = np.random.default_rng(0)
    ids = [StreamId(f"dev{i // 10}", f"s{i % 10}") for i in range(streams)]
    history = 200
    for stream in ids:
        registry.insert(
            stream,
            [Reading(START + k * INTERVAL, float(rng.normal())) for k in range(history)],
            arrival_ts=START + history * INTERVAL,
        )
    times: dict[bool, list[float]] = {False: [], True: []}
    link = NullLink()
    for k in range(history, history + ticks):
        ts = START + k * INTERVAL
        for stream in ids:
            registry.insert(stream, [Reading(ts, float(rng.normal()))], arrival_ts=ts)
        for enabled in (k % 2 == 0, k % 2 == 1):
            fc = forecasters[enabled]
            context = TickContext(ts + 1, fc.settings, registry, link, AgentMetrics())
            started = time.process_time()
            fc(context)  # type: ignore[arg-type]
            times[enabled].append(time.process_time() - started)
    return times, forecasters[True].quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times, quality = run(args.streams, args.ticks, Path(tmp))
        # The first ticks fill the pending steps up; measure after them.
        off = statistics.median(times[False][5:])
        on = statistics.median(times[True][5:])
        print(f"{platform.processor() or platform.machine()}, {args.streams} streams, CPU time")
        print(f"tick without quality: median {off * 1e3:.1f} ms")
        print(f"tick with quality:    median {on * 1e3:.1f} ms (+{(on - off) * 1e3:.1f} ms)")
        skill = quality.skill  # type: ignore[attr-defined]
        per_stream = {
            "pending steps": quality.pending.nbytes / args.streams,  # type: ignore[attr-defined]
            "skill sums": sum(getattr(skill, f)[: args.streams].nbytes for f in skill.FIELDS)
            / args.streams,
            "calibration": quality.calibrator.log_scale[: args.streams].nbytes / args.streams,  # type: ignore[attr-defined]
            "anomaly state and last recorded": (
                sum(
                    getattr(quality.anomalies, f)[: args.streams].nbytes  # type: ignore[attr-defined]
                    for f in ("raised", "inside_run", "stale")
                )
                + quality._last_recorded[: args.streams].nbytes  # type: ignore[attr-defined]
            )
            / args.streams,
        }
        for name, value in per_stream.items():
            print(f"{name}: {value:.0f} B per stream")
        quality.save()  # type: ignore[attr-defined]
        db = Path(tmp) / "True" / "quality.db"
        size = sum(p.stat().st_size for p in db.parent.glob("quality.db*"))
        print(f"quality.db (with its WAL): {size / args.streams:.0f} B per stream")


if __name__ == "__main__":
    main()
