from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from moecast.model.checkpoint import load_checkpoint
from moecast.model.data.mixture import SyntheticMixture
from moecast.model.data.windows import WindowSampler
from moecast.model.train import (
    PROBE_FROM,
    PROBE_TO,
    TrainConfig,
    fitted_steps,
    learning_rate,
    train,
)


def config(tmp_path, steps: int, **changes) -> TrainConfig:
    base = dict(
        preset="nano",
        steps=steps,
        batch_size=4,
        warmup_steps=2,
        real_weight=0.0,
        log_every=2,
        checkpoint_every=2,
        run=tmp_path / "run",
    )
    return TrainConfig(**(base | changes))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx(0.55e-3)
    assert learning_rate(110, cfg) == pytest.approx(1e-4)


def test_training_steps_change_the_weights_and_log(tmp_path):
    torch.manual_seed(0)
    cfg = config(tmp_path, steps=4)
    train(cfg)
    last = cfg.run / "last"
    records = [json.loads(line) for line in (cfg.run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["points_per_s"] > 0 for r in records)
    assert json.loads((last / "config.json").read_text())["metadata"]["step"] == 4


def test_resume_continues_exactly_where_an_uninterrupted_run_ends(tmp_path):
    straight = train(config(tmp_path / "a", steps=6))
    train(config(tmp_path / "b", steps=6, stop_at=3))  # interrupted after step 3...
    train(config(tmp_path / "b", steps=6))  # ...and run again
    a, b = straight.state_dict(), load_checkpoint(tmp_path / "b" / "run" / "last").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_worker_processes_draw_the_same_batches_as_the_training_process(tmp_path):
    inline = train(config(tmp_path / "a", steps=3))
    pooled = train(config(tmp_path / "b", steps=3, workers=2))
    a, b = inline.state_dict(), pooled.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_time_budget_sets_steps_from_the_timed_steps():
    cfg = TrainConfig(steps=100_000, time_budget_s=600.0)
    probe = PROBE_TO - PROBE_FROM
    # 0.1 s a step, 100 s spent: 500 s left is 5000 more steps
    assert fitted_steps(cfg, 60, probe * 0.1, 100.0) == 5060
    assert fitted_steps(TrainConfig(steps=1000, time_budget_s=600.0), 60, probe * 0.1, 100) == 1000
    assert fitted_steps(cfg, 60, probe * 0.1, 700.0) == 61  # already over: stop next step


def test_a_time_budget_run_ends_its_schedule_and_logs_the_steps_it_chose(tmp_path):
    cfg = config(tmp_path, steps=10_000, time_budget_s=1e-3, warmup_steps=100)
    train(cfg)
    records = [json.loads(line) for line in (cfg.run / "log.jsonl").read_text().splitlines()]
    fitted = [r["fitted_steps"] for r in records if "fitted_steps" in r]
    assert fitted == [PROBE_TO + 1]
    assert json.loads((cfg.run / "last" / "config.json").read_text())["metadata"]["step"] == (
        PROBE_TO + 1
    )


def test_export_writes_a_loadable_checkpoint(tmp_path):
    train(config(tmp_path, steps=2, export=tmp_path / "weights"))
    assert load_checkpoint(tmp_path / "weights").config.name == "nano"


def test_windows_are_reproducible_and_damaged():
    sampler = WindowSampler(128, 64, synthetic=SyntheticMixture(), seed=3)
    a, b = sampler.batch(step=7, batch_size=64), sampler.batch(step=7, batch_size=64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampler.batch(step=8, batch_size=64))
    assert a.shape == (64, 192)
    context_missing = np.isnan(a[:, :128]).mean()
    assert 0.05 < context_missing < 0.5  # drops, gaps and short histories
    assert (np.isfinite(a[:, :128]).sum(1) >= 8).all()
    assert np.isfinite(a[:, 128:]).any(1).all()


def test_windows_from_real_series_are_crops_of_them():
    from moecast.model.data.corpus import Series

    values = np.arange(1000, dtype=np.float32)
    real = [Series(name="ramp", values=values, interval_s=60.0, source="test")]
    sampler = WindowSampler(
        64, 32, real=real, seed=0, damage_probability=0, short_history_probability=0
    )
    batch = sampler.batch(0, 16)
    assert (np.diff(batch, axis=1) == 1).all()  # contiguous crops, undamaged


def test_a_sampler_without_data_is_refused():
    with pytest.raises(ValueError, match="needs synthetic data"):
        WindowSampler(64, 32)


def test_warm_start_copies_a_checkpoint_and_keeps_its_new_parameters_at_identity(tmp_path):
    from moecast.model.checkpoint import save_checkpoint
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(3)
    old = MoecastModel(preset("nano", last_value_skip=False))
    save_checkpoint(old, tmp_path / "old")
    model = train(config(tmp_path, steps=0, init=tmp_path / "old"))
    for name, value in old.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    x = torch.randn(2, 128) * 3 + 1
    with torch.no_grad():
        for h, q in model.eval().predict(x).items():
            torch.testing.assert_close(q, old.eval().predict(x)[h], rtol=1e-5, atol=1e-5)


def test_warm_start_refuses_a_checkpoint_of_another_shape(tmp_path):
    from moecast.model.checkpoint import save_checkpoint
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    save_checkpoint(MoecastModel(preset("nano", d_model=16, n_heads=2)), tmp_path / "other")
    with pytest.raises(RuntimeError, match="size mismatch"):
        train(config(tmp_path, steps=1, init=tmp_path / "other"))
