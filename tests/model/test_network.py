from __future__ import annotations

import math

import pytest
import torch
from moecast.model.config import ModelConfig
from moecast.model.network import MoecastModel, MoEFeedForward, monotone_quantiles, short_cumsum


def series(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    phase = torch.rand(batch, 1, generator=g) * 6.28
    return 5 * torch.sin(t / 6 + phase) + torch.randn(batch, length, generator=g) + 20


@pytest.mark.parametrize("model_name", ["nano", "nano_dense"])
def test_changing_inputs_after_t_changes_no_output_at_or_before_t(model_name, request):
    model = request.getfixturevalue(model_name)
    p = model.config.patch_len
    x = series(2, 64)
    loc, scale = torch.full((2, 1), 20.0), torch.full((2, 1), 5.0)
    t = 30  # inside patch 7 (points 28..31)
    changed = x.clone()
    changed[:, t:] = torch.randn(2, 64 - t) * 50
    before = model(x, loc=loc, scale=scale)
    after = model(changed, loc=loc, scale=scale)
    first_affected = t // p
    for h in model.config.horizons:
        a, b = before.forecasts[h], after.forecasts[h]
        torch.testing.assert_close(a[:, :first_affected], b[:, :first_affected], rtol=0, atol=1e-6)
        assert not torch.allclose(a[:, first_affected], b[:, first_affected])


@pytest.mark.parametrize(("a", "b"), [(3.0, -7.0), (0.01, 10.0), (250.0, 1000.0)])
def test_model_is_affine_equivariant(nano, a, b):
    x = series(3, 128)
    x[1, 40:60] = float("nan")
    base, moved = nano.predict(x), nano.predict(a * x + b)
    for h in nano.config.horizons:
        # Relative to the moved series' spread: float32 rounding of a*x+b is all that differs
        # (large offsets on tiny spreads are the Forecaster's job, which standardises in float64).
        err = (moved[h] - (a * base[h] + b)).abs().max() / (a * x.nan_to_num().std())
        assert err < 1e-3, (h, err)


def test_nans_anywhere_give_finite_forecasts(nano):
    x = series(4, 128)
    x[0, ::3] = float("nan")  # scattered
    x[1, 50:120] = float("nan")  # long gap
    x[2, -1] = float("nan")  # the last reading
    x[3, :127] = float("nan")  # a single observation
    for q in nano.predict(x).values():
        assert torch.isfinite(q).all()


def test_nan_left_padding_changes_nothing(nano):
    short = series(1, 40)
    padded = torch.cat([torch.full((1, 88), float("nan")), short], dim=1)
    a, b = nano.predict(short), nano.predict(padded)
    for h in nano.config.horizons:
        torch.testing.assert_close(a[h], b[h], rtol=1e-5, atol=1e-5)


def test_all_nan_row_gives_nan_without_disturbing_others(nano):
    x = series(2, 64)
    alone = nano.predict(x[:1])
    x[1] = float("nan")
    both = nano.predict(x)
    for h in nano.config.horizons:
        assert torch.isnan(both[h][1]).all()
        torch.testing.assert_close(both[h][:1], alone[h])


def test_every_head_has_its_shape_at_every_position(nano):
    cfg = nano.config
    out = nano(series(3, 64))
    assert set(out.forecasts) == set(cfg.horizons)
    for h, q in out.forecasts.items():
        assert q.shape == (3, 64 // cfg.patch_len, h, len(cfg.quantiles))
    for h, q in nano.predict(series(3, 64)).items():
        assert q.shape == (3, h, len(cfg.quantiles))


def test_quantiles_never_cross_even_with_extreme_head_weights(nano):
    with torch.no_grad():
        for head in nano.heads.values():
            head.proj.weight.normal_(std=50.0)
            head.proj.bias.normal_(std=50.0)
    for q in nano.predict(series(8, 128) * 100).values():
        assert (q.diff(dim=-1) >= 0).all()


def test_monotone_quantiles_keep_the_anchor_and_order():
    raw = torch.tensor([[3.0, -2.0, 0.5, 4.0, -1.0]])
    q = monotone_quantiles(raw, anchor=2)
    assert q[0, 2] == 0.5
    assert (q.diff() > 0).all()
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(q[0, 0], 0.5 - sp(torch.tensor(-2.0)) - sp(torch.tensor(3.0)))


@pytest.mark.parametrize("width", [1, 2, 4, 5])
def test_unrolled_short_cumsum_is_cumsum_with_its_gradient(width):
    x = torch.randn(3, 7, width, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 7, width, dtype=torch.float64)
    plain = short_cumsum(x, unrolled=False)
    unrolled = short_cumsum(x, unrolled=True)
    torch.testing.assert_close(unrolled, x.cumsum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(plain, x.cumsum(-1), rtol=0, atol=0)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), x)
    (grad_unrolled,) = torch.autograd.grad((unrolled * weights).sum(), x)
    torch.testing.assert_close(grad_unrolled, grad_plain, rtol=0, atol=1e-12)


def test_exactly_top_k_experts_run_per_token(nano):
    cfg = nano.config
    seen: list[int] = []
    hooks = [
        expert.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
        for block in nano.blocks
        for expert in block.ffn.experts
    ]
    x = series(3, 64)
    out = nano(x)
    for hook in hooks:
        hook.remove()
    n_tokens = 3 * 64 // cfg.patch_len
    assert sum(seen) == cfg.n_layers * n_tokens * cfg.top_k
    assert (out.expert_tokens.sum(-1) == n_tokens * cfg.top_k).all()
    torch.testing.assert_close(
        out.expert_load.sum(-1), torch.full((cfg.n_layers,), float(n_tokens))
    )


def test_routing_statistics_ignore_unobserved_tokens(nano):
    x = series(1, 64)
    x[0, :32] = float("nan")  # 8 fully missing patches out of 16
    out = nano(x)
    assert (out.expert_tokens.sum(-1) == 8 * nano.config.top_k).all()


def tiny_moe(n_experts: int = 4, top_k: int = 2) -> MoEFeedForward:
    config = ModelConfig(
        context_length=4,
        patch_len=1,
        d_model=4,
        n_heads=2,
        d_ff=8,
        n_experts=n_experts,
        top_k=top_k,
    )
    moe = MoEFeedForward(config)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))  # logits = inputs
    return moe


