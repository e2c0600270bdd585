"""The skill-weighted combination (`network.skill_combine`, with drift, Holt's trend, shifted
seasonal, seasonal mean and smoothing candidates and the guard) exports: ONNX Runtime computes
what PyTorch does, at any batch size, with gaps, short histories, seasonal rows (some with a
level step) and trending rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.quantization.helpers import holed_series, run_onnx

FORECASTS = ("h1", "h8", "h32", "h64")


@pytest.fixture(scope="module")
def combining(nano):
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    # Drift over 8 and 32 points: nano's context is 128, so both are defined at most origins.
    config = preset(
        "nano",
        skill_combine=True,
        combine_drifts=(8, 32),
        combine_trends=(0.1,),  # Holt's trend, in the drift family
        combine_shifted=True,
        combine_guard=2.0,
        combine_smoothing=(0.05, 0.2),
        combine_damping=(0.95, 1.0),  # both: one smoothing family of four members
        combine_cycles=3,
        combine_cycles_guard=2.0,
        combine_power=(12.0, 12.0, 4.0, 4.0),  # one per head
    )
    model = MoecastModel(config).eval()
    model.load_state_dict(nano.state_dict())
    return model


@pytest.fixture(scope="module")
def combining_fp32(combining, tmp_path_factory):
    from moecast.quantization.export import export_onnx

    return export_onnx(combining, tmp_path_factory.mktemp("combine") / "nano.combine.onnx")


def inputs(batch: int, length: int, seed: int) -> np.ndarray:
    """holed_series plus, in every other row, a clean cycle of 12 points with 30 % dropped
    (in every fourth, a level step of 5 near the end), and in every fourth (from the second)
    a noisy trend."""
    values = holed_series(batch, length, seed=seed)
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    for row in values[::2]:
        row[:] = 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=length)
        row[rng.random(length) < 0.3] = np.nan
    for row in values[::4]:
        row[-10:] += 5
    for row in values[1::4]:
        row[:] = 2 + 0.05 * t + 0.1 * rng.normal(size=length)
    return values


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_onnx_matches_pytorch(combining, combining_fp32, batch):
    values = inputs(batch, combining.config.context_length, seed=batch)
    got = run_onnx(combining_fp32, values)
    with torch.no_grad():
        want = combining.predict(torch.from_numpy(values))
    for name in FORECASTS:
        h = int(name[1:])
        assert got[name].shape == (batch, h, 9)
        assert np.abs(got[name] - want[h].numpy()).max() < 1e-3, name


def test_the_combination_adds_little_to_the_file(nano_fp32, combining_fp32):
    # Index tables built from constants would be folded into the graph as int64 tensors
    # (hundreds of kB at the real context). Each candidate family's nodes add a few kB:
    # with all of them here, 67 kB (Holt's trend 4 kB of it).
    assert combining_fp32.stat().st_size < nano_fp32.stat().st_size + 80_000


def test_the_short_heads_medians_stay_float(combining_fp32):
    # The combination reads each head's median rows on their own (`heads.<h>/MatMul`): the
    # 1- and 8-step heads' must stay float like their full projections.
    import onnx
    from moecast.quantization.quantize import float_nodes

    kept = float_nodes(onnx.load(combining_fp32))
    assert {"heads.1/MatMul", "heads.8/MatMul"} <= set(kept)
    assert not any(name.startswith(("heads.32", "heads.64")) for name in kept)


@pytest.fixture(scope="module")
def gated(combining):
    """`combining` with a learned gate (`network.SkillGate`) far from the fixed rule."""
    from moecast.model.network import MoecastModel

    model = MoecastModel(combining.config.replace(combine_gate=True)).eval()
    model.load_state_dict(combining.state_dict(), strict=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.gate.log_power.copy_(torch.randn(model.gate.log_power.shape, generator=g))
        model.gate.out.bias.copy_(torch.randn(model.gate.out.bias.shape, generator=g))
        model.gate.out.weight.copy_(0.3 * torch.randn(model.gate.out.weight.shape, generator=g))
    return model


@pytest.mark.parametrize("batch", [1, 9])
def test_a_gated_model_exports_and_its_int8_gate_stays_float(gated, tmp_path, batch):
    import onnx
    from moecast.quantization.export import export_onnx
    from moecast.quantization.quantize import quantize_int8

    fp32 = export_onnx(gated, tmp_path / "gated.onnx")
    values = inputs(batch, gated.config.context_length, seed=10 + batch)
    with torch.no_grad():
        want = gated.predict(torch.from_numpy(values))
        ungated = fixed_rule(gated).predict(torch.from_numpy(values))
    got = run_onnx(fp32, values)
    for name in FORECASTS:
        h = int(name[1:])
        assert np.abs(got[name] - want[h].numpy()).max() < 1e-3, name
    # The gate changes the forecast (else this test could not fail).
    assert max(float((want[h] - ungated[h]).abs().max()) for h in want) > 1e-2
    int8 = quantize_int8(fp32, tmp_path / "gated.int8.onnx")
    gate_ops = {n.op_type for n in onnx.load(int8).graph.node if n.name.startswith("gate.")}
    assert "MatMul" in gate_ops, gate_ops
    assert "MatMulInteger" not in gate_ops, gate_ops
    assert np.isfinite(run_onnx(int8, values)["h64"]).all()


def fixed_rule(model):
    """The same weights with the fixed rule."""
    from moecast.model.network import MoecastModel

    plain = MoecastModel(model.config.replace(combine_gate=False)).eval()
    state = model.state_dict()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("gate.")})
    return plain
