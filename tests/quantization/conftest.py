"""Shared fixtures: the nano model is exported (slow: ~10 s) and quantized once per session."""

from __future__ import annotations

import importlib.util

import pytest

# An agent-only install has neither torch nor the exporter: these tests are not collected.
if any(importlib.util.find_spec(m) is None for m in ("torch", "onnx", "onnxscript")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def nano():
    import torch
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(0)
    return MoecastModel(preset("nano")).eval()


@pytest.fixture(scope="session")
def nano_fp32(nano, tmp_path_factory):
    from moecast.quantization.export import export_onnx

    return export_onnx(nano, tmp_path_factory.mktemp("export") / "nano.fp32.onnx")


@pytest.fixture(scope="session")
def nano_int8(nano_fp32):
    from moecast.quantization.quantize import quantize_int8

    return quantize_int8(nano_fp32, nano_fp32.with_name("nano.int8.onnx"))


# Three of nano's four experts per layer, a different one dropped in each layer.
PRUNED_NANO = [[0, 2, 3], [1, 2, 3]]


@pytest.fixture(scope="session")
def nano_pruned(nano):
    import copy

    model = copy.deepcopy(nano)
    model.prune_experts(PRUNED_NANO)
    return model


@pytest.fixture(scope="session")
def nano_pruned_fp32(nano_pruned, nano_fp32):
    from moecast.quantization.export import export_onnx

    return export_onnx(nano_pruned, nano_fp32.with_name("nano.pruned.fp32.onnx"))


def pytest_configure(config: pytest.Config) -> None:
    # Raised inside torch.export by torch's own pytree code; nothing this project can change.
    config.addinivalue_line(
        "filterwarnings", "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"
    )