def balance_loss_for(probs: list[list[float]]) -> float:
    moe = tiny_moe()
    x = torch.tensor(probs).log()  # softmax(log p) = p
    _, routing = moe(x, torch.ones(len(probs), dtype=torch.bool))
    return routing.balance_loss.item()


def test_balance_loss_matches_the_switch_formula_by_hand():
    # Both tokens pick experts 0 and 1: f = [2, 2, 0, 0] / (T*k = 4); P = column means.
    probs = [[0.5, 0.3, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]]
    expected = 4 * (0.5 * 0.55 + 0.5 * 0.25 + 0 * 0.1 + 0 * 0.1)
    assert math.isclose(balance_loss_for(probs), expected, rel_tol=1e-5)


def test_balance_loss_is_larger_for_collapsed_than_uniform_routing():
    uniform = balance_loss_for([[0.25, 0.25, 0.25, 0.25]] * 8)
    spread = balance_loss_for(
        [[0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4], [0.4, 0.1, 0.4, 0.1], [0.1, 0.4, 0.1, 0.4]]
    )
    collapsed = balance_loss_for([[0.49, 0.49, 0.01, 0.01]] * 8)
    assert math.isclose(spread, 1.0, rel_tol=1e-5)
    assert collapsed > 1.9
    assert collapsed > uniform
    assert collapsed > spread


def test_dense_twin_has_no_router(nano_dense):
    assert not any("router" in name for name, _ in nano_dense.named_parameters())
    out = nano_dense(series(2, 64))
    assert out.expert_load.shape == (nano_dense.config.n_layers, 1)
    assert out.balance_loss.item() == 0.0


def test_wrong_length_is_a_clear_error(nano):
    with pytest.raises(ValueError, match="multiple of 4"):
        nano(torch.zeros(1, 10))


@pytest.mark.parametrize("shape", [(64,), (2, 3, 64)])
def test_wrong_rank_is_a_clear_error(nano, shape):
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        nano(torch.zeros(shape))


def test_patch_len_one_is_pointwise(nano):
    model = MoecastModel(nano.config.replace(patch_len=1, context_length=32))
    out = model(series(2, 32))
    assert out.forecasts[8].shape[1] == 32


# --- last-value skip ------------------------------------------------------------------------


