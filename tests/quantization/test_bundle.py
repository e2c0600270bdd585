"""Writing bundles: keys, the golden input, `build_bundle` and `moecast export`."""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import moecast.quantization.bundle as writer
import numpy as np
import pytest
import torch
from moecast.model.checkpoint import save_checkpoint
from moecast.quantization.bundle import (
    DEV_PRIVATE_KEY,
    build_bundle,
    generate_keypair,
    golden_input,
    load_private_key,
    write_bundle,
)

from moecast.bundle.format import (
    DEV_PUBLIC_KEY,
    GoldenMismatchError,
    Manifest,
    SignatureError,
    load_bundle,
    load_public_key,
)
from moecast.cli import main


@pytest.fixture
def keys(tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    return load_private_key(private), public


@pytest.fixture
def fp32_bundle(nano, nano_fp32, keys, tmp_path, monkeypatch):
    """A fp32 nano bundle built from the session's export (exporting again is slow)."""

    def reuse_export(_model, path):
        return Path(shutil.copyfile(nano_fp32, path))

    monkeypatch.setattr(writer, "export_onnx", reuse_export)
    return build_bundle(nano, tmp_path / "nano", keys[0], model_version=7, tar=True)


def test_keypair_private_half_is_owner_only_and_never_overwritten(tmp_path):
    private, public = generate_keypair(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(private)
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(FileExistsError, match="not overwriting a key"):
        generate_keypair(tmp_path)


def test_private_key_errors_are_clear(tmp_path):
    _, public = generate_keypair(tmp_path)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_private_key(public)
    with pytest.raises(ValueError, match="cannot read signing key"):
        load_private_key(tmp_path / "missing.pem")


def test_development_key_pair_matches():
    private = load_private_key(DEV_PRIVATE_KEY).public_key().public_bytes_raw()
    assert private == load_public_key(DEV_PUBLIC_KEY).public_bytes_raw()


def test_golden_input_is_fixed_and_has_both_kinds_of_gap():
    values = golden_input(128)
    np.testing.assert_array_equal(values, golden_input(128))
    assert values.shape == (2, 128)
    holed, short = np.isnan(values)
    assert holed.sum() > 128 // 16  # scattered holes and a gap...
    assert not holed[0]  # ...but no left padding
    first_observed = int(np.argmin(short))
    assert first_observed > 0
    assert short[:first_observed].all()
    assert not short[first_observed:].any()


def test_built_bundle_loads_and_its_golden_is_the_pytorch_forecast(nano, fp32_bundle, keys):
    bundle = load_bundle(fp32_bundle, [keys[1]])
    manifest = bundle.manifest
    assert (manifest.name, manifest.model_version, manifest.quantization) == ("nano", 7, "fp32")
    assert manifest.experts_per_layer == [[0, 1, 2, 3], [0, 1, 2, 3]]
    model_bytes = (fp32_bundle / "model.onnx").read_bytes()
    assert manifest.model_sha256 == hashlib.sha256(model_bytes).hexdigest()
    with torch.no_grad():
        expected = nano.predict(torch.from_numpy(manifest.golden.input_array()))
    for h, forecast in expected.items():
        golden = np.asarray(manifest.golden.outputs[f"h{h}"])
        assert np.abs(golden - forecast.numpy()).max() < 1e-4
    assert manifest.benchmark["golden_max_error_vs_pytorch_relative_to_spread"] < 1e-5
    assert manifest.training["params"]["total"] == nano.parameter_counts()["total"]
    assert load_bundle(fp32_bundle.with_name("nano.tar"), [keys[1]]).manifest == manifest


def test_built_bundle_is_refused_by_a_stranger(fp32_bundle):
    stranger = generate_keypair(fp32_bundle.parent / "other")[1]
    with pytest.raises(SignatureError):
        load_bundle(fp32_bundle, [stranger])


def test_golden_catches_int8_weights_shipped_under_a_fp32_manifest(
    fp32_bundle, nano_int8, keys, tmp_path
):
    # Signed, right sha256, loads, right shapes: only the outputs moved (by int8 rounding).
    manifest = Manifest.from_bytes((fp32_bundle / "manifest.json").read_bytes())
    swapped = nano_int8.read_bytes()
    manifest = manifest.model_copy(update={"model_sha256": hashlib.sha256(swapped).hexdigest()})
    write_bundle(tmp_path / "swapped", swapped, manifest, keys[0])
    with pytest.raises(GoldenMismatchError, match="differs from the manifest"):
        load_bundle(tmp_path / "swapped", [keys[1]])


def test_build_refuses_a_non_empty_output(nano, keys, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        build_bundle(nano, tmp_path / "taken", keys[0])


@pytest.fixture
def checkpoint(nano, tmp_path):
    return save_checkpoint(nano, tmp_path / "ckpt", metadata={"step": 42})


@pytest.mark.slow
def test_export_command_writes_an_int8_bundle_agents_accept(checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out)]
    code = main([*argv, "--quantize", "int8", "--dev-key", "--model-version", "3", "--tar"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "development key" in printed
    for path in (out, tmp_path / "bundle.tar"):
        manifest = load_bundle(path, [DEV_PUBLIC_KEY]).manifest
        assert (manifest.quantization, manifest.model_version) == ("int8", 3)
        assert manifest.training["checkpoint"] == {"step": 42}
        assert manifest.benchmark["model_bytes"] < 0.75 * manifest.benchmark["fp32_model_bytes"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [([], "a bundle must be signed"), (["--dev-key", "--sign-key", "k.pem"], "not both")],
)
def test_export_command_refuses_to_guess_the_key(checkpoint, tmp_path, capsys, flags, message):
    out = tmp_path / "bundle"
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
