"""Latency of two or more bundles' `model.onnx`, measured interleaved, so that the machine's
load falls on every one alike.

    git show HEAD~1:agent/default_bundle/model.onnx > /tmp/v1.onnx    # an earlier bundle
    python benchmarks/bundle_latency.py /tmp/v1.onnx agent/default_bundle/model.onnx

Input: a 512-point daily-like cycle with noise and 10 % of the points missing (NaN), the same
for every bundle. ONNX Runtime on one intra-op thread. For each batch size (`--batches`), every
bundle runs once in turn, `--runs` times; the table gives each one's median and its ratio to
the first bundle's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from timing import cpu_description

CONTEXT = 512


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", type=Path, nargs="+", help="model.onnx files; the first is the reference"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    sessions = [session(path) for path in args.models]
    rng = np.random.default_rng(0)
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"cpu: {cpu_description()}, load average {os.getloadavg()[0]:.1f}, "
        f"onnxruntime {ort.__version__}"
    )
    for batch in args.batches:
        values = 20 + np.sin(np.arange(CONTEXT) / 12) + rng.normal(0, 0.1, (batch, CONTEXT))
        values[rng.random(values.shape) < 0.1] = np.nan
        feed = values.astype(np.float32)
        name = sessions[0].get_inputs()[0].name
        for s in sessions:  # warm-up
            for _ in range(3):
                s.run(None, {name: feed})
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(args.runs):
            for i, s in enumerate(sessions):
                started = time.perf_counter()
                s.run(None, {name: feed})
                times[i].append(time.perf_counter() - started)
        medians = [statistics.median(t) * 1000 for t in times]
        for path, median in zip(args.models, medians, strict=True):
            ratio = median / medians[0]
            print(f"batch {batch:4d}  {median:8.2f} ms  {ratio:5.2f}x  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
