"""The skill-weighted combination in `predict` (`network.skill_combine`)."""

from __future__ import annotations

import math

import pytest
import torch
from moecast.model.config import preset
from moecast.model.network import (
    Candidates,
    MoecastModel,
    classical_candidates,
    fill_forward,
    holt_trends,
    last_observed,
    linear_smoothing,
    power_weights,
    skill_ratios,
)

NAN = float("nan")


def skill_weights(c: Candidates, medians, power: float, min_pairs):
    """The fixed rule's weights with the ratios and best members they come from."""
    ratios, best = skill_ratios(c, medians, min_pairs)
    return power_weights(ratios, power), ratios, best


def combined(nano: MoecastModel, **overrides) -> MoecastModel:
    """nano's weights with the combination on (and any other decoding change)."""
    model = MoecastModel(preset("nano", skill_combine=True, **overrides)).eval()
    model.load_state_dict(nano.state_dict())
    return model


def test_fill_forward_carries_the_last_observed_value_at_most_window_minus_one_points():
    x = torch.tensor([[NAN, 1.0, NAN, NAN, NAN, 2.0]])
    filled, found = fill_forward(torch.nan_to_num(x), ~torch.isnan(x), window=3)
    assert found.tolist() == [[False, True, True, True, False, True]]
    assert filled[found].tolist() == [1.0, 1.0, 1.0, 2.0]


