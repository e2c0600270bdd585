"""Pruning: a pruned expert never runs, the subset search finds the best subset, auto-K keeps
within its tolerance, and checkpoints remember what was kept."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from moecast.model.checkpoint import CONFIG_FILE, KEPT_EXPERTS_KEY, load_checkpoint, save_checkpoint
from moecast.model.config import preset
from moecast.model.network import MoEFeedForward
from moecast.quantization.prune import choose_experts, prune_for_site

from tests.quantization.conftest import PRUNED_NANO
from tests.quantization.helpers import holed_series, site_series


def test_a_pruned_expert_is_never_routed_to(nano_pruned):
    calls = {}

    def count(name):
        def hook(_module, args, _output):
            calls[name] = calls.get(name, 0) + len(args[0])

        return hook

    hooks = [
        expert.register_forward_hook(count((layer, e)))
        for layer, block in enumerate(nano_pruned.blocks)
        for e, expert in enumerate(block.ffn.experts)
    ]
    try:
        with torch.no_grad():
            out = nano_pruned(torch.from_numpy(holed_series(16, 128, seed=4)))
    finally:
        for hook in hooks:
            hook.remove()
    for layer, kept in enumerate(PRUNED_NANO):
        for e in range(4):
            assert (calls.get((layer, e), 0) > 0) == (e in kept), (layer, e)
            assert (out.expert_tokens[layer, e] > 0) == (e in kept), (layer, e)
    assert (out.expert_load > 0).all()  # every expert keeps its softmax share


def test_weights_are_the_raw_softmax_probabilities_of_all_experts(nano_pruned):
    ffn = nano_pruned.blocks[0].ffn
    x = torch.randn(64, nano_pruned.config.d_model)
    with torch.no_grad():
        probs, weights, chosen = ffn.route(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(64))  # over all experts
    torch.testing.assert_close(weights, probs.gather(1, chosen))  # not renormalised
    assert not (chosen == 1).any()


@pytest.mark.parametrize(
    ("kept", "message"),
    [([0], "at least top_k"), ([0, 4], "not all in"), ([1, 1, 2], "repeat")],
)
def test_pruning_refuses_impossible_sets(nano, kept, message):
    with pytest.raises(ValueError, match=message):
        copy.deepcopy(nano).blocks[0].ffn.prune(kept)


def test_checkpoints_keep_the_pruning_and_old_ones_still_load(nano, nano_pruned, tmp_path):
    save_checkpoint(nano, tmp_path / "plain")
    assert KEPT_EXPERTS_KEY not in json.loads((tmp_path / "plain" / CONFIG_FILE).read_text())
    assert not load_checkpoint(tmp_path / "plain").is_pruned
    loaded = load_checkpoint(save_checkpoint(nano_pruned, tmp_path / "pruned"))
    assert loaded.kept_experts == PRUNED_NANO
    values = torch.from_numpy(holed_series(4, 128))
    for h, forecast in loaded.predict(values).items():
        torch.testing.assert_close(forecast, nano_pruned.predict(values)[h], equal_nan=True)


def test_parameter_counts_leave_out_pruned_experts(nano, nano_pruned):
    per_expert = sum(p.numel() for p in nano.blocks[0].ffn.experts[0].parameters())
    full, pruned = nano.parameter_counts(), nano_pruned.parameter_counts()
    assert pruned["total"] == full["total"] - 2 * per_expert
    assert pruned["active"] == full["active"]


@pytest.fixture
def five_experts() -> MoEFeedForward:
    """Router rows v, -v, w, -w, 0: for any input the top two logits are |v.x| and |w.x|, both
    above expert 4's zero, so expert 4 never runs and dropping it costs nothing."""
    torch.manual_seed(0)
    ffn = MoEFeedForward(preset("nano", n_experts=5, top_k=2)).eval()
    v, w = torch.randn(2, ffn.router.in_features)
    with torch.no_grad():
        ffn.router.weight.copy_(torch.stack([v, -v, w, -w, torch.zeros_like(v)]))
        for expert in ffn.experts:  # random, not the tiny init: errors must tell subsets apart
            for p in expert.parameters():
                p.normal_()
    return ffn


def direct_error(ffn: MoEFeedForward, x: torch.Tensor, subset) -> float:
    """Reconstruction error computed the slow, obvious way: run the whole layer pruned."""
    observed = torch.ones(1, len(x), dtype=torch.bool)
    with torch.no_grad():
        reference = ffn(x[None], observed)[0]
        ffn.prune(subset)
        pruned = ffn(x[None], observed)[0]
        ffn.prune(range(ffn.n_experts))
    return float((pruned - reference).square().sum() / reference.square().sum())


@pytest.mark.parametrize("keep", [2, 3, 4])
def test_subset_search_picks_the_best_subset(five_experts, keep):
    x = torch.randn(200, five_experts.router.in_features)
    choice = choose_experts(five_experts, x, keep)
    errors = {s: direct_error(five_experts, x, s) for s in itertools.combinations(range(5), keep)}
    assert choice.searched == "subsets"
    assert tuple(choice.kept) == min(errors, key=errors.get)
    assert choice.reconstruction_error == pytest.approx(min(errors.values()), rel=1e-4, abs=1e-7)
    assert five_experts.kept_experts == (0, 1, 2, 3, 4)  # left as it was found
    if keep == 4:
        assert choice.kept == [0, 1, 2, 3]
        assert choice.reconstruction_error == pytest.approx(0.0, abs=1e-7)


def test_too_many_subsets_fall_back_to_saliency(five_experts):
    x = torch.randn(200, five_experts.router.in_features)
    choice = choose_experts(five_experts, x, 4, max_subsets=1)
    assert choice.searched == "saliency"
    assert choice.kept == [0, 1, 2, 3]  # expert 4 never runs: zero saliency


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 1.0])
def test_auto_k_is_the_smallest_within_the_tolerance(nano, tolerance):
    model = copy.deepcopy(nano)
    report = prune_for_site(model, site_series(4), tolerance=tolerance)
    bound = report.baseline_mase * (1 + tolerance)
    assert [o.keep for o in report.options] == [2, 3, 4]
    assert report.chosen.mase <= bound
    assert all(o.mase > bound for o in report.options if o.keep < report.chosen.keep)
    assert model.kept_experts == report.chosen.kept_experts
    assert all(len(kept) == report.chosen.keep for kept in model.kept_experts)
    assert "<- chosen" in report.table()
    json.dumps(report.to_dict())


def test_fixed_k_prunes_to_k_and_reports_the_unpruned_baseline(nano):
    model = copy.deepcopy(nano)
    report = prune_for_site(model, site_series(4), keep=3)
    assert [o.keep for o in report.options] == [3, 4]
    assert report.chosen.keep == 3
    assert report.tolerance is None
    assert [len(kept) for kept in model.kept_experts] == [3, 3]
    assert np.isfinite(report.baseline_mase)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"keep": 1}, "keep must be in"), ({"horizon": 5}, "not one of the model's heads")],
)
def test_prune_for_site_refuses_bad_requests(nano, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_for_site(copy.deepcopy(nano), site_series(2), **kwargs)
