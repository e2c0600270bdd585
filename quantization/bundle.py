"""Write signed edge bundles (the format is `moecast.bundle.format`'s; this is the writing side).

    key = load_private_key("keys/signing-key.pem")
    build_bundle(model, "bundles/edge-v3", key, quantization="int8", model_version=3, tar=True)

The manifest carries a golden input (two fixed series: one with NaN holes, one short history
left-padded with NaN) and the outputs `model.onnx` gives for it under ONNX Runtime, so every
agent can prove, before switching, that the model it loaded computes what was shipped. A
bundle is verified with its own public key before `build_bundle` returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moecast.model.network import MoecastModel
from moecast.quantization.export import export_onnx
from moecast.quantization.quantize import quantize_int8

# Re-exported: the writing side keeps one import for keys, signing and building.
from moecast.quantization.signing import DEV_PRIVATE_KEY as DEV_PRIVATE_KEY
from moecast.quantization.signing import PRIVATE_KEY_FILE as PRIVATE_KEY_FILE
from moecast.quantization.signing import PUBLIC_KEY_FILE as PUBLIC_KEY_FILE
from moecast.quantization.signing import generate_keypair as generate_keypair
from moecast.quantization.signing import load_private_key as load_private_key
from moecast.quantization.signing import write_bundle, write_tar

from moecast.bundle.format import (
    INPUT_NAME,
    Golden,
    Manifest,
    load_bundle,
    output_name,
)

Quantization = Literal["fp32", "int8"]

# Golden tolerance, relative to the spread of the golden series. fp32 on another CPU differs
# by float reassociation only (~1e-6); int8 may also round an activation one quantization step
# differently on another integer kernel, which later layers can amplify.
GOLDEN_TOLERANCE: dict[Quantization, float] = {"fp32": 1e-3, "int8": 2e-2}


def golden_input(context_length: int) -> np.ndarray:
    """Two fixed series `[2, context_length]` of decimals (NaN = missing): a daily cycle with
    drift, noise, scattered missing readings and a long gap; and a short, faster history
    left-padded with NaN."""
    rng = np.random.default_rng(20250101)
    t = np.arange(context_length, dtype=np.float64)
    holed = 20 + 5 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(0, 0.5, context_length)
    holed[rng.random(context_length) < 0.05] = np.nan
    holed[context_length // 2 : context_length // 2 + context_length // 16] = np.nan
    short = np.full(context_length, np.nan)
    observed = max(1, context_length // 4)
    tail = t[-observed:]
    short[-observed:] = 100 + 10 * np.sin(2 * np.pi * tail / 12) + rng.normal(0, 1, observed)
    # Three decimals keep manifest.json short.
    return np.round(np.stack([holed, short]), 3)


def build_bundle(
    model: MoecastModel,
    out: str | Path,
    signing_key: Ed25519PrivateKey,
    *,
    quantization: Quantization = "fp32",
    model_version: int = 1,
    training: Mapping[str, Any] | None = None,
    tar: bool = False,
) -> Path:
    """Export `model`, optionally quantize it, sign and write the bundle directory `out` (and
    `out` + `.tar` when `tar`). Both are verified with the signing key's public half."""
    out = Path(out)
    archive = out.with_name(out.name + ".tar")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory")
    if tar and archive.exists():
        raise FileExistsError(f"{archive} exists")
    model.eval()
    with tempfile.TemporaryDirectory(prefix="moecast-export-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        chosen = fp32 if quantization == "fp32" else quantize_int8(fp32, Path(tmp) / "int8.onnx")
        onnx_bytes = chosen.read_bytes()
        fp32_size = fp32.stat().st_size

    decimals = golden_input(model.config.context_length)
    values = decimals.astype(np.float32)  # exactly what Golden.input_array gives an agent
    forecasts = [output_name(h) for h in model.config.horizons]
    outputs = {
        name: array for name, array in _run_onnx(onnx_bytes, values).items() if name in forecasts
    }
    manifest = Manifest(
        name=model.config.name,
        model_version=model_version,
        created=datetime.now(UTC),
        context_length=model.config.context_length,
        patch_len=model.config.patch_len,
        horizons=list(model.config.horizons),
        quantiles=list(model.config.quantiles),
        experts_per_layer=model.kept_experts,
        quantization=quantization,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        golden=_golden(decimals, outputs, GOLDEN_TOLERANCE[quantization]),
        training=_training_summary(model, training),
        benchmark=_benchmark(model, values, outputs, len(onnx_bytes), fp32_size),
    )
    write_bundle(out, onnx_bytes, manifest, signing_key)
    trusted = [signing_key.public_key()]
    load_bundle(out, trusted)
    if tar:
        load_bundle(write_tar(out, archive), trusted)
    return out


def _run_onnx(onnx_bytes: bytes, values: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: values}), strict=True))


def _golden(decimals: np.ndarray, outputs: dict[str, np.ndarray], tolerance: float) -> Golden:
    atol = tolerance * _spread(decimals)
    return Golden(
        input=[[None if np.isnan(v) else float(v) for v in row] for row in decimals],
        # Rounded far below the tolerance: halves manifest.json.
        outputs={
            name: np.round(array.astype(np.float64), 5).tolist() for name, array in outputs.items()
        },
        atol=atol,
    )


def _spread(values: np.ndarray) -> float:
    """The largest standard deviation among the rows' observed points: the scale errors are
    stated against."""
    return float(np.nanmax(np.nanstd(values, axis=1)))


def _training_summary(model: MoecastModel, training: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(model.config),
        "params": model.parameter_counts(),
        **dict(training or {}),
    }


def _benchmark(
    model: MoecastModel,
    values: np.ndarray,
    outputs: dict[str, np.ndarray],
    model_bytes: int,
    fp32_bytes: int,
) -> dict[str, Any]:
    """Size and agreement with the PyTorch model on the golden input, the error stated
    relative to the golden series' spread."""
    with torch.no_grad():
        reference = model.predict(torch.from_numpy(values))
    error = max(
        float(np.abs(outputs[output_name(h)] - reference[h].numpy()).max()) for h in reference
    )
    return {
        "model_bytes": model_bytes,
        "fp32_model_bytes": fp32_bytes,
        "golden_max_abs_error_vs_pytorch": error,
        "golden_max_error_vs_pytorch_relative_to_spread": error / _spread(values),
    }