def test_weights_by_hand():
    # One origin, two steps; truth 0 and 0. Network errors 1 and 1 (sum 2), naive 2 and 2
    # (sum 4), seasonal A 1 and 0 (sum 1), seasonal B undefined at step 2.
    network = torch.tensor([[[1.0, -1.0]]])
    forecasts = torch.tensor([[[[2.0, 2.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])
    defined = torch.tensor([[[[True, True]], [[True, True]], [[True, False]]]])
    scored = torch.ones(1, 1, 2, dtype=torch.bool)
    c = Candidates(forecasts, defined, torch.zeros(1, 1, 2), scored, first=0, periods=2)
    weights, _, best = skill_weights(c, [network], power=2.0, min_pairs=[2])
    floor = 2e-2  # 1e-2 per pair, 2 pairs
    naive = (4 + floor) / (2 + floor)
    seasonal = (1 + floor) / (2 + floor)  # B has one pair, under min_pairs: not a candidate
    raw = torch.tensor([1.0, naive**-2, seasonal**-2])
    torch.testing.assert_close(weights[0, 0], raw / raw.sum())
    assert best.tolist() == [[[1]]]  # seasonal A
    # With one pair enough, B (exact on its pair, against the network's error 1) wins.
    weights, _, best = skill_weights(c, [network], power=2.0, min_pairs=[1])
    assert best.tolist() == [[[2]]]
    b = (0 + 1e-2) / (1 + 1e-2)
    assert weights[0, 0, 2].item() == pytest.approx(b**-2 / (1 + naive**-2 + b**-2), rel=1e-5)
    # A one-step head scores the first step only: naive 2 / 1, A 1 / 1, B 0 / 1.
    weights, ratios, best = skill_weights(c, [network, network[..., :1]], 2.0, [1, 1])
    assert best.tolist() == [[[2], [2]]]
    torch.testing.assert_close(ratios[0, 1, 1], torch.tensor((2 + 1e-2) / (1 + 1e-2)))


def test_power_zero_is_the_plain_mean_and_a_large_power_picks_the_best():
    c = Candidates(
        torch.tensor([[[[3.0]], [[0.5]]]]),
        torch.ones(1, 2, 1, 1, dtype=torch.bool),
        torch.zeros(1, 1, 1),
        torch.ones(1, 1, 1, dtype=torch.bool),
        first=0,
        periods=1,
    )
    network = [torch.ones(1, 1, 1)]
    mean = skill_weights(c, network, power=0.0, min_pairs=[1])[0]
    torch.testing.assert_close(mean, torch.full((1, 1, 3), 1 / 3))
    pick = skill_weights(c, network, power=64.0, min_pairs=[1])[0]
    assert pick[0, 0].argmax() == 2
    assert pick[0, 0, 2] > 0.99


def test_missing_points_are_not_scored_and_not_errors():
    z = torch.arange(32.0)[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, 9] = False
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, (4,), min_origin=4, horizon=2)
    # Token 1 ends at 8: its step-2 target is point 9, missing, so never scored.
    assert not c.scored[0, 1, 1]
    assert c.scored[0, 1, 0]
    # Token 0 ends at 4: min_origin points behind it, all observed, so scored.
    assert c.first == 0
    assert c.scored[0, 0, 0]
    # The last token's targets lie beyond the context: never scored.
    assert not c.scored[0, -1].any()
    # A huge error on an unscored pair changes no weight.
    network = z[:, 3::4, None] + torch.tensor([0.5, 0.5])  # forecasts near the truth
    base = skill_weights(c, [network], 2.0, [1])[0]
    network[0, 1, 1] = 1e6
    torch.testing.assert_close(skill_weights(c, [network], 2.0, [1])[0], base)


def test_origins_start_where_min_origin_points_lie_behind_them():
    z = torch.randn(2, 64)
    observed = torch.rand(2, 64) > 0.2
    last = last_observed(z, observed, 4)
    early = classical_candidates(z, observed, last, 4, (8,), min_origin=4, horizon=8)
    late = classical_candidates(z, observed, last, 4, (8,), min_origin=16, horizon=8)
    # Token 3 ends at point 16: the first with 16 points behind it.
    assert late.first == 3
    torch.testing.assert_close(late.forecasts, early.forecasts[:, :, 3:])
    assert torch.equal(late.defined, early.defined[:, :, 3:])
    assert torch.equal(late.truth, early.truth[:, 3:])
    # Scored pairs are a subset: later origins also need 8 points seen, not 2.
    assert not (late.scored & ~early.scored[:, 3:]).any()
    assert early.scored[:, :3].any()


def test_a_head_median_alone_is_the_median_of_its_quantiles(nano):
    x = torch.randn(2, 128).cumsum(-1)
    x[1, :40] = NAN
    out = nano.forward(x, medians_from=5)
    for h, q in out.forecasts.items():
        torch.testing.assert_close(out.medians[h], q[:, 5:, :, nano.config.median_index])


def test_a_clean_periodic_series_gets_seasonal_naive(nano):
    t = torch.arange(128.0)
    x = (20 + 5 * torch.sin(2 * math.pi * t / 12) + 2 * torch.cos(2 * math.pi * t / 24))[None]
    x[0, 10] = NAN  # a gap changes nothing
    model = combined(nano)
    future = 20 + 5 * torch.sin(2 * math.pi * (128 + torch.arange(64.0)) / 12)
    future = future + 2 * torch.cos(2 * math.pi * (128 + torch.arange(64.0)) / 24)
    median = model.config.median_index
    got = model.predict(x)
    alone = nano.predict(x)
    for h in model.config.horizons:
        error = (got[h][0, :, median] - future[:h]).abs().max()
        assert error < 0.05, h  # seasonal naive with period 24 is exact
        assert error < (alone[h][0, :, median] - future[:h]).abs().max() / 10, h


def test_a_straight_trend_gets_drift(nano):
    t = torch.arange(256.0)
    x = (5 + 0.3 * t)[None]
    x[0, 100] = NAN
    with_drift = combined(nano, combine_drifts=(32, 128)).predict(x)
    without = combined(nano).predict(x)
    future = 5 + 0.3 * (256 + torch.arange(64.0))
    median = nano.config.median_index
    # One step ahead drift has no weight (a near copy of naive): the same forecast.
    torch.testing.assert_close(with_drift[1], without[1])
    for h in nano.config.horizons[1:]:
        error = (with_drift[h][0, :, median] - future[:h]).abs().max()
        assert error < 0.05, h  # drift is exact on a straight line
        assert error < (without[h][0, :, median] - future[:h]).abs().max() / 10, h


def test_drift_needs_its_window_behind_the_origin():
    z = torch.arange(64.0)[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, (8,), min_origin=4, horizon=3, drifts=(16,))
    drift = c.forecasts[:, -1]  # [batch, origins, horizon]
    # Token 3 ends at point 15: 16 points back is before the start, so no drift there.
    assert not c.defined[0, -1, 3].any()
    assert c.defined[0, -1, 4].all()
    # From token 4 (last value 19, slope (19 - 3) / 16 = 1): 20, 21, 22.
    assert drift[0, 4].tolist() == [20.0, 21.0, 22.0]


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_linear_smoothing_is_exact_on_a_straight_line(alpha):
    z = (3 + 0.5 * torch.arange(128.0))[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, 10:14] = False  # a gap far behind the origins changes nothing
    z = torch.where(observed, z, 0.0)
    step = torch.arange(1.0, 9.0)
    # tokens of 16 points from the fifth: they end at points 79, 95, 111 and 127
    forecasts, known = linear_smoothing(z, observed, (alpha,), 16, 4, step)
    assert forecasts.shape == known.shape == (1, 1, 4, 8)
    assert known.all()
    ends = torch.arange(79, 128, 16)
    want = 3 + 0.5 * (ends[:, None] + step)
    torch.testing.assert_close(forecasts[0, 0], want, atol=0.02, rtol=0)
    # Damped, k steps ahead add 0.9 + 0.81 + ... + 0.9 ** k slopes to the last value.
    damped, _ = linear_smoothing(z, observed, (alpha,), 16, 4, step, dampings=(0.9,))
    slopes = torch.cumsum(0.9**step, 0)
    want = 3 + 0.5 * (ends[:, None] + slopes)
    torch.testing.assert_close(damped[0, 0], want, atol=0.02, rtol=0)


def test_linear_smoothing_averages_the_noise_out_of_the_level():
    g = torch.Generator().manual_seed(0)
    line = 3 + 0.05 * torch.arange(512.0)
    z = (line + torch.randn(512, generator=g))[None]
    observed = torch.rand(1, 512, generator=g) > 0.3  # 30 % dropped
    z = torch.where(observed, z, 0.0)
    ends = torch.arange(255, 512, 8)
    step = torch.arange(1.0, 33.0)
    forecasts, known = linear_smoothing(z, observed, (0.05,), 8, 31, step)
    assert known.all()
    future = 3 + 0.05 * (ends[:, None] + step)
    smoothed_error = (forecasts[0, 0] - future).abs().mean()
    last = last_observed(z, observed, 1)[0, ends]  # naive: one noisy reading
    naive_error = (last[:, None] - future).abs().mean()
    assert smoothed_error < naive_error / 2


def test_linear_smoothing_is_undefined_where_no_reading_carries_weight():
    z = torch.ones(1, 64)
    observed = torch.arange(64)[None] < 40  # nothing observed in the last 24 points
    # tokens of 8 points from the fifth (ends 39, 47, 55 and 63); 0.5: the weights fall below
    # the cut after 14 points; 0.05: after 180.
    _, known = linear_smoothing(z, observed, (0.5, 0.05), 8, 4, torch.arange(1.0, 3.0))
    known = known[:, :, [0, 3]]  # ends 39 and 63
    assert known[0, :, 0].all()
    assert not known[0, 0, 1].any()
    assert known[0, 1, 1].all()


def test_smoothing_is_a_family_of_its_own_from_two_steps_on():
    z = torch.arange(64.0)[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    last = last_observed(z, observed, 4)
    c = classical_candidates(
        z, observed, last, 4, (8,), 4, 8, drifts=(8, 16), shifted=True, smoothing=(0.1, 0.3)
    )
    assert c.forecasts.shape[1] == 1 + 2 + 2 + 2
    assert c.families() == [(1, 2, True), (2, 3, False), (3, 5, False), (5, 7, False)]
    only = classical_candidates(z, observed, last, 4, (8,), 4, 8, smoothing=(0.1,))
    assert only.families() == [(1, 2, True), (2, 3, False)]


def test_a_noisy_trend_gets_smoothing(nano):
    g = torch.Generator().manual_seed(1)
    t = torch.arange(128.0)
    x = (5 + 0.2 * t + 0.5 * torch.randn(128, generator=g))[None]
    with_smoothing = combined(nano, combine_smoothing=(0.05, 0.2)).predict(x)
    without = combined(nano).predict(x)
    future = 5 + 0.2 * (128 + torch.arange(64.0))
    median = nano.config.median_index
    # One step ahead smoothing has no weight: the same forecast.
    torch.testing.assert_close(with_smoothing[1], without[1])
    for h in (32, 64):
        error = (with_smoothing[h][0, :, median] - future[:h]).abs().mean()
        assert error < (without[h][0, :, median] - future[:h]).abs().mean() / 2, h


def test_shifted_seasonal_naive_carries_a_recent_level_step():
    # A cycle of 16 points stepping up by 5 at point 58; the last token ends at point 63.
    t = torch.arange(64.0)
    z = (torch.sin(2 * math.pi * t / 16) + 5 * (t >= 58))[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, 20] = False  # a gap changes nothing
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, (16,), 4, 8, shifted=True)
    assert c.families() == [(1, 2, True), (2, 3, False)]
    future = torch.sin(2 * math.pi * (64 + torch.arange(8.0)) / 16) + 5
    seasonal, shifted = c.forecasts[0, 1, -1], c.forecasts[0, 2, -1]
    # Plain seasonal naive repeats the cycle before the step; the shifted one adds the step
    # (the level of the last 4 points against the same phase a period earlier).
    torch.testing.assert_close(seasonal, future - 5)
    torch.testing.assert_close(shifted, future)
    # Where nothing changed in the last period, the two are the same forecast.
    early = c.defined[0, 2, 4] & c.defined[0, 1, 4]
    assert early.all()
    torch.testing.assert_close(c.forecasts[0, 2, 4], c.forecasts[0, 1, 4])
    # Its level needs a whole patch a period before the origin: token 3 ends at point 15, so
    # seasonal naive is defined there and the shifted one only from token 4 on.
    assert c.defined[0, 1, 3].all()
    assert not c.defined[0, 2, 3].any()
    assert c.defined[0, 2, 4:].sum() == 12 * 8 - 1
    # Token 7's step 5 repeats point 20, missing: seasonal naive takes it a period earlier,
    # where there is no level a period before to shift by.
    assert c.defined[0, 1, 7, 4]
    assert not c.defined[0, 2, 7, 4]


def test_after_a_level_step_the_mix_moves_toward_the_new_level(nano):
    # A clean cycle of 24 points, stepping up by 8 eight points before the end: plain seasonal
    # naive, exact over the whole history, repeats the old level for the next 16 steps.
    t = torch.arange(128.0)
    x = (20 + 3 * torch.sin(2 * math.pi * t / 24) + 8 * (t >= 120))[None]
    future = 28 + 3 * torch.sin(2 * math.pi * (128 + torch.arange(8.0)) / 24)
    median = nano.config.median_index
    shifted = combined(nano, combine_shifted=True).predict(x)
    plain = combined(nano).predict(x)
    # One step ahead the shifted seasonal has no weight: the same forecast.
    torch.testing.assert_close(shifted[1], plain[1])
    error = (shifted[8][0, :, median] - future).abs().mean()
    assert error < 0.6 * (plain[8][0, :, median] - future).abs().mean()


def guard_gains(nano: MoecastModel, guarded: dict, unguarded: dict) -> dict[int, float]:
    """Per horizon, the mean error with `guarded`'s decoding over that with `unguarded`'s on
    the stepped cycle above (a cycle of 24 points stepping up by 8 eight points before the
    end; scoring has not yet seen the step). Where the level holds (the same cycle without
    the step), the two must forecast the same."""
    t = torch.arange(128.0)
    cycle = (20 + 3 * torch.sin(2 * math.pi * t / 24))[None]
    stepped = cycle + 8 * (t >= 120)
    future = 28 + 3 * torch.sin(2 * math.pi * (128 + torch.arange(64.0)) / 24)
    with_guard, without = combined(nano, **guarded), combined(nano, **unguarded)
    for h, q in with_guard.predict(cycle).items():
        torch.testing.assert_close(q, without.predict(cycle)[h])
    median = nano.config.median_index
    after, before = with_guard.predict(stepped), without.predict(stepped)
    return {
        h: float(
            (after[h][0, :, median] - future[:h]).abs().mean()
            / (before[h][0, :, median] - future[:h]).abs().mean()
        )
        for h in nano.config.horizons
    }


def test_the_guard_drops_a_seasonal_naive_whose_level_has_moved(nano):
    # Without the guard plain seasonal naive keeps its weight; the shifted candidate sees the
    # level move by 8, far beyond plain seasonal naive's error in the context (about 0), and
    # the guard drops it.
    gains = guard_gains(
        nano, {"combine_shifted": True, "combine_guard": 2.0}, {"combine_shifted": True}
    )
    for h, gain in gains.items():
        # Beyond a period the other candidates (and the untrained network) weigh in more.
        assert gain < (0.25 if h <= 8 else 0.6), h


def test_the_cycles_guard_drops_seasonal_means_whose_level_has_moved(nano):
    # With plain seasonal naive already guarded: the seasonal means average the cycles before
    # the step and, unguarded, keep the weight their history earned.
    both = {"combine_shifted": True, "combine_guard": 2.0, "combine_cycles": 4}
    gains = guard_gains(nano, {**both, "combine_cycles_guard": 2.0}, both)
    assert gains[1] == 1.0  # one step ahead the seasonal means have no weight
    for h in nano.config.horizons[1:]:
        assert gains[h] < (0.5 if h <= 8 else 0.75), h


def test_a_random_walk_leans_on_naive_not_on_a_season(nano):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 128, generator=g).cumsum(-1)
    model = combined(nano)
    observed = ~torch.isnan(x)
    out = model.forward(x)
    z = (x - out.loc) / out.scale
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, model.config.combine_periods, 32, 64)
    median = model.config.median_index
    medians = [q[:, c.first :, :, median] for q in out.forecasts.values()]
    horizons = model.config.horizons
    found = skill_weights(c, medians, 2.0, [4 * h for h in horizons])[0][0].tolist()
    weights = dict(zip(horizons, found, strict=True))
    for h, (network, naive, seasonal) in weights.items():
        # No season to repeat: the weight stays on naive and the network (which of them depends
        # on the horizon: the untrained nano forecasts about the mean, not bad far ahead).
        assert seasonal < max(network, naive), h
        assert network + naive > 0.7, h
    assert weights[1][1] > 0.5  # one step ahead, the last value is the forecast


