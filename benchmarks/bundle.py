"""Bundle benchmark: fp32 vs int8 vs pruned+int8 `model.onnx` of one checkpoint.

    pip install 'moecast[export]'
    python benchmarks/bundle.py                                   # model/weights/edge
    python benchmarks/bundle.py --checkpoint runs/edge/last --keep-experts 4
    python benchmarks/bundle.py --site pvlib/723170TYA.CSV.gz    # prune for another site

For each variant: file size; ONNX Runtime latency (median) at batch 1 and 1000 on 1 and 2
intra-op threads, input `[batch, context_length]` of real sensor windows with their gaps; peak
RSS (`ru_maxrss`) of a fresh process that imports onnxruntime, loads the model and runs batch
1, next to that of one that only imports (see RSS_PROBE); and accuracy against the PyTorch
model: the geometric-mean MASE at horizon 32 over held-out windows of the sensor benchmark
series (NAB realKnownCause and realTraffic, UCI occupancy and air quality; `--windows` origins
in the last quarter of each series, naive one-step scale).

Pruning is for one site, as a fleet operator prunes (`moecast fleet prune-for`): `--site` is
one data file of one place's sensors (default: the Jena weather station, 10-minute readings
of its 21 sensors, never trained on). The pruned variant chooses its experts on the first three
quarters of each of the site's series (`quantization.prune`); the int8 and pruned bundles are
then scored on the site's last quarter (`--site-windows` origins per series), which pruning
never saw: the accuracy change, size and latency that pruning saves against the unpruned int8
bundle for that site.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from moecast.model.checkpoint import checkpoint_metadata, load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.data.corpus import (
    SENSOR_BENCHMARK_SOURCES,
    default_data_root,
    load_corpus,
    load_series_file,
)
from moecast.model.network import MoecastModel
from moecast.quantization.export import export_onnx
from moecast.quantization.prune import prune_for_site
from moecast.quantization.quantize import quantize_int8
from moecast.quantization.site_data import HOLDOUT_FRACTION, SiteSplit, split_site
from timing import cpu_description, timed

HORIZON = 32
BATCHES = (1, 1000)
THREADS = (1, 2)
GOALS = {"int8_size_share": 0.30, "mase_change": 0.02, "b1_ms": 10.0}
DEFAULT_SITE = "weather/weather.csv.gz"

# Linux carries a process's RSS high-water mark into a child it starts with exec, so a probe
# started from this (large) process would report the benchmark's own peak through getrusage.
# The probe therefore forks the worker: the worker starts from the probe's small image (Python,
# numpy, onnxruntime imported) and the probe reads the worker's peak from RUSAGE_CHILDREN.
RSS_PROBE = """
import os, resource, sys
import numpy as np, onnxruntime as ort
path, context = sys.argv[1], int(sys.argv[2])
if os.fork() == 0:
    if path != "-":
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        values = np.full((1, context), np.nan, dtype=np.float32)
        values[0, context // 2 :] = np.sin(np.arange(context - context // 2) / 7.0)
        session.run(None, {"values": values})
    os._exit(0)
os.wait()
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
"""


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def peak_rss_mb(path: Path | None, context: int) -> float:
    probe = [sys.executable, "-c", RSS_PROBE, str(path) if path else "-", str(context)]
    done = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=300)
    return int(done.stdout.strip()) / 1024


def onnx_mase(path: Path, split: SiteSplit, median_index: int) -> float:
    runner = session(path, threads=2)
    medians = [
        runner.run([f"h{HORIZON}"], {"values": chunk})[0][..., median_index]
        for chunk in np.array_split(split.contexts, max(1, len(split.contexts) // 256))
    ]
    return split.mase(np.concatenate(medians).astype(np.float64))


def torch_mase(model: MoecastModel, split: SiteSplit) -> float:
    with torch.no_grad():
        median = model.predict(torch.from_numpy(split.contexts))[HORIZON]
    return split.mase(median[..., model.config.median_index].double().numpy())


def measure(name: str, path: Path, split: SiteSplit, site: SiteSplit, model: MoecastModel) -> dict:
    context = model.config.context_length
    rows = np.resize(split.contexts, (max(BATCHES), context))  # real windows, repeated
    row: dict = {"bundle": name, "bytes": path.stat().st_size}
    for threads in THREADS:
        runner = session(path, threads)
        for batch in BATCHES:
            run = functools.partial(runner.run, None, {"values": rows[:batch]})
            seconds = timed(run, 1.0 if batch == 1 else 0.0, 20 if batch == 1 else 3)
            row[f"b{batch}_t{threads}_ms"] = 1000 * seconds
    row["peak_rss_mb"] = peak_rss_mb(path, context)
    row["gmean_mase"] = onnx_mase(path, split, model.config.median_index)
    row["site_gmean_mase"] = onnx_mase(path, site, model.config.median_index)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument(
        "--keep-experts", default="auto", help="experts per layer for the pruned variant, or auto"
    )
    parser.add_argument("--tolerance", type=float, default=GOALS["mase_change"])
    parser.add_argument("--windows", type=int, default=4, help="held-out windows per series")
    parser.add_argument(
        "--site", default=DEFAULT_SITE, help="one site's data file, under the data root"
    )
    parser.add_argument(
        "--site-windows", type=int, default=16, help="held-out windows per series of the site"
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bundle.json"
    )
    args = parser.parse_args()
    if not args.checkpoint.is_dir():
        print(f"no checkpoint at {args.checkpoint}: pass --checkpoint", file=sys.stderr)
        return 2
    root = args.data_root or default_data_root()
    if not (root / "nab").is_dir():
        print(f"no benchmark data under {root} (set MOECAST_DATA)", file=sys.stderr)
        return 2
    keep = None if args.keep_experts == "auto" else int(args.keep_experts)

    machine = (
        f"{platform.machine()}, {cpu_description()}, {os.cpu_count()} cores, onnxruntime "
        f"{ort.__version__}, load average {os.getloadavg()[0]:.1f} at start"
    )
    step = checkpoint_metadata(args.checkpoint).get("step", "?")
    # The PyTorch side (export, pruning) is not timed; one thread keeps it from fighting the
    # onnxruntime measurements, or a neighbour on a small machine, for cores.
    torch.set_num_threads(1)
    print(
        f"$ python {' '.join(sys.argv)}\nmachine: {machine}\ncheckpoint: {args.checkpoint}, "
        f"step {step}\n"
    )

    model = load_checkpoint(args.checkpoint)
    series = load_corpus(root, SENSOR_BENCHMARK_SOURCES)
    context = model.config.context_length
    split = split_site(series, context, HORIZON, windows_per_series=args.windows)
    reference = torch_mase(model, split)
    site_series = load_series_file(root / args.site, source=args.site)
    site = split_site(site_series, context, HORIZON, windows_per_series=args.site_windows)
    site_reference = torch_mase(model, site)

    # Pruned on what precedes the site's scored windows: each series' first three quarters.
    earlier = [s.values[: int(s.values.size * (1 - HOLDOUT_FRACTION))] for s in site_series]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moecast-bench-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx")
        report = prune_for_site(model, earlier, keep=keep, tolerance=args.tolerance)
        print(f"pruning for {args.site} ({len(site_series)} series):\n{report.table()}\n")
        pruned_fp32 = export_onnx(model, Path(tmp) / "pruned.fp32.onnx")
        pruned = quantize_int8(pruned_fp32, Path(tmp) / "pruned.int8.onnx")
        build_s = time.perf_counter() - started
        bundles = {"fp32": fp32, "int8": int8, f"pruned{report.chosen.keep}+int8": pruned}
        rows = [measure(name, path, split, site, model) for name, path in bundles.items()]
    baseline_rss = peak_rss_mb(None, context)

    fp32_bytes = rows[0]["bytes"]
    for row in rows:
        row["size_share"] = row["bytes"] / fp32_bytes
        row["mase_change"] = row["gmean_mase"] / reference - 1.0
        row["site_mase_change"] = row["site_gmean_mase"] / site_reference - 1.0
    _print_table(rows, reference, baseline_rss, len(split.contexts))
    _print_site(rows[1], rows[2], args.site, site_reference, len(site.contexts))
    print(f"\nexports and pruning took {build_s:.0f} s; kept experts: {model.kept_experts}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": " ".join(sys.argv),
        "machine": machine,
        "checkpoint": str(args.checkpoint),
        "step": step,
        "horizon": HORIZON,
        "held_out_windows": len(split.contexts),
        "pytorch_gmean_mase": reference,
        "site": args.site,
        "site_held_out_windows": len(site.contexts),
        "site_pytorch_gmean_mase": site_reference,
        "baseline_rss_mb": baseline_rss,
        "goals": GOALS,
        "rows": rows,
        "pruning": report.to_dict(),
    }
    args.out.write_text(json.dumps(document, indent=2))
    print(f"wrote {args.out}")
    return 0


def _print_table(rows: list[dict], reference: float, baseline_rss: float, windows: int) -> None:
    latency = [f"b{b}/t{t} ms" for t in THREADS for b in BATCHES]
    print(
        f"{'bundle':<16}{'MB':>7}{'of fp32':>9}"
        + "".join(f"{c:>13}" for c in latency)
        + f"{'RSS MB':>8}{'MASE':>8}{'vs torch':>9}"
    )
    for row in rows:
        times = "".join(f"{row[f'b{b}_t{t}_ms']:>13.1f}" for t in THREADS for b in BATCHES)
        print(
            f"{row['bundle']:<16}{row['bytes'] / 1e6:>7.2f}{row['size_share']:>9.1%}{times}"
            f"{row['peak_rss_mb']:>8.0f}{row['gmean_mase']:>8.4f}{row['mase_change']:>+9.2%}"
        )
    print(
        f"\nPyTorch fp32: gmean MASE {reference:.4f} at horizon {HORIZON} over {windows} held-out "
        f"windows. RSS: peak of a process that loads the model and runs batch 1; one that only "
        f"imports numpy and onnxruntime peaks at {baseline_rss:.0f} MB.\n"
        f"goals: int8 <= {GOALS['int8_size_share']:.0%} of fp32 size; MASE change <= "
        f"{GOALS['mase_change']:.0%}; batch-1 latency in milliseconds (< {GOALS['b1_ms']:.0f} ms "
        "on 1 thread)"
    )
    # The goals are the int8 bundle's; the pruned one is judged on its site (below).
    for row in rows[1:2]:
        verdicts = [
            f"size {'met' if row['size_share'] <= GOALS['int8_size_share'] else 'MISSED'}",
            f"MASE {'met' if abs(row['mase_change']) <= GOALS['mase_change'] else 'MISSED'}",
            f"b1 {'met' if row['b1_t1_ms'] <= GOALS['b1_ms'] else 'MISSED'}",
        ]
        print(f"  {row['bundle']}: " + ", ".join(verdicts))


def _print_site(int8: dict, pruned: dict, site: str, reference: float, windows: int) -> None:
    saved = 1 - pruned["bytes"] / int8["bytes"]
    print(
        f"\nsite {site}: {windows} held-out windows (its last quarter), gmean MASE at horizon "
        f"{HORIZON}: PyTorch {reference:.4f}, int8 {int8['site_gmean_mase']:.4f} "
        f"({int8['site_mase_change']:+.2%}), {pruned['bundle']} {pruned['site_gmean_mase']:.4f} "
        f"({pruned['site_gmean_mase'] / int8['site_gmean_mase'] - 1:+.2%} against int8); "
        f"size {pruned['bytes'] / 1e6:.2f} MB against {int8['bytes'] / 1e6:.2f} MB ({saved:.0%} "
        "saved); batch-1 latency on 1 thread "
        f"{pruned['b1_t1_ms']:.1f} ms against {int8['b1_t1_ms']:.1f} ms, batch 1000 "
        f"{pruned['b1000_t1_ms']:.0f} ms against {int8['b1000_t1_ms']:.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
