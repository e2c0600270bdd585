"""int8: smaller, close to fp32 on the series' own scale, router/embedding/heads in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from moecast.model.config import preset
from moecast.model.network import MoecastModel
from moecast.quantization.export import BundleGraph, export_onnx
from moecast.quantization.quantize import KEEP_FLOAT, float_nodes, gemms_to_matmuls, quantize_int8

from tests.quantization.helpers import holed_series, run_onnx

FORECASTS = ("h1", "h8", "h32", "h64")
# Stated against each series' standard deviation: quantization error scales with the series,
# so an absolute bound would be meaningless. Measured on this nano model: max 1.0 %.
INT8_TOLERANCE = 0.05


def test_int8_is_smaller(nano_fp32, nano_int8):
    assert nano_int8.stat().st_size < 0.75 * nano_fp32.stat().st_size


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_int8_stays_close_to_fp32_relative_to_the_series_scale(nano_fp32, nano_int8, batch):
    values = holed_series(batch, 128, seed=10 + batch)
    fp32, int8 = run_onnx(nano_fp32, values), run_onnx(nano_int8, values)
    spread = np.nanstd(values, axis=1)[:, None, None]
    for name in FORECASTS:
        relative = np.abs(int8[name] - fp32[name]) / spread
        assert relative.max() < INT8_TOLERANCE, (name, relative.max())
    np.testing.assert_allclose(int8["expert_load"].sum(1), fp32["expert_load"].sum(1), rtol=1e-5)


def test_router_embedding_and_heads_stay_float(nano_int8):
    nodes = onnx.load(nano_int8).graph.node
    float_matmuls = {n.name for n in nodes if n.op_type == "MatMul"}
    for module, pattern in KEEP_FLOAT.items():
        if module == "gate":
            continue  # nano has none: a gated model's (test_combine_export)
        assert any(pattern.search(name) for name in float_matmuls), module
    quantized = [n.name for n in nodes if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert any("experts" in name for name in quantized)
    assert not any(pattern.search(name) for name in quantized for pattern in KEEP_FLOAT.values())


def test_gemm_rewrite_changes_no_output(nano_fp32, tmp_path):
    proto = onnx.load(nano_fp32)
    gemms_to_matmuls(proto)
    assert not any(n.op_type == "Gemm" for n in proto.graph.node)
    rewritten = tmp_path / "matmul.onnx"
    onnx.save(proto, rewritten)
    values = holed_series(4, 128)
    before, after = run_onnx(nano_fp32, values), run_onnx(rewritten, values)
    for name in FORECASTS:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)


def test_float_nodes_refuses_a_graph_without_module_names(nano_fp32):
    proto = onnx.load(nano_fp32)
    gemms_to_matmuls(proto)
    for i, node in enumerate(proto.graph.node):
        node.name = f"node_{i}"
    with pytest.raises(ValueError, match="no MatMul node of the embedding"):
        float_nodes(proto)


def test_the_dense_twin_exports_and_quantizes(tmp_path):
    torch.manual_seed(0)
    dense = MoecastModel(preset("nano", n_experts=1, top_k=1)).eval()
    fp32 = export_onnx(dense, tmp_path / "dense.onnx")
    int8 = quantize_int8(fp32, tmp_path / "dense.int8.onnx")
    values = holed_series(3, 128)
    with torch.no_grad():
        want = BundleGraph(dense)(torch.from_numpy(values))
    got, quantized = run_onnx(fp32, values), run_onnx(int8, values)
    for name, expected in zip(FORECASTS, want, strict=False):
        assert np.abs(got[name] - expected.numpy()).max() < 1e-4
        assert np.isfinite(quantized[name]).all()
    assert got["expert_load"].shape == (2, 1)