def test_an_untrained_candidate_set_leaves_the_network_alone(nano):
    # Too short a history for any origin to be scored: the network's forecast unchanged.
    x = torch.full((1, 128), NAN)
    x[0, -12:] = torch.randn(12)
    model = combined(nano)
    for h, q in model.predict(x).items():
        torch.testing.assert_close(q, nano.predict(x)[h])


def test_hold_decoding_still_holds_with_the_combination(nano):
    x = torch.where(torch.arange(128) < 100, 1.0, 0.0)[None].repeat(2, 1)
    x[1] = 20 + torch.randn(128)
    x[0, 120] = NAN
    model = combined(nano)
    median = model.config.median_index
    for h, q in model.predict(x).items():
        assert q[0, :, median].eq(0.0).all(), h
        assert torch.isfinite(q).all()


def test_empty_rows_stay_nan_and_quantiles_stay_ordered(nano):
    x = torch.randn(3, 128).cumsum(-1)
    x[1] = NAN
    x[2, torch.rand(128) < 0.3] = NAN
    for h, q in combined(nano).predict(x).items():
        assert q[1].isnan().all(), h
        assert torch.isfinite(q[[0, 2]]).all(), h
        assert (q[[0, 2]].diff(dim=-1) >= 0).all(), h


def test_narrow_shrinks_the_spread_where_the_mix_beat_the_network(nano):
    t = torch.arange(128.0)
    x = (20 + 5 * torch.sin(2 * math.pi * t / 12))[None]
    wide, narrow = combined(nano).predict(x), combined(nano, combine_narrow=True).predict(x)
    for h in nano.config.horizons:
        width = (wide[h][..., -1] - wide[h][..., 0]).mean()
        assert (narrow[h][..., -1] - narrow[h][..., 0]).mean() < width / 10, h
        torch.testing.assert_close(narrow[h][..., 4], wide[h][..., 4])


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_the_power_is_a_config_field(nano, power):
    assert combined(nano, combine_power=power).config.combine_power == power


