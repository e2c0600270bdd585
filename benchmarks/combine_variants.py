"""The sensor benchmark with decoding variants of the shipped weights as extra models.

    python benchmarks/combine_variants.py --model combine=variant:p2 --model p4=variant:p4 ...

Any other argument is `zero_shot_sensor.py`'s. A `--model NAME=variant:KEY` loads the
`--checkpoint` weights with the config overrides `VARIANTS[KEY]` (decoding settings only), so
the variants of `network.skill_combine` are scored on the same windows and damage as the
network alone and the baselines, in one run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import zero_shot_sensor
from moecast.model.checkpoint import load_checkpoint
from moecast.model.cli_forecast import SHIPPED_WEIGHTS
from moecast.model.forecast import Forecaster

# Every variant sets what it uses; the seasonal mean (bundle v7's) is off unless named.
P4 = {"skill_combine": True, "combine_power": 4.0, "combine_cycles": 0}
DRIFT = {**P4, "combine_drifts": (32, 128)}
SHIFT = {**DRIFT, "combine_shifted": True}  # bundle v2's decoding
LES = {**SHIFT, "combine_smoothing": (0.05, 0.1, 0.2, 0.4)}  # with damping 0.95: v3's, shipped

# Bundle v7's decoding, shipped.
V7 = {
    **LES,
    "combine_damping": (0.95, 1.0),
    "combine_cycles": 32,
    "combine_cycles_guard": 3.0,
}

# Bundle v8's.
V8 = {**V7, "combine_trends": (0.02, 0.05, 0.2)}

VARIANTS: dict[str, dict] = {
    "off": {"skill_combine": False},
    "p1": {**P4, "combine_power": 1.0},
    "p2": {**P4, "combine_power": 2.0},
    "p4": P4,
    "p4-late": {**P4, "combine_min_origin": 256},
    "p4-narrow": {**P4, "combine_narrow": True},
    "p4-drift": DRIFT,
    "p4-drift-long": {**P4, "combine_drifts": (64, 256)},
    "p4-shift": {**P4, "combine_shifted": True},
    "p4-drift-shift": SHIFT,
    "p4-drift-shift-guard2": {**SHIFT, "combine_guard": 2.0},
    "p4-drift-shift-guard3": {**SHIFT, "combine_guard": 3.0},
    "les": LES,
    "les-guard3": {**LES, "combine_guard": 3.0},
    "les-d98": {**LES, "combine_damping": 0.98},
    "les-d95": {**LES, "combine_damping": 0.95},
    # The combination's power, tuned on the pretraining series (`--sources pretrain`), not on
    # the held-out ones.
    "les-d95-p3": {**LES, "combine_damping": 0.95, "combine_power": 3.0},
    "les-d95-p6": {**LES, "combine_damping": 0.95, "combine_power": 6.0},
    "les-d95-p8": {**LES, "combine_damping": 0.95, "combine_power": 8.0},
    "les-d95-p12": {**LES, "combine_damping": 0.95, "combine_power": 12.0},
    "les-d95-p16": {**LES, "combine_damping": 0.95, "combine_power": 16.0},
    "les-d95-p32": {**LES, "combine_damping": 0.95, "combine_power": 32.0},
    # Hold decoding judged by the pairs that start at the last value (`hold_by_level`).
    "les-d95-level": {**LES, "combine_damping": 0.95, "hold_by_level": True},
    # Smoothing damped 0.95 and undamped side by side; the context picks (`combine_damping`).
    "les-d95-d100": {**LES, "combine_damping": (0.95, 1.0)},
    # Also the mean of the same phase over up to this many cycles (`combine_cycles`); 32:
    # bundle v7's, shipped.
    **{
        f"les-d95-d100-c{k}": {**LES, "combine_damping": (0.95, 1.0), "combine_cycles": k}
        for k in (3, 5, 8, 16, 32)
    },
    # The seasonal means dropped where the level has just moved (`combine_cycles_guard`).
    **{
        f"les-d95-d100-c32-g{g}": {
            **LES,
            "combine_damping": (0.95, 1.0),
            "combine_cycles": 32,
            "combine_cycles_guard": float(g),
        }
        for g in (2, 3)
    },
    # Also Holt's trend with the level at the last value (`combine_trends`), in the drift
    # family; "t" lists the betas.
    **{
        f"v7-t{name}": {**V7, "combine_trends": betas}
        for name, betas in {
            "05-20": (0.05, 0.2),
            "10": (0.1,),
            "02-05-20": (0.02, 0.05, 0.2),
        }.items()
    },
    # The combination's power, one for every head ("p12") or one per head h=1 / 8 / 32 / 64
    # ("p12-12-4-4", bundle v9's).
    **{f"v8-p{p}": {**V8, "combine_power": float(p)} for p in (6, 8, 12, 16, 24)},
    "v8-p12-12-4-4": {**V8, "combine_power": (12.0, 12.0, 4.0, 4.0)},
}


def from_variant(path: str | Path, **kwargs) -> Forecaster:
    text = str(path)
    if not text.startswith("variant:"):
        return Forecaster(load_checkpoint(path), **kwargs)
    return Forecaster(load_checkpoint(SHIPPED_WEIGHTS, **VARIANTS[text.removeprefix("variant:")]))


if __name__ == "__main__":
    zero_shot_sensor.Forecaster.from_pretrained = staticmethod(from_variant)  # type: ignore[method-assign]
    sys.exit(zero_shot_sensor.main())
