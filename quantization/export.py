"""PyTorch model -> the bundle's `model.onnx`, with the dynamo exporter.

The graph takes what an agent has, `values` float32 `[batch, context_length]` on the raw scale
with NaN for missing points (short histories left-padded with NaN), and does the rest inside:
the z-score over observed points, the mask, patching, the network, the heads and the
de-normalisation. Outputs: `h1`, `h8`, `h32`, `h64` `[batch, horizon, n_quantiles]` on the raw
scale (NaN rows for inputs with no observed point) and `expert_load` `[n_layers, n_experts]`,
the routing mass the batch gave each expert (it feeds per-site pruning). The batch dimension is
dynamic, and so is the number of tokens each expert receives: the MoE dispatch exports as
NonZero + gather + scatter-add per expert, never as a capacity fixed by the example batch. A
model pruned for a site exports its kept experts only, so the file shrinks.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from moecast.model.network import MoecastModel
from torch import Tensor, nn

from moecast.bundle.format import EXPERT_LOAD_NAME, INPUT_NAME, output_name

# Where the dynamo exporter records, on each ONNX node, the module path it was traced in.
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_WEIGHT_OPS = ("MatMul", "Gemm")


class BundleGraph(nn.Module):
    """What `model.onnx` computes: `MoecastModel.predict` plus each layer's routing mass.

    `expert_load` has one column per kept expert of each layer, in index order (the manifest
    lists the counts), zero-padded to the widest layer; pruned experts are not in the graph.
    """

    def __init__(self, model: MoecastModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, values: Tensor) -> tuple[Tensor, ...]:
        loads: list[Tensor] = []
        width = max(len(kept) for kept in self.model.kept_experts)

        def record_load(module: nn.Module, _args: object, output: tuple) -> None:
            load = output[1].load[list(module.kept_experts)]
            loads.append(F.pad(load, (0, width - load.numel())))

        # predict() stays the one definition of the raw-scale output (de-normalisation, NaN
        # rows); the routing mass is read off each feed-forward layer as it runs.
        hooks = [block.ffn.register_forward_hook(record_load) for block in self.model.blocks]
        try:
            forecasts = self.model.predict(values)
        finally:
            for hook in hooks:
                hook.remove()
        return (*forecasts.values(), torch.stack(loads))


def output_names(model: MoecastModel) -> list[str]:
    return [*(output_name(h) for h in model.config.horizons), EXPERT_LOAD_NAME]


def export_onnx(model: MoecastModel, path: str | Path) -> Path:
    """Write `model` (put in eval mode) as a single-file ONNX model at `path`."""
    path = Path(path)
    graph = BundleGraph(model).eval()
    # Batch 2, not 1: torch.export specialises sizes 0 and 1, which would fix the batch size.
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, model.config.context_length, generator=generator)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names(model),
            dynamic_shapes={"values": {0: torch.export.Dim("batch", min=1)}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    name_weight_nodes(proto)
    strip_trace_metadata(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


def name_weight_nodes(proto: onnx.ModelProto) -> None:
    """Name each MatMul/Gemm after the module it computes, e.g. `blocks.0.ffn.router/Gemm`.

    The exporter's own names (`node_linear_4`) say nothing; module names survive ONNX
    Runtime's pre-quantization pass (the metadata does not), so `quantize` can keep chosen
    modules in float by name.
    """
    taken: Counter[str] = Counter()
    for node in proto.graph.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == _NAME_SCOPES), None)
        if scopes is None:
            continue
        # The last scope is the traced call (`linear_4`); the one before it is the module.
        module = ast.literal_eval(scopes)[-2].removeprefix("model.")
        base = f"{module}/{node.op_type}"
        node.name = base if not taken[base] else f"{base}_{taken[base]}"
        taken[base] += 1


def strip_trace_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node trace records (stack traces with local paths, FX nodes):
    a tenth of an `edge` model's bytes, useless on a device."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
