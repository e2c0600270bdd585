"""TSMixup in the window sampler: convex combinations of standardised draws."""

from __future__ import annotations

import numpy as np
import pytest
from moecast.model.data import Series, SyntheticMixture
from moecast.model.data.windows import MIN_OBSERVED, WindowSampler, tsmixup


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _z(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - np.nanmean(values)) / np.nanstd(values)


def test_tsmixup_is_a_convex_combination_of_standardised_parts() -> None:
    rng = _rng()
    for k in (2, 3):
        for _ in range(50):
            parts = [
                (rng.normal(size=100) * 10 ** rng.uniform(-2, 5) + rng.uniform(-1e4, 1e4))
                for _ in range(k)
            ]
            parts = [p.astype(np.float32) for p in parts]
            mixed, weights = tsmixup(rng, parts)
            assert weights.shape == (k,)
            assert np.all(weights >= 0)
            assert weights.sum() == pytest.approx(1.0, abs=1e-12)
            expected = sum(w * _z(p) for w, p in zip(weights, parts, strict=True))
            np.testing.assert_allclose(mixed, expected, atol=1e-9)


def test_tsmixup_weights_are_dirichlet_one() -> None:
    rng = _rng(1)
    weights = np.array([tsmixup(rng, [np.arange(5.0)] * 3)[1] for _ in range(3000)])
    # Dirichlet(1, 1, 1): each weight is Beta(1, 2), mean 1/3 and variance 1/18.
    np.testing.assert_allclose(weights.mean(axis=0), 1 / 3, atol=0.02)
    np.testing.assert_allclose(weights.var(axis=0), 1 / 18, atol=0.006)


def test_tsmixup_is_nan_exactly_where_a_part_is() -> None:
    rng = _rng(2)
    a, b, c = (rng.normal(size=64) for _ in range(3))
    a[[1, 5, 9]] = np.nan
    b[20:30] = np.nan
    c[-1] = np.nan
    mixed, weights = tsmixup(_rng(9), [a, b, c])
    np.testing.assert_array_equal(np.isnan(mixed), np.isnan(a) | np.isnan(b) | np.isnan(c))
    # The observed points are standardised over what each part observed.
    expected = sum(w * _z(p) for w, p in zip(weights, [a, b, c], strict=True))
    np.testing.assert_allclose(mixed, expected, atol=1e-9)


def test_tsmixup_flat_or_empty_parts_contribute_zeros() -> None:
    rng = _rng(3)
    wave = np.sin(np.arange(64) / 5.0)
    flat = np.full(64, 1013.25, dtype=np.float32)
    mixed, weights = tsmixup(rng, [flat, wave])
    np.testing.assert_allclose(mixed, weights[1] * _z(wave), atol=1e-9)
    empty, _ = tsmixup(rng, [np.full(64, np.nan), wave])
    assert np.isnan(empty).all()


def _real(n: int = 4) -> list[Series]:
    rng = _rng(4)
    return [
        Series(
            name=f"s{i}",
            values=(rng.normal(size=3000).cumsum() * 10**i).astype(np.float32),
            interval_s=60.0,
            source="test",
        )
        for i in range(n)
    ]


def _old_batch(sampler: WindowSampler, step: int, batch_size: int) -> np.ndarray:
    """The sampler's loop as it was before mixup: no random number spent on the choice."""
    rng = np.random.default_rng([sampler.seed, step])
    out = np.empty((batch_size, sampler.length), dtype=np.float32)
    for i in range(batch_size):
        while True:
            window = sampler._draw(rng)
            context = window[: sampler.context_length]
            if rng.random() < sampler.damage_probability:
                context[:] = sampler._damage(rng, context)
            if rng.random() < sampler.short_history_probability:
                keep = int(rng.integers(MIN_OBSERVED, sampler.context_length))
                context[: sampler.context_length - keep] = np.nan
            future = window[sampler.context_length :]
            if np.isfinite(context).sum() >= MIN_OBSERVED and np.isfinite(future).any():
                out[i] = window
                break
    return out


def test_no_mixup_reproduces_the_batches_bit_for_bit() -> None:
    kwargs = {"real": _real(), "synthetic": SyntheticMixture(), "real_weight": 0.5, "seed": 7}
    default = WindowSampler(64, 16, **kwargs)
    explicit = WindowSampler(64, 16, mixup_probability=0.0, **kwargs)
    for step in (0, 3):
        old = _old_batch(default, step, 32)
        np.testing.assert_array_equal(default.batch(step, 32), old)
        np.testing.assert_array_equal(explicit.batch(step, 32), old)


def test_mixup_batches_are_seeded_and_new() -> None:
    kwargs = {"real": _real(), "synthetic": SyntheticMixture(), "seed": 1}
    mixed = WindowSampler(64, 16, mixup_probability=1.0, **kwargs)
    plain = WindowSampler(64, 16, **kwargs)
    a = mixed.batch(5, 32)
    np.testing.assert_array_equal(a, mixed.batch(5, 32))
    assert not np.array_equal(a, mixed.batch(6, 32), equal_nan=True)
    assert not np.array_equal(a, plain.batch(5, 32), equal_nan=True)
    assert a.shape == (32, 80)
    assert a.dtype == np.float32
    assert (np.isfinite(a[:, :64]).sum(1) >= MIN_OBSERVED).all()
    assert np.isfinite(a[:, 64:]).any(1).all()


def test_mixing_one_standardised_shape_gives_it_back_in_new_units() -> None:
    # Every crop of a ramp standardises to the same line, so any convex mix of them is that
    # line again: only the weights summing to one and the new units can change it.
    ramps = [
        Series(
            name=f"r{i}",
            values=np.arange(1000.0 * (i + 1)).astype(np.float32) * (i + 1),
            interval_s=60.0,
            source="test",
        )
        for i in range(3)
    ]
    sampler = WindowSampler(
        64,
        16,
        real=ramps,
        seed=2,
        damage_probability=0,
        short_history_probability=0,
        mixup_probability=1.0,
    )
    batch = sampler.batch(0, 32).astype(np.float64)
    steps = np.diff(batch, axis=1)
    # float32 with offsets of up to ~300 scales rounds each step by up to ~1 %.
    np.testing.assert_allclose(steps / steps[:, :1], 1.0, rtol=0.02)
    assert np.unique(np.round(np.log10(np.abs(steps[:, 0])))).size > 3  # in many units


@pytest.mark.parametrize("probability", [-0.1, 1.5, float("nan")])
def test_bad_mixup_probability_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="mixup_probability"):
        WindowSampler(64, 16, synthetic=SyntheticMixture(), mixup_probability=probability)
