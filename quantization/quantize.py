"""fp32 `model.onnx` -> int8, with ONNX Runtime's dynamic quantization.

Weights become 8-bit (unsigned, per output channel); activations are quantized on the fly, so
no calibration data is needed. The router, the input embedding and the 1- and 8-step heads stay
in float: the router's top-k choice flips on small errors (a token then runs through a
different expert), the embedding sees the raw normalised values with their gaps, and the short
heads set the outputs alerts react to first; together they are a small share of the weights.
The 32- and 64-step heads hold 70 % of the head weights and are quantized: keeping them float
as well made the bundle 9 % larger for no gain (MASE change +1.97 % against +1.95 %, shipped
`edge`, u8 weights).

Earlier measurements on a partially trained `edge` (ONNX Runtime 1.32, x86): weight-only 8-bit
MatMulNBits was about 4x closer to fp32 at the 99th percentile for a similar size but 2-3x
slower than fp32 at batch 1; keeping the first and last layers in float halved the error but
doubled the size. benchmarks/bundle.py measures the current bundle.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

# Node names as `quantization.export.name_weight_nodes` writes them (`<module>/<op>`).
KEEP_FLOAT = {
    "embedding": re.compile(r"^embed\."),
    "router": re.compile(r"\.ffn\.router/"),
    "heads": re.compile(r"^heads\.(1|8)[./]"),
    # The combination's learned weights: a few thousand parameters whose logits are
    # exponentiated, where int8 would buy nothing and could tip a choice.
    "gate": re.compile(r"^gate\."),
}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Write the int8 version of the fp32 model at `fp32_path` to `int8_path`."""
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="moecast-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference cannot follow the MoE dispatch (NonZero feeds tensors of
        # unknown rank); ONNX shape inference and the graph optimisation still run.
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
    gemms_to_matmuls(model)
    quantize_dynamic(
        model,
        int8_path,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        # Unsigned weights. With signed ones, x86 CPUs without VNNI (AVX2 only, as on many
        # gateways) multiply u8 activations by s8 weights with VPMADDUBSW, whose int16 pair sums
        # saturate: the same bundle then forecasts differently from CPU to CPU and fails its
        # golden check. u8 x u8 widens to 16 bits first, so every CPU computes the same exact
        # integer sums. Measured on the shipped `edge` on an AVX2-only EPYC (MASE change at
        # horizon 32 against PyTorch): s8 +10.2 %, s8 with 7-bit weights (reduce_range) +3.0 %,
        # u8 +2.0 %, at the same size and within 10 % of the same batch-1 latency.
        weight_type=QuantType.QUInt8,
        nodes_to_exclude=float_nodes(model),
    )
    return int8_path


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMuls of the modules in KEEP_FLOAT. Fails if one is missing (but for the router of
    a dense model and the gate of a model without one, which have none), since a silent miss
    would quantize it."""
    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    sparse = any(".ffn.experts." in name for name in names)
    kept = []
    for module, pattern in KEEP_FLOAT.items():
        matches = [name for name in names if pattern.search(name)]
        optional = module == "gate" or (module == "router" and not sparse)
        if not matches and not optional:
            raise ValueError(
                f"no MatMul node of the {module} in the model: node names must follow "
                "quantization.export.name_weight_nodes"
            )
        kept += matches
    return kept


def gemms_to_matmuls(model: onnx.ModelProto) -> None:
    """Rewrite `Gemm(A, W, transB=1)` with a constant W as `MatMul(A, W.T)` (+ `Add(C)`).

    The exporter emits Gemm for linear layers on 2-D inputs, which is every feed-forward
    layer (the MoE flattens tokens), and ONNX Runtime's dynamic quantization handles MatMul
    only; the experts would otherwise stay in float.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    nodes: list[onnx.NodeProto] = []
    reshaped: set[str] = set()
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        # A weight shared with another node cannot be transposed in place.
        if weight is None or uses[weight.name] > 1 or not plain or attrs.get("transA", 0):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            transposed = np.ascontiguousarray(numpy_helper.to_array(weight).T)
            weight.CopyFrom(numpy_helper.from_array(transposed, weight.name))
            reshaped.add(weight.name)
        product = node.output[0] if len(node.input) < 3 else f"{node.name}/product"
        nodes.append(onnx.helper.make_node("MatMul", node.input[:2], [product], name=node.name))
        if len(node.input) == 3:
            nodes.append(
                onnx.helper.make_node(
                    "Add", [product, node.input[2]], node.output, name=f"{node.name}/bias"
                )
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Shape inference recorded the weights' old shapes; stale entries would contradict it.
    stale = [v for v in model.graph.value_info if v.name in reshaped]
    for info in stale:
        model.graph.value_info.remove(info)
