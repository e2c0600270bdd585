"""The exported graph computes what `MoecastModel.predict` computes, at any batch size."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from moecast.quantization.export import BundleGraph
from moecast.quantization.quantize import quantize_int8
from onnx import numpy_helper

from tests.quantization.helpers import holed_series, run_onnx

FORECASTS = ("h1", "h8", "h32", "h64")


def reference(model, values: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = BundleGraph(model)(torch.from_numpy(values))
    return dict(zip([*FORECASTS, "expert_load"], (o.numpy() for o in outputs), strict=True))


def observed_tokens(values: np.ndarray, patch_len: int) -> int:
    """Patches with at least one observed point: the tokens the routing statistics count."""
    patches = ~np.isnan(values).reshape(values.shape[0], -1, patch_len)
    return int(patches.any(-1).sum())


def test_interface_has_a_dynamic_batch(nano_fp32):
    graph = onnx.load(nano_fp32).graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert shapes == {
        "values": ["batch", 128],
        "h1": ["batch", 1, 9],
        "h8": ["batch", 8, 9],
        "h32": ["batch", 32, 9],
        "h64": ["batch", 64, 9],
        "expert_load": [2, 4],
    }


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_pytorch(nano, nano_fp32, batch):
    # Static-shape trap: a graph specialised to the example batch fails (or silently drops
    # tokens) at other sizes; each size here differs from the example's 2.
    values = holed_series(batch, nano.config.context_length, seed=batch)
    got, want = run_onnx(nano_fp32, values), reference(nano, values)
    for name in FORECASTS:
        assert got[name].shape == (batch, int(name[1:]), 9)
        assert np.abs(got[name] - want[name]).max() < 1e-4, name
    assert np.isfinite(got["h64"]).all()


def test_all_nan_row_gives_nan_and_leaves_the_others_alone(nano, nano_fp32):
    values = holed_series(3, nano.config.context_length)
    values[1] = np.nan
    got, want = run_onnx(nano_fp32, values), reference(nano, values)
    for name in FORECASTS:
        assert np.isnan(got[name][1]).all()
        assert np.isfinite(got[name][[0, 2]]).all()
        assert np.abs(got[name][[0, 2]] - want[name][[0, 2]]).max() < 1e-4


def test_expert_load_sums_per_layer_to_the_observed_tokens(nano, nano_fp32):
    values = holed_series(7, nano.config.context_length, seed=3)
    values[4] = np.nan  # contributes no token at all
    load = run_onnx(nano_fp32, values)["expert_load"]
    assert load.shape == (nano.config.n_layers, nano.config.n_experts)
    tokens = observed_tokens(values, nano.config.patch_len)
    np.testing.assert_allclose(load.sum(1), tokens, rtol=1e-5)
    np.testing.assert_allclose(load, reference(nano, values)["expert_load"], rtol=1e-4)


def test_an_expert_that_receives_no_token_runs_in_fp32_and_int8(nano, nano_fp32, tmp_path):
    # A zero router gives every expert probability 1/n_experts; ONNX TopK breaks the tie
    # towards the lowest indices, so the last experts get no token at all. With identical
    # experts, the outputs do not depend on which experts won the tie.
    proto = onnx.load(nano_fp32)
    initializers = {i.name: i for i in proto.graph.initializer}
    for name, init in initializers.items():
        array = numpy_helper.to_array(init)
        if name.endswith("ffn.router.weight"):
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(array), name))
        elif match := re.fullmatch(r"(.*\.experts\.)\d+(\..*)", name):
            first = numpy_helper.to_array(initializers[f"{match[1]}0{match[2]}"])
            init.CopyFrom(numpy_helper.from_array(first, name))
    fp32 = tmp_path / "tied.onnx"
    onnx.save(proto, fp32)
    int8 = quantize_int8(fp32, tmp_path / "tied.int8.onnx")

    twin = type(nano)(nano.config).eval()
    twin.load_state_dict(nano.state_dict())
    with torch.no_grad():
        for block in twin.blocks:
            block.ffn.router.weight.zero_()
            for expert in block.ffn.experts[1:]:
                expert.load_state_dict(block.ffn.experts[0].state_dict())

    values = holed_series(5, nano.config.context_length, seed=5)
    want = reference(twin, values)
    got = run_onnx(fp32, values)
    for name in FORECASTS:
        assert np.abs(got[name] - want[name]).max() < 1e-4
    quantized = run_onnx(int8, values)
    assert all(np.isfinite(quantized[name]).all() for name in FORECASTS)
    even = observed_tokens(values, nano.config.patch_len) / nano.config.n_experts
    np.testing.assert_allclose(quantized["expert_load"], even, rtol=1e-5)


def test_weight_nodes_are_named_after_their_modules(nano_fp32):
    names = {n.name for n in onnx.load(nano_fp32).graph.node if n.op_type in ("MatMul", "Gemm")}
    assert {"embed.value/MatMul", "blocks.1.ffn.router/Gemm", "heads.64.proj/MatMul"} <= names
    assert "blocks.0.ffn.experts.3.down/Gemm" in names


def test_no_trace_metadata_is_shipped(nano_fp32):
    proto = onnx.load(nano_fp32)
    assert not any(node.metadata_props for node in proto.graph.node)
    assert b"network.py" not in nano_fp32.read_bytes()  # no stack traces


def test_a_held_sensor_gets_its_last_value_exactly_in_the_graph(nano, nano_fp32):
    values = holed_series(2, nano.config.context_length)
    values[0] = np.where(np.arange(values.shape[1]) < 20, 21.5, 22.0)  # held since point 20
    values[0, -3] = np.nan
    got, want = run_onnx(nano_fp32, values), reference(nano, values)
    median = nano.config.median_index
    for name in FORECASTS:
        np.testing.assert_array_equal(got[name][0, :, median], values[0, -1])
        assert np.abs(got[name] - want[name]).max() < 1e-4
