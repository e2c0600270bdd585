from __future__ import annotations

import pytest
from moecast.model.config import PRESETS, ModelConfig, preset
from moecast.model.network import MoecastModel


def counts(name: str) -> dict[str, int]:
    return MoecastModel(PRESETS[name]).parameter_counts()


def test_nano_is_under_100k_parameters():
    assert counts("nano")["total"] < 100_000


def test_edge_is_a_few_million_total_and_under_1_5m_active():
    edge = counts("edge")
    assert 2_000_000 < edge["total"] < 5_000_000
    assert edge["active"] < 1_500_000
    assert edge["active"] < edge["total"] / 2


@pytest.mark.parametrize(
    ("twin", "key"), [("edge-dense-active", "active"), ("edge-dense-total", "total")]
)
def test_dense_twins_match_the_moe_parameter_budget(twin: str, key: str):
    dense = counts(twin)
    assert PRESETS[twin].n_experts == 1
    assert dense["total"] == dense["active"]
    # Only the router and shared-expert gate (a few hundred weights per layer) differ.
    assert abs(dense["total"] - counts("edge")[key]) / counts("edge")[key] < 0.01


def test_config_json_round_trip():
    config = preset("edge", patch_len=1)
    assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context_length": 30, "patch_len": 8}, "multiple of patch_len"),
        ({"top_k": 9}, "top_k"),
        ({"quantiles": (0.5, 0.1)}, "quantiles"),
        ({"quantiles": (0.0, 0.5)}, "quantiles"),
        ({"horizons": (8, 32)}, "include 1"),
        ({"n_heads": 5}, "n_heads"),
        ({"combine_cycles": -1}, "combine_cycles"),
        ({"combine_cycles_guard": -2.0}, "combine_cycles_guard"),
        ({"combine_damping": (0.95, 1.5)}, "combine_damping"),
        ({"combine_trends": (0.05, 1.0)}, "combine_trends"),
        ({"combine_trends": (0.0,)}, "combine_trends"),
        ({"combine_power": -1.0}, "combine_power"),
        ({"combine_power": (12.0, 4.0)}, "one power per horizon"),
        ({"combine_power": (12.0, 12.0, -4.0, 4.0)}, "combine_power"),
    ],
)
def test_invalid_configs_are_rejected_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("edge", **changes)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="edge-dense-total"):
        preset("large")


def test_a_power_per_head_survives_json_and_reads_per_head():
    config = preset("edge", combine_power=[12, 12, 4, 4])
    assert config.combine_power == (12.0, 12.0, 4.0, 4.0)
    assert ModelConfig.from_json(config.to_json()) == config
    assert preset("edge", combine_power=6).head_powers == (6.0,) * len(config.horizons)
