"""The combination's learned weights (`network.SkillGate`) and their fitting
(`moecast.model.fit_gate`)."""

from __future__ import annotations

import math

import pytest
import torch
from moecast.model.checkpoint import load_checkpoint, save_checkpoint
from moecast.model.config import preset
from moecast.model.fit_gate import Examples, fit, head_losses, load_frozen
from moecast.model.network import MoecastModel, SkillGate, power_weights

INF = math.inf


def gated(nano: MoecastModel, gate: bool = True, **overrides) -> MoecastModel:
    config = preset(
        "nano", skill_combine=True, combine_gate=gate, combine_drifts=(8, 32), **overrides
    )
    model = MoecastModel(config).eval()
    model.load_state_dict(nano.state_dict(), strict=False)
    return model


def test_a_fresh_gate_is_the_fixed_rule():
    ratios = torch.tensor([[[1.0, 0.5, 2.0, INF], [1.0, INF, 0.8, 1.3]]])
    gate = SkillGate(heads=2, slots=4, power=4.0)
    torch.testing.assert_close(gate(ratios), power_weights(ratios, 4.0))
    assert gate(ratios)[0, 0, 3] == 0
    assert gate(ratios)[0, 1, 1] == 0


def test_a_model_with_a_fresh_gate_forecasts_as_without(nano):
    values = torch.randn(3, nano.config.context_length).cumsum(-1)
    values[1, ::3] = torch.nan
    with_gate, without = gated(nano), gated(nano, gate=False)
    assert with_gate.gate is not None
    assert without.gate is None
    want, got = without.predict(values), with_gate.predict(values)
    for h in want:
        torch.testing.assert_close(got[h], want[h])


def test_the_gate_never_weighs_a_candidate_that_was_not_scored():
    gate = SkillGate(heads=1, slots=3, power=4.0)
    with torch.no_grad():
        gate.out.bias[2] = 50.0  # a strong prior for slot 2 cannot resurrect it
    weights = gate(torch.tensor([[[1.0, 1.0, INF]]]))
    assert weights[0, 0, 2] == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 1))


def synthetic_examples(n: int, seed: int) -> Examples:
    """Two heads (1 and 4 steps), three slots. The context's ratios say which slot is best,
    but one step ahead the truth is the best slot's forecast exactly (a hard choice wins),
    four steps ahead it is the mean of the two best (a soft one does)."""
    g = torch.Generator().manual_seed(seed)
    ratios = torch.cat([torch.ones(n, 1), torch.rand(n, 2, generator=g) * 2 + 0.2], 1)
    ratios = ratios[:, None].expand(n, 2, 3).contiguous()
    mixes = [torch.randn(n, 3, h, generator=g) for h in (1, 4)]
    order = ratios[:, 0].argsort(-1)
    rows = torch.arange(n)
    best = mixes[0][rows, order[:, 0]]
    pair = (mixes[1][rows, order[:, 0]] + mixes[1][rows, order[:, 1]]) / 2
    return Examples(ratios, mixes, torch.cat([best, pair], 1), torch.ones(n))


def test_fitting_learns_how_hard_each_head_should_choose():
    gate = SkillGate(heads=2, slots=3, power=4.0)
    train, check = synthetic_examples(4096, 0), synthetic_examples(1024, 1)
    with torch.no_grad():
        before = head_losses(gate, check)
    fit(gate, train, steps=300, batch_size=512, lr=1e-2, seed=0)
    with torch.no_grad():
        after = head_losses(gate, check)
    # log MAE: a hard choice one step ahead is worth far more than a softer mix four ahead
    assert after[0] < before[0] - 1.0, (before, after)
    assert after[1] < before[1] - 0.1, (before, after)
    power = gate.log_power.exp().flatten()
    assert power[0] > power[1], power  # the one-step head chooses harder


def test_a_gated_checkpoint_round_trips(nano, tmp_path):
    model = gated(nano)
    with torch.no_grad():
        model.gate.out.bias.normal_()
        model.gate.out.weight.normal_(std=0.1)
    save_checkpoint(model, tmp_path / "gated")
    loaded = load_checkpoint(tmp_path / "gated")
    values = torch.randn(2, nano.config.context_length).cumsum(-1)
    want, got = model.predict(values), loaded.predict(values)
    for h in want:
        torch.testing.assert_close(got[h], want[h])


