"""Bundles and fleet messages for the update tests, built from the shipped default bundle (no
torch): re-signed with a test key, versions bumped, models and messages tampered with."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from moecast.agent.cli import DEFAULT_BUNDLE
from moecast.quantization.signing import resign_bundle, write_bundle

from moecast.bundle.format import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Manifest,
    read_bundle_files,
)
from moecast.bundle.wire import Announcement, bundle_topic, chunk_topic, package
from moecast.fleet.client import Connection, _wait_all, connected

GROUP = "site-7"
FLEET = "moecast/fleet"
CHUNK_BYTES = 256 * 1024
# Readings far above the golden input's range (about 15 to 111): see nan_above.
NAN_THRESHOLD = 1000.0


def public_pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def default_as(out: Path, key: Ed25519PrivateKey, version: int, **changes: Any) -> Path:
    """The shipped default bundle, signed by `key` as `version`."""
    return resign_bundle(DEFAULT_BUNDLE, out, key, model_version=version, **changes)


def with_model(
    source: Path, out: Path, key: Ed25519PrivateKey, model: bytes, **changes: Any
) -> Path:
    """`source`'s manifest for another model (its sha256 updated), signed by `key`; not
    verified, as the model may be meant to fail."""
    manifest = Manifest.from_bytes(read_bundle_files(source)[MANIFEST_FILE])
    manifest = Manifest.model_validate(
        {**manifest.model_dump(), "model_sha256": hashlib.sha256(model).hexdigest(), **changes}
    )
    write_bundle(out, model, manifest, key)
    return out


def nan_above(model: bytes, threshold: float = NAN_THRESHOLD) -> bytes:
    """`model` edited so that every forecast is NaN for a row whose largest reading exceeds
    `threshold`: a validly signed model with a numerical bug the golden input (all below the
    threshold) cannot reveal, as a model that overflows on an unfamiliar range would have."""
    onnx = pytest.importorskip("onnx", reason="editing an ONNX graph needs the 'export' extra")
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    heads = [o.name for o in graph.output if o.name.startswith("h")]
    for node in graph.node:
        node.output[:] = [f"{n}_raw" if n in heads else n for n in node.output]
        node.input[:] = [f"{n}_raw" if n in heads else n for n in node.input]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, np.float32), "nan_zero"),
            numpy_helper.from_array(np.array(threshold, np.float32), "nan_threshold"),
            numpy_helper.from_array(np.array(np.nan, np.float32), "nan_value"),
            numpy_helper.from_array(np.array([2], np.int64), "nan_axes"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("IsNaN", ["values"], ["nan_missing"]),
            helper.make_node("Where", ["nan_missing", "nan_zero", "values"], ["nan_filled"]),
            helper.make_node("Abs", ["nan_filled"], ["nan_abs"]),
            helper.make_node("ReduceMax", ["nan_abs"], ["nan_max"], axes=[1], keepdims=1),
            helper.make_node("Greater", ["nan_max", "nan_threshold"], ["nan_over"]),
            helper.make_node("Unsqueeze", ["nan_over", "nan_axes"], ["nan_over3"]),
        ]
    )
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "nan_axis"))
        graph.node[-3].CopyFrom(
            helper.make_node("ReduceMax", ["nan_abs", "nan_axis"], ["nan_max"], keepdims=1)
        )
    for head in heads:
        graph.node.append(
            helper.make_node("Where", ["nan_over3", "nan_value", f"{head}_raw"], [head])
        )
    return proto.SerializeToString()


def default_model() -> bytes:
    return (DEFAULT_BUNDLE / MODEL_FILE).read_bytes()


def packaged(
    bundle: Path, key: Ed25519PrivateKey, chunk_bytes: int = CHUNK_BYTES
) -> tuple[Announcement, list[bytes]]:
    files = read_bundle_files(bundle)
    return package(
        files[MANIFEST_FILE], files[SIGNATURE_FILE], files[MODEL_FILE], key.sign, chunk_bytes
    )


def send(
    broker_url: str,
    announcement: bytes | None,
    chunks: list[bytes | None],
    group: str = GROUP,
) -> None:
    """Publish raw fleet messages, retained, the way `publish_bundle` orders them (chunks
    first); a None chunk is left out."""
    with connected(Connection(broker_url)) as client:
        infos = [
            client.publish(chunk_topic(FLEET, group, i), payload, 1, True)
            for i, payload in enumerate(chunks)
            if payload is not None
        ]
        if announcement is not None:
            infos.append(client.publish(bundle_topic(FLEET, group), announcement, 1, True))
        _wait_all(infos, 10)


Tamper = Callable[[Announcement, list[bytes]], tuple[bytes | None, list[bytes | None]]]