def test_last_observed_carries_the_latest_reading_across_gaps_and_patches():
    from moecast.model.network import last_observed

    nan = float("nan")
    z = torch.tensor(
        [
            [1.0, 2.0, nan, nan, nan, nan, nan, nan, 5.0, nan, 7.0, nan],
            [nan, nan, nan, nan, nan, 3.0, nan, nan, nan, nan, nan, nan],
        ]
    )
    observed = ~torch.isnan(z)
    got = last_observed(torch.nan_to_num(z), observed, patch_len=4)
    # patch ends at points 3, 7, 11; nothing seen yet reads 0 (the context mean)
    expected = torch.tensor([[2.0, 2.0, 7.0], [0.0, 3.0, 3.0]])
    torch.testing.assert_close(got, expected)


def test_a_head_with_unit_last_value_gain_and_no_projection_forecasts_persistence():
    from moecast.model.config import preset

    model = MoecastModel(preset("nano")).eval()
    for head in model.heads.values():
        torch.nn.init.zeros_(head.proj.weight)
        torch.nn.init.zeros_(head.proj.bias)
        torch.nn.init.ones_(head.last_value_gain)
    x = series(2, 128)
    x[0, -5:] = float("nan")  # the last reading is older than the context's end
    last = torch.stack([x[0, -6], x[1, -1]])
    out = model.predict(x)
    for h, q in out.items():
        # softplus(0) spreads the quantiles around the median; the median is the last value
        median = q[:, :, model.config.median_index]
        torch.testing.assert_close(median, last[:, None].expand(2, h), rtol=1e-5, atol=1e-4)


def test_the_skip_starts_at_zero_and_old_configs_load_without_it():
    from moecast.model.config import ModelConfig, preset

    model = MoecastModel(preset("nano"))
    assert all(torch.count_nonzero(h.last_value_gain) == 0 for h in model.heads.values())
    legacy = ModelConfig.from_json(
        '{"context_length": 64, "patch_len": 4, "d_model": 32, '
        '"n_heads": 2, "d_ff": 64, "n_experts": 4}'
    )
    assert not legacy.last_value_skip
    assert all(h.last_value_gain is None for h in MoecastModel(legacy).heads.values())


# --- hold decoding --------------------------------------------------------------------------


def test_hold_probability_counts_equal_observed_pairs_per_lag_by_hand():
    from moecast.model.network import hold_probability

    x = torch.tensor([[1.0, 1.0, 2.0, 2.0, float("nan"), 2.0]])
    got = hold_probability(x, ~torch.isnan(x), horizon=3)
    # lag 1: (1,1) (1,2) (2,2) equal in 2 of 3 observed pairs; lag 2: (1,2) (1,2) (2,2) 1 of 3;
    # lag 3: (1,2) (2,2), the pair (1,nan) skipped: 1 of 2
    torch.testing.assert_close(got, torch.tensor([[2 / 3, 1 / 3, 1 / 2]]))
    assert hold_probability(x[:, :1], torch.ones(1, 1, dtype=torch.bool), 2).eq(0).all()


def test_hold_decode_puts_the_levels_the_atom_covers_on_the_last_value():
    from moecast.model.network import hold_decode

    levels = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    q = torch.tensor([[[9.0, 9.5, 10.2, 10.6, 12.0], [9.0, 9.5, 10.2, 10.6, 12.0]]])
    held = torch.tensor([[0.75, 0.4]])  # step 1 held 75 % of the time, step 2 40 %
    out = hold_decode(q, torch.tensor([10.0]), held, levels)
    # step 1: levels in [0.25, 0.75] are the atom; 0.1 stays below it, 0.9 above it
    assert out[0, 0].tolist() == [9.0, 10.0, 10.0, 10.0, 12.0]
    assert out[0, 1].tolist() == q[0, 1].tolist()  # under 1/2: the network's quantiles
    clipped = hold_decode(q + 5, torch.tensor([10.0]), held, levels)
    assert clipped[0, 0].tolist() == [10.0, 10.0, 10.0, 10.0, 17.0]  # never crossing the atom


def test_a_held_sensor_gets_its_last_value_exactly_and_a_continuous_one_is_untouched(nano):
    from moecast.model.config import preset

    x = series(2, 128)
    x[0] = torch.where(torch.arange(128) < 100, 1.0, 0.0)  # an occupancy flag: empty since 100
    x[0, 120] = float("nan")
    plain = MoecastModel(preset("nano", hold_decoding=False)).eval()
    plain.load_state_dict(nano.state_dict())
    held, free = nano.predict(x), plain.predict(x)
    median = nano.config.median_index
    for h in nano.config.horizons:
        assert held[h][0, :, median].eq(0.0).all(), h
        torch.testing.assert_close(held[h][1], free[h][1])
    assert not free[1][0, :, median].eq(0.0).all()  # the network alone only comes close