def test_power_weights_take_one_power_per_head():
    ratios = torch.tensor([[[1.0, 0.5, 2.0, torch.inf], [1.0, 0.8, 1.25, 3.0]]])
    per_head = power_weights(ratios, (12.0, 2.0))
    torch.testing.assert_close(per_head[:, 0], power_weights(ratios, 12.0)[:, 0])
    torch.testing.assert_close(per_head[:, 1], power_weights(ratios, 2.0)[:, 1])
    assert per_head[0, 0, 1] > 0.99  # a near-hard choice of the best
    assert per_head[0, 0, 3] == 0  # inf: not weighed


def test_each_head_combines_with_its_own_power(nano):
    """A head's weights depend on its power alone: a model with a power per head forecasts, at
    each head, what the model with that head's power as its only one does."""
    t = torch.arange(nano.config.context_length, dtype=torch.float32)
    noise = torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    x = torch.stack([20 + 5 * torch.sin(2 * math.pi * t / 12) + 0.3 * noise, 0.05 * t])
    powers = (16.0, 1.0, 8.0, 2.0)[: len(nano.config.horizons)]
    mixed = combined(nano, combine_power=powers, combine_drifts=(8, 32)).predict(x)
    for h, power in zip(nano.config.horizons, powers, strict=True):
        alone = combined(nano, combine_power=power, combine_drifts=(8, 32)).predict(x)
        torch.testing.assert_close(mixed[h], alone[h])
    one = combined(nano, combine_power=1.0, combine_drifts=(8, 32)).predict(x)
    assert not torch.allclose(mixed[1], one[1])  # the powers matter for these inputs


