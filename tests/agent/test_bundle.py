"""Bundle loading: each way a bundle can be wrong is rejected by its own check.

Runs without torch. Cases that need a real model build a tiny ONNX graph with `onnx` (the
export extra) and skip without it; every check before ONNX loading uses placeholder bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from moecast.bundle.format import (
    DEV_PUBLIC_KEY,
    ChecksumError,
    CorruptArchiveError,
    GoldenMismatchError,
    InterfaceError,
    KeyFormatError,
    Manifest,
    ManifestError,
    MissingFileError,
    ModelLoadError,
    NoTrustedKeyError,
    SignatureError,
    UnsafeArchiveError,
    UnsupportedFormatError,
    load_bundle,
    load_public_key,
)

CONTEXT, HORIZONS, QUANTILES = 8, (1, 2), (0.1, 0.5, 0.9)
GOLDEN = np.array([np.arange(1, 9), [np.nan] * 6 + [3, 4]], dtype=np.float32)
PLACEHOLDER = b"placeholder: every check before ONNX loading passes without a model"


def tiny_model(factor: float = 1.0, context: int = CONTEXT) -> bytes:
    """`h{h}[b, :, :] = factor * (sum of row b's observed values)`: small, exact, NaN-aware."""
    onnx = pytest.importorskip("onnx", reason="building a model needs the 'export' extra")
    from onnx import TensorProto, helper, numpy_helper

    def tensor(name: str, array) -> TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    nodes = [
        helper.make_node("IsNaN", ["values"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "values"], ["observed"]),
        helper.make_node("ReduceSum", ["observed", "axis1"], ["total"], keepdims=1),
        helper.make_node("Unsqueeze", ["total", "axis2"], ["total3"]),
        helper.make_node("Identity", ["load"], ["expert_load"]),
    ]
    weights = [
        tensor("zero", np.float32(0)),
        tensor("axis1", np.array([1], dtype=np.int64)),
        tensor("axis2", np.array([2], dtype=np.int64)),
        tensor("load", np.ones((1, 2), dtype=np.float32)),
    ]
    outputs = []
    for h in HORIZONS:
        weights.append(tensor(f"w{h}", np.full((1, h, len(QUANTILES)), factor, np.float32)))
        nodes.append(helper.make_node("Mul", ["total3", f"w{h}"], [f"h{h}"]))
        outputs.append(helper.make_tensor_value_info(f"h{h}", TensorProto.FLOAT, ["batch", h, 3]))
    outputs.append(helper.make_tensor_value_info("expert_load", TensorProto.FLOAT, [1, 2]))
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", context])
    graph = helper.make_graph(nodes, "tiny", [values], outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest_for(model: bytes, factor: float = 1.0, **changes) -> Manifest:
    totals = np.nansum(GOLDEN, axis=1)
    fields = {
        "name": "tiny",
        "model_version": 3,
        "created": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "context_length": CONTEXT,
        "patch_len": 4,
        "horizons": list(HORIZONS),
        "quantiles": list(QUANTILES),
        "experts_per_layer": [[0, 1]],
        "quantization": "fp32",
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "golden": {
            "input": [[None if np.isnan(v) else float(v) for v in row] for row in GOLDEN],
            "outputs": {
                f"h{h}": np.broadcast_to(factor * totals[:, None, None], (2, h, 3)).tolist()
                for h in HORIZONS
            },
            "atol": 1e-4,
        },
        "training": {"steps": 0},
    }
    return Manifest.model_validate({**fields, **changes})


def write(directory: Path, model: bytes, manifest: bytes, key: Ed25519PrivateKey) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(model)
    (directory / "manifest.json").write_bytes(manifest)
    (directory / "manifest.sig").write_bytes(key.sign(manifest))
    return directory


def tar_of(members: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        name: (directory / name).read_bytes()
        for name in ("model.onnx", "manifest.json", "manifest.sig")
    }


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def placeholder(tmp_path, key) -> Path:
    """A correctly signed bundle whose model is not ONNX."""
    return write(tmp_path / "b", PLACEHOLDER, manifest_for(PLACEHOLDER).to_bytes(), key)


@pytest.fixture
def real(tmp_path, key) -> Path:
    model = tiny_model()
    return write(tmp_path / "real", model, manifest_for(model).to_bytes(), key)


# --- a good bundle ---------------------------------------------------------------------


def test_a_good_bundle_loads_and_forecasts(real, key):
    bundle = load_bundle(real, [key.public_key()])
    assert bundle.manifest.name == "tiny"
    assert bundle.path == real
    out = bundle.run(GOLDEN)
    assert set(out) == {"h1", "h2", "expert_load"}
    np.testing.assert_allclose(out["h2"][:, 0, 0], [36, 7])


def test_a_good_tar_loads(real, key, tmp_path):
    archive = tar_of(files_of(real), tmp_path / "bundle.tar")
    assert load_bundle(archive, [key.public_key()]).manifest.model_version == 3


def test_any_trusted_key_may_have_signed(real, key):
    others = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    load_bundle(real, [others[0], key.public_key(), others[1]])


@pytest.mark.parametrize("memfd", ["available", "forbidden", "absent"])
def test_the_verified_bytes_load_with_or_without_an_in_memory_file(real, key, monkeypatch, memfd):
    import os

    opened: list[int] = []
    real_memfd_create = getattr(os, "memfd_create", None)
    if memfd == "available" and real_memfd_create is None:
        pytest.skip("this system has no memfd_create")

    def create(name: str) -> int:
        if memfd == "forbidden":
            raise PermissionError("memfd_create is not allowed here")
        opened.append(real_memfd_create(name))  # type: ignore[misc]
        return opened[-1]

    if memfd == "absent":
        monkeypatch.delattr(os, "memfd_create", raising=False)
    else:
        monkeypatch.setattr(os, "memfd_create", create, raising=False)
    bundle = load_bundle(real, [key.public_key()])
    np.testing.assert_allclose(bundle.run(GOLDEN)["h2"][:, 0, 0], [36, 7])
    assert len(opened) == (memfd == "available")
    for fd in opened:  # closed once the session has loaded
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_sessions_use_the_given_threads_and_never_spin(real, key):
    session = load_bundle(real, [key.public_key()], threads=2).session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_mem_pattern


def test_run_rejects_the_wrong_context_length(real, key):
    bundle = load_bundle(real, [key.public_key()])
    with pytest.raises(ValueError, match=r"shape \[batch >= 1, 8\]"):
        bundle.run(np.zeros((2, 9), dtype=np.float32))


# --- each rejection, in the order load_bundle checks --------------------------------------


def test_missing_path(tmp_path, key):
    with pytest.raises(MissingFileError, match="no bundle at"):
        load_bundle(tmp_path / "nowhere", [key.public_key()])


def test_missing_file_in_a_directory(placeholder, key):
    (placeholder / "manifest.sig").unlink()
    with pytest.raises(MissingFileError, match=r"has no manifest\.sig"):
        load_bundle(placeholder, [key.public_key()])


def test_missing_file_in_a_tar(placeholder, key, tmp_path):
    members = files_of(placeholder)
    del members["model.onnx"]
    with pytest.raises(MissingFileError, match=r"has no model\.onnx"):
        load_bundle(tar_of(members, tmp_path / "b.tar"), [key.public_key()])


@pytest.mark.parametrize("cut", ["inside a member", "inside a header", "end marker"])
def test_truncated_tar(placeholder, key, tmp_path, cut):
    archive = tar_of(files_of(placeholder), tmp_path / "b.tar")
    data = archive.read_bytes()
    with tarfile.open(archive) as reader:
        last = reader.getmembers()[-1]
    end_of_data = last.offset_data + -(-last.size // 512) * 512
    length = {
        "inside a member": last.offset_data + 512,
        "inside a header": last.offset + 512 - 100,
        "end marker": end_of_data,
    }[cut]
    archive.write_bytes(data[:length])
    with pytest.raises(CorruptArchiveError, match=r"truncated|not a readable tar"):
        load_bundle(archive, [key.public_key()])


def test_not_a_tar(tmp_path, key):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(CorruptArchiveError, match="not a readable tar"):
        load_bundle(junk, [key.public_key()])


@pytest.mark.parametrize("name", ["../model.onnx", "/manifest.json", "a/../../x"])
def test_path_traversal_in_a_tar(placeholder, key, tmp_path, name):
    members = {**files_of(placeholder), name: b"x"}
    with pytest.raises(UnsafeArchiveError, match="unsafe path"):
        load_bundle(tar_of(members, tmp_path / "b.tar"), [key.public_key()])


def test_links_and_unexpected_members_in_a_tar(placeholder, key, tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as writer:
        link = tarfile.TarInfo("model.onnx")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        writer.addfile(link)
    with pytest.raises(UnsafeArchiveError, match="not a plain file"):
        load_bundle(archive, [key.public_key()])
    extra = tar_of({**files_of(placeholder), "run.sh": b"#!/bin/sh"}, tmp_path / "x.tar")
    with pytest.raises(UnsafeArchiveError, match=r"unexpected tar member 'run\.sh'"):
        load_bundle(extra, [key.public_key()])


def test_duplicate_member_in_a_tar(placeholder, key, tmp_path):
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as writer:
        for name, data in [*files_of(placeholder).items(), ("model.onnx", b"other")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            writer.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError, match="twice"):
        load_bundle(archive, [key.public_key()])


def test_no_trusted_key(placeholder):
    with pytest.raises(NoTrustedKeyError, match="no trusted key configured"):
        load_bundle(placeholder, [])


def test_wrong_key(placeholder):
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(SignatureError, match="does not verify against any trusted key"):
        load_bundle(placeholder, [stranger])


def test_tampered_manifest(placeholder, key):
    document = json.loads((placeholder / "manifest.json").read_bytes())
    document["model_version"] = 99  # e.g. to pass a downgrade check
    (placeholder / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="does not verify against any trusted key"):
        load_bundle(placeholder, [key.public_key()])


def test_truncated_signature(placeholder, key):
    (placeholder / "manifest.sig").write_bytes((placeholder / "manifest.sig").read_bytes()[:63])
    with pytest.raises(SignatureError):
        load_bundle(placeholder, [key.public_key()])


def test_unknown_format_version(tmp_path, key):
    document = json.loads(manifest_for(PLACEHOLDER).to_bytes())
    document["format_version"] = 2
    bundle = write(tmp_path / "v2", PLACEHOLDER, json.dumps(document).encode(), key)
    with pytest.raises(UnsupportedFormatError, match="format_version 2"):
        load_bundle(bundle, [key.public_key()])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"format_version": 1, "name": "x"}', "invalid"),
    ],
)
def test_signed_but_invalid_manifest(tmp_path, key, manifest, message):
    bundle = write(tmp_path / "bad", PLACEHOLDER, manifest, key)
    with pytest.raises(ManifestError, match=message) as raised:
        load_bundle(bundle, [key.public_key()])
    assert type(raised.value) is ManifestError


def test_tampered_model(placeholder, key):
    (placeholder / "model.onnx").write_bytes(PLACEHOLDER + b"!")
    with pytest.raises(ChecksumError, match="sha256"):
        load_bundle(placeholder, [key.public_key()])


def test_model_onnx_runtime_cannot_load(placeholder, key):
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        load_bundle(placeholder, [key.public_key()])


@pytest.mark.parametrize(
    ("model_context", "experts", "message"),
    [(CONTEXT + 4, [[0, 1]], "values has shape"), (CONTEXT, [[0, 1, 2]], "expert_load has shape")],
)
def test_shapes_that_contradict_the_manifest(tmp_path, key, model_context, experts, message):
    model = tiny_model(context=model_context)
    manifest = manifest_for(model, experts_per_layer=experts)
    bundle = write(tmp_path / "shape", model, manifest.to_bytes(), key)
    with pytest.raises(InterfaceError, match=message):
        load_bundle(bundle, [key.public_key()])


def test_golden_catches_a_model_whose_outputs_changed(tmp_path, key):
    # Correctly signed, matching sha256, loads, right shapes: only the outputs differ.
    changed = tiny_model(factor=1.01)
    manifest = manifest_for(changed, factor=1.0)
    bundle = write(tmp_path / "changed", changed, manifest.to_bytes(), key)
    with pytest.raises(GoldenMismatchError, match="h1 differs from the manifest by"):
        load_bundle(bundle, [key.public_key()])


def test_golden_rejects_non_finite_outputs(tmp_path, key):
    broken = tiny_model(factor=float("inf"))
    bundle = write(tmp_path / "inf", broken, manifest_for(broken).to_bytes(), key)
    with pytest.raises(GoldenMismatchError, match="non-finite"):
        load_bundle(bundle, [key.public_key()])


# --- the manifest and keys ------------------------------------------------------------------


def test_manifest_round_trip():
    manifest = manifest_for(PLACEHOLDER)
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert again.to_bytes() == manifest.to_bytes()
    assert again.created.utcoffset() == timedelta(0)
    assert not again.allow_downgrade
    values = again.golden.input_array()
    assert values.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(values), np.isnan(GOLDEN))


def test_manifest_rejects_golden_outputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"golden output h1 has shape \(2, 1, 3\)"):
        manifest_for(PLACEHOLDER, horizons=[1, 2], quantiles=[0.1, 0.5, 0.7, 0.9])


def test_public_keys_load_from_every_form(tmp_path, key):
    public = key.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "k.hex").write_text(raw.hex() + "\n")
    (tmp_path / "k.raw").write_bytes(raw)
    forms = [public, raw, pem, pem.decode(), raw.hex(), str(tmp_path / "k.pem")]
    forms += [tmp_path / "k.hex", tmp_path / "k.raw"]
    for form in forms:
        assert load_public_key(form).public_bytes(Encoding.Raw, PublicFormat.Raw) == raw


def test_bad_keys_are_named(tmp_path):
    other = X25519PrivateKey.generate().public_key()
    (tmp_path / "x.pem").write_bytes(
        other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="not an Ed25519 key"):
        load_public_key(tmp_path / "x.pem")
    with pytest.raises(KeyFormatError, match="cannot read public key file"):
        load_public_key(tmp_path / "missing.pem")
    with pytest.raises(KeyFormatError, match="neither PEM"):
        load_public_key(b"short")


def test_the_development_key_ships_with_its_warning_and_no_private_half():
    load_public_key(DEV_PUBLIC_KEY)
    readme = (DEV_PUBLIC_KEY.parent / "README.md").read_text()
    assert "never trust it in production" in readme
    agent_root = DEV_PUBLIC_KEY.parents[1]
    assert not [p for p in agent_root.rglob("*.pem") if "PRIVATE" in p.read_text()]