def test_load_frozen_adds_a_gate_and_freezes_the_network(nano, tmp_path):
    save_checkpoint(gated(nano, gate=False), tmp_path / "plain")
    model = load_frozen(tmp_path / "plain")
    assert model.gate is not None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(n.startswith("gate.") for n in trainable)


def test_load_frozen_refuses_a_model_without_the_combination(nano, tmp_path):
    save_checkpoint(nano, tmp_path / "off")
    with pytest.raises(ValueError, match="skill_combine"):
        load_frozen(tmp_path / "off")


def write_site(path, rows: int = 600) -> None:
    """A small site: a daily-ish cycle and a drifting sensor, one reading a minute."""
    import numpy as np
    import pandas as pd

    t = np.arange(rows)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=rows, freq="min"),
            "temperature": 20 + 3 * np.sin(2 * np.pi * t / 48) + 0.1 * rng.normal(size=rows),
            "pressure": 1000 + 0.02 * t + 0.05 * rng.normal(size=rows),
        }
    )
    frame.to_csv(path, index=False)


def test_fit_gate_on_a_sites_history_writes_a_gated_checkpoint(nano, tmp_path, capsys):
    from moecast.cli import main

    save_checkpoint(gated(nano, gate=False), tmp_path / "plain")
    write_site(tmp_path / "site.csv")
    argv = [
        "fit-gate",
        "--checkpoint",
        str(tmp_path / "plain"),
        "--data",
        str(tmp_path / "site.csv"),
    ]
    argv += ["--windows", "128", "--check-windows", "64", "--steps", "20", "--group", "4"]
    assert main([*argv, "--export", str(tmp_path / "gated")]) == 0
    assert "not a held-out test" in capsys.readouterr().out
    model = load_checkpoint(tmp_path / "gated")
    assert model.gate is not None
    assert model.config.combine_gate
    # Twenty steps moved it off the fixed rule it started as.
    assert model.gate.out.bias.abs().max() > 0
    values = torch.randn(2, nano.config.context_length).cumsum(-1)
    assert all(torch.isfinite(q).all() for q in model.predict(values).values())


def test_fit_gate_says_when_a_site_is_too_short(nano, tmp_path):
    from moecast.model.data.corpus import load_site_series
    from moecast.model.fit_gate import site_sampler

    write_site(tmp_path / "short.csv", rows=150)  # nano needs 128 + 64 points
    with pytest.raises(ValueError, match="window's worth"):
        site_sampler(nano.config, load_site_series(tmp_path / "short.csv"), seed=0)
    with pytest.raises(ValueError, match="no such file"):
        load_site_series(tmp_path / "missing.csv")


def test_fit_gate_command_reports_bad_input_without_a_traceback(nano, tmp_path, capsys):
    from moecast.cli import main

    save_checkpoint(gated(nano, gate=False), tmp_path / "plain")
    write_site(tmp_path / "short.csv", rows=150)
    argv = ["fit-gate", "--checkpoint", str(tmp_path / "plain"), "--export", str(tmp_path / "g")]
    assert main([*argv, "--data", str(tmp_path / "short.csv")]) == 2
    assert "at least 192 readings" in capsys.readouterr().err
    assert main([*argv[:1], "--checkpoint", str(tmp_path), *argv[3:]]) == 2
    assert "not a moecast checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_the_cache_is_reused_for_the_same_source_and_redrawn_for_another(nano, tmp_path):
    from moecast.model.data.corpus import load_site_series
    from moecast.model.fit_gate import cached_examples, site_sampler

    model = load_frozen_from(nano, tmp_path)
    write_site(tmp_path / "a.csv")
    sampler = site_sampler(model.config, load_site_series(tmp_path / "a.csv"), seed=1)
    cache = tmp_path / "cache" / "fit.pt"
    first = cached_examples(model, sampler, 64, cache, "fit", source="a")
    stamp = cache.stat().st_mtime_ns
    again = cached_examples(model, sampler, 32, cache, "fit", source="a")
    assert cache.stat().st_mtime_ns == stamp  # read, not drawn again
    torch.testing.assert_close(again.ratios, first.ratios[:32])
    cached_examples(model, sampler, 32, cache, "fit", source="b")
    assert cache.stat().st_mtime_ns != stamp


def load_frozen_from(nano: MoecastModel, tmp_path) -> MoecastModel:
    save_checkpoint(gated(nano, gate=False), tmp_path / "plain")
    return load_frozen(tmp_path / "plain")