def test_hold_by_level_counts_only_pairs_that_start_at_the_last_value():
    from moecast.model.network import hold_probability

    # Zeros repeat (a radiation sensor's night), the last value 3.0 never has: the context as
    # a whole looks held, its current level does not.
    values = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0]])
    observed = torch.ones_like(values, dtype=torch.bool)
    overall = hold_probability(values, observed, horizon=1)
    by_level = hold_probability(values, observed, horizon=1, last=values[:, -1])
    assert overall[0, 0] == pytest.approx(5 / 7)
    assert by_level[0, 0] == 0
    night = torch.zeros(1)
    assert hold_probability(values, observed, 1, last=night)[0, 0] == pytest.approx(5 / 6)


def test_several_dampings_give_each_alpha_once_per_damping_in_one_family():
    g = torch.Generator().manual_seed(2)
    z = (0.1 * torch.arange(96.0) + 0.3 * torch.randn(96, generator=g))[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    step = torch.arange(1.0, 9.0)
    both, known = linear_smoothing(z, observed, (0.1, 0.3), 8, 4, step, dampings=(0.9, 1.0))
    damped, _ = linear_smoothing(z, observed, (0.1, 0.3), 8, 4, step, dampings=(0.9,))
    plain, _ = linear_smoothing(z, observed, (0.1, 0.3), 8, 4, step)
    assert both.shape == known.shape == (1, 4, 8, 8)
    torch.testing.assert_close(both, torch.cat([damped, plain], 1))
    last = last_observed(z, observed, 8)
    c = classical_candidates(
        z, observed, last, 8, (8,), 32, 8, smoothing=(0.1, 0.3), dampings=(0.9, 1.0)
    )
    assert c.families() == [(1, 2, True), (2, 6, False)]  # one family of four members


def test_the_seasonal_mean_averages_the_same_phase_over_cycles():
    # Period 4; the last token (points 12-15) ends at point 15. Step 1's repeated point is
    # 12, then 8 and 4 cycles back; step 5's is 12 (a full period back from its target 20).
    z = torch.arange(16.0)[None] ** 2
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, 8] = False  # filled forward from point 7, as seasonal naive's are
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, (4,), 4, 5, cycles=3)
    mean = c.forecasts[0, 2, -1]  # [horizon]: after naive and seasonal naive
    assert mean[0] == (12.0**2 + 7.0**2 + 4.0**2) / 3
    assert mean[1] == (13.0**2 + 9.0**2 + 5.0**2) / 3
    assert mean[4] == mean[0]  # step 5 repeats step 1's phase
    # Token 1 ends at point 7: two cycles lie behind step 1 (points 4 and 0) and step 4
    # (points 7 and 3), not three; a mean of what there is.
    assert c.forecasts[0, 2, 1, 0] == (4.0**2 + 0.0**2) / 2
    assert c.forecasts[0, 2, 1, 3] == (7.0**2 + 3.0**2) / 2
    # Undefined only where no cycle has a reading: token 0's step 1 reaches point 0 alone.
    observed[0, 0] = False
    c = classical_candidates(z, observed, last, 4, (4,), 4, 5, cycles=3)
    assert not c.defined[0, 2, 0, 0]
    assert c.defined[0, 2, 1:].all()


