"""A pruned model exports without its pruned experts, computes what the masked PyTorch model
computes, and ships as a bundle whose manifest says what was kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import moecast.quantization.bundle as writer
import numpy as np
import onnx
import pandas as pd
import pytest
from moecast.model.checkpoint import save_checkpoint
from moecast.quantization.quantize import quantize_int8

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle
from moecast.cli import main
from tests.quantization.conftest import PRUNED_NANO
from tests.quantization.helpers import holed_series, run_onnx, site_series
from tests.quantization.test_export import FORECASTS, reference


def expert_weights(path: Path) -> set[str]:
    """`blocks.<layer>.ffn.experts.<e>` of every expert whose weights are in the file."""
    names = (init.name for init in onnx.load(path).graph.initializer)
    return {name.removeprefix("model.").rsplit(".", 2)[0] for name in names if ".experts." in name}


@pytest.mark.parametrize("batch", [1, 9])
def test_pruned_export_matches_the_masked_pytorch_model(nano_pruned, nano_pruned_fp32, batch):
    values = holed_series(batch, 128, seed=20 + batch)
    got, want = run_onnx(nano_pruned_fp32, values), reference(nano_pruned, values)
    for name in FORECASTS:
        assert np.abs(got[name] - want[name]).max() < 1e-4, name
    assert got["expert_load"].shape == (2, 3)
    np.testing.assert_allclose(got["expert_load"], want["expert_load"], rtol=1e-4)


def test_pruned_experts_are_not_in_the_file(nano_fp32, nano_pruned_fp32):
    assert expert_weights(nano_pruned_fp32) == {
        f"blocks.{layer}.ffn.experts.{e}" for layer, kept in enumerate(PRUNED_NANO) for e in kept
    }
    assert len(expert_weights(nano_fp32)) == 8
    assert nano_pruned_fp32.stat().st_size < nano_fp32.stat().st_size
    # The router keeps a row per expert: the softmax still runs over all of them.
    routers = [i for i in onnx.load(nano_pruned_fp32).graph.initializer if "router" in i.name]
    assert all(tuple(router.dims) == (4, 32) for router in routers)


def test_pruned_int8_is_the_smallest(nano_int8, nano_pruned_fp32):
    pruned_int8 = quantize_int8(nano_pruned_fp32, nano_pruned_fp32.with_name("pruned.int8.onnx"))
    assert pruned_int8.stat().st_size < nano_int8.stat().st_size
    values = holed_series(5, 128, seed=3)
    fp32, int8 = run_onnx(nano_pruned_fp32, values), run_onnx(pruned_int8, values)
    spread = np.nanstd(values, axis=1)[:, None, None]  # as tests/quantization/test_quantize.py
    assert max((np.abs(int8[n] - fp32[n]) / spread).max() for n in FORECASTS) < 0.05


@pytest.fixture
def reuse_pruned_export(nano_pruned_fp32, monkeypatch):
    """Stand in for the slow export with the session's pruned nano export (any model pruned to
    3 experts per layer has its interface); records the kept experts it was asked to export."""
    exported = []

    def export(model, path):
        exported.append(model.kept_experts)
        return Path(shutil.copyfile(nano_pruned_fp32, path))

    monkeypatch.setattr(writer, "export_onnx", export)
    return exported


def test_bundle_manifest_lists_the_kept_experts(nano_pruned, reuse_pruned_export, tmp_path):
    key = writer.load_private_key(writer.DEV_PRIVATE_KEY)
    out = writer.build_bundle(nano_pruned, tmp_path / "bundle", key)
    manifest = load_bundle(out, [DEV_PUBLIC_KEY]).manifest
    assert manifest.experts_per_layer == PRUNED_NANO
    assert manifest.training["params"] == nano_pruned.parameter_counts()


@pytest.fixture
def site_csv(tmp_path):
    rows = site_series(4)
    frame = pd.DataFrame({f"sensor{i}": row for i, row in enumerate(rows)})
    frame.insert(0, "timestamp", pd.date_range("2024-01-01", periods=len(rows[0]), freq="h"))
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    return path


def test_export_command_prunes_on_the_calibration_data(
    nano, site_csv, reuse_pruned_export, tmp_path, capsys
):
    checkpoint = save_checkpoint(nano, tmp_path / "ckpt")
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--dev-key"]
    assert main([*argv, "--calibration", str(site_csv), "--keep-experts", "3"]) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed
    assert "kept experts per layer" in printed
    manifest = load_bundle(out, [DEV_PUBLIC_KEY]).manifest
    assert manifest.experts_per_layer == reuse_pruned_export[0]
    assert all(len(kept) == 3 for kept in manifest.experts_per_layer)
    assert manifest.training["pruning"]["chosen_keep"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--keep-experts", "3"], "--keep-experts needs --calibration"),
        (["--calibration", "missing.csv"], "no such file or directory"),
        (["--calibration", "SITE", "--keep-experts", "9"], "keep must be in"),
    ],
)
def test_export_command_pruning_errors_are_clear(nano, site_csv, tmp_path, capsys, flags, message):
    checkpoint = save_checkpoint(nano, tmp_path / "ckpt")
    flags = [str(site_csv) if flag == "SITE" else flag for flag in flags]
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"), "--dev-key"]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
