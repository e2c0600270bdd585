"""Routing statistics add up, agree with the model's own record, and never change outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from moecast.quantization.routing import collect_routing
from moecast.quantization.site_data import context_windows, split_site

from tests.quantization.helpers import holed_series, site_series


def observed_tokens(windows: np.ndarray, patch_len: int) -> int:
    return int(np.isfinite(windows).reshape(len(windows), -1, patch_len).any(-1).sum())


def test_token_counts_and_gate_mass_sum_per_layer(nano):
    windows = holed_series(9, nano.config.context_length, seed=1)
    windows[4] = np.nan  # no observed token: left out
    stats = collect_routing(nano, windows, batch_size=4)
    tokens = observed_tokens(windows, nano.config.patch_len)
    assert stats.observed_tokens == tokens
    np.testing.assert_allclose(stats.tokens.sum(1), nano.config.top_k * tokens)
    np.testing.assert_allclose(stats.gate_mass.sum(1), tokens, rtol=1e-5)
    np.testing.assert_allclose(stats.token_share.sum(1), 1.0)
    assert stats.window_tokens.shape == (8, nano.config.n_layers, nano.config.n_experts)
    np.testing.assert_allclose(stats.window_token_share.sum(-1), 1.0)


def test_statistics_match_the_models_own_routing_record(nano):
    windows = holed_series(6, nano.config.context_length, seed=2)
    stats = collect_routing(nano, windows)
    with torch.no_grad():
        out = nano(torch.from_numpy(windows))
    np.testing.assert_array_equal(stats.tokens, out.expert_tokens.numpy())
    np.testing.assert_allclose(stats.gate_mass, out.expert_load.numpy(), rtol=1e-5)


def test_hooks_leave_the_forecasts_unchanged_and_are_removed(nano):
    values = torch.from_numpy(holed_series(3, nano.config.context_length))
    before = nano.predict(values)
    collect_routing(nano, values.numpy())
    assert not any(block.ffn._forward_hooks for block in nano.blocks)
    for h, forecast in nano.predict(values).items():
        torch.testing.assert_close(forecast, before[h], rtol=0, atol=0, equal_nan=True)


def test_saliency_is_nan_only_for_experts_no_token_selected(nano_pruned):
    stats = collect_routing(nano_pruned, site_series(2))
    pruned = [(0, 1), (1, 0)]  # (layer, expert) outside PRUNED_NANO
    for layer, expert in pruned:
        assert stats.tokens[layer, expert] == 0
        assert np.isnan(stats.saliency[layer, expert])
        assert stats.gate_mass[layer, expert] > 0  # the softmax still gives it mass
    selected = stats.tokens > 0
    assert (stats.saliency[selected] > 0).all()
    document = json.loads(json.dumps(stats.to_dict()))
    assert document["saliency"][0][1] is None
    assert document["kept_experts"] == [[0, 2, 3], [1, 2, 3]]


def test_long_series_become_newest_first_windows_and_short_ones_are_padded():
    long, short = np.arange(300.0), np.arange(50.0)
    windows = context_windows([long, short], 128, max_per_series=2)
    assert windows.shape == (3, 128)
    np.testing.assert_array_equal(windows[0], long[-128:])
    np.testing.assert_array_equal(windows[1], long[-256:-128])
    assert np.isnan(windows[2, :78]).all()
    np.testing.assert_array_equal(windows[2, 78:], short)


def test_held_out_targets_come_after_the_calibration_part():
    series = [np.arange(400.0) + 1.0]
    split = split_site(series, 64, horizon=8, holdout_fraction=0.25, windows_per_series=3)
    assert np.nanmax(split.calibration) <= 300.0  # the first 300 points
    assert split.targets.min() >= 301.0
    assert split.contexts.shape == (3, 64)


def test_bad_input_is_a_clear_error(nano, nano_dense_twin):
    with pytest.raises(ValueError, match="dense twin"):
        collect_routing(nano_dense_twin, [np.ones(10)])
    with pytest.raises(ValueError, match="no window has an observed value"):
        collect_routing(nano, [np.full(10, np.nan)])
    with pytest.raises(ValueError, match="infinite"):
        collect_routing(nano, [np.array([1.0, np.inf])])


@pytest.fixture
def nano_dense_twin():
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    return MoecastModel(preset("nano", n_experts=1, top_k=1)).eval()