def test_the_seasonal_mean_is_a_family_from_two_steps_on_and_beats_one_noisy_cycle():
    g = torch.Generator().manual_seed(3)
    t = torch.arange(512.0)
    clean = 3 * torch.sin(2 * math.pi * t / 24)
    z = (clean + 0.5 * torch.randn(512, generator=g))[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    last = last_observed(z, observed, 8)
    c = classical_candidates(
        z, observed, last, 8, (12, 24), 128, 32, shifted=True, drifts=(32,), cycles=5
    )
    assert c.forecasts.shape[1] == 1 + 2 + 2 + 2 + 1
    assert c.families() == [(1, 3, True), (3, 5, False), (5, 7, False), (7, 8, False)]
    truth = 3 * torch.sin(2 * math.pi * (512 + torch.arange(32.0)) / 24)
    seasonal, mean = c.forecasts[0, 2, -1], c.forecasts[0, 6, -1]  # period 24 of each
    # Five cycles' noise averaged: about sqrt(5) times less error than one cycle's.
    assert (mean - truth).abs().mean() < (seasonal - truth).abs().mean() / 1.5
    # Off (0 or 1 cycle), there is no such family.
    plain = classical_candidates(z, observed, last, 8, (12, 24), 128, 32, cycles=1)
    assert plain.families() == [(1, 3, True)]


def test_holt_trend_follows_a_line_across_gaps_and_damps_its_slope():
    z = (3 + 0.5 * torch.arange(128.0))[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, [100, 101, 110]] = False  # gaps: their changes are left out, not read as 0
    z = torch.where(observed, z, 0.0)
    step = torch.arange(1.0, 9.0)
    # tokens of 16 points from the fifth: they end at points 79, 95, 111 and 127
    added, known = holt_trends(z, observed, (0.2, 0.05), 16, 4, step, dampings=(0.9, 1.0))
    assert added.shape == known.shape == (1, 4, 4, 8)  # each beta with each damping
    assert known.all()
    torch.testing.assert_close(added[0, 2:], (0.5 * step).expand(2, 4, 8))  # undamped
    torch.testing.assert_close(added[0, :2], (0.5 * torch.cumsum(0.9**step, 0)).expand(2, 4, 8))


def test_holt_trend_weighs_recent_changes_more_and_needs_two_readings_in_a_row():
    # The slope changes from 1 to 3 at point 40; every other point before 20 is missing.
    t = torch.arange(64.0)
    z = torch.where(t < 40, t, 40 + 3 * (t - 40))[None]
    observed = (t >= 20) | (t % 2 == 0)
    z, observed = torch.where(observed, z, 0.0), observed[None]
    step = torch.arange(1.0, 3.0)
    slope, known = holt_trends(z, observed, (0.5, 0.05), 8, 0, step)
    slope = slope[0, :, :, 0]  # one step ahead: the trend itself [betas, tokens]
    assert not known[0, :, :2].any()  # points 0-15: no two readings in a row
    assert known[0, :, 2:].all()  # from points 20 and 21 on
    torch.testing.assert_close(slope[:, 3], torch.ones(2))  # before the change
    # At the end (point 63): beta 0.5 has nearly forgotten the old slope, 0.05 has not.
    assert slope[0, -1] > 2.99
    assert 2.0 < slope[1, -1] < 2.8


def test_holt_trends_join_the_drift_family():
    z = torch.arange(64.0)[None]
    observed = torch.ones_like(z, dtype=torch.bool)
    last = last_observed(z, observed, 4)
    c = classical_candidates(z, observed, last, 4, (8,), 4, 8, drifts=(16,), trends=(0.1, 0.3))
    assert c.forecasts.shape[1] == 1 + 1 + 1 + 2
    assert c.families() == [(1, 2, True), (2, 5, False)]  # drift and trends: one family
    alone = classical_candidates(z, observed, last, 4, (8,), 4, 8, trends=(0.1,))
    assert alone.families() == [(1, 2, True), (2, 3, False)]
    # on a line, the trend candidates are exact from their first defined origin
    trend = c.forecasts[0, 3:, 2:]
    truth = c.truth[0, 2:]
    scored = c.scored[0, 2:]
    assert (trend - truth).abs()[:, scored].max() < 1e-4
    # and the config's slots count them in the drift family
    config = preset("nano", skill_combine=True, combine_trends=(0.1,))
    assert config.combine_slots == preset("nano", skill_combine=True).combine_slots + 1


def test_a_drifting_sensor_gets_holts_trend(nano):
    # A humidity-like drift: the slope wanders, readings are quantised and 20 % are missing.
    g = torch.Generator().manual_seed(4)
    t = torch.arange(192.0)
    slope = 0.2 + 0.05 * torch.sin(2 * math.pi * t / 150)
    path = 5 + torch.cumsum(slope, 0)
    x = torch.round(path * 10) / 10
    x = torch.where(torch.rand(192, generator=g) < 0.2, NAN, x)
    context, future = x[None, :128], path[128:]
    with_trends = combined(nano, combine_trends=(0.05, 0.2)).predict(context)
    without = combined(nano).predict(context)
    median = nano.config.median_index
    torch.testing.assert_close(with_trends[1], without[1])  # from two steps on only
    for h in (8, 32, 64):
        error = (with_trends[h][0, :, median] - future[:h]).abs().mean()
        assert error < (without[h][0, :, median] - future[:h]).abs().mean() / 2, h
