from __future__ import annotations

import json

import pytest
import torch
from moecast.model.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint


def test_save_load_round_trip_is_exact(nano, tmp_path):
    save_checkpoint(nano, tmp_path / "ckpt", metadata={"steps": 12})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == nano.config
    for (name, a), (_, b) in zip(
        nano.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    x = torch.randn(2, 64)
    for h, q in nano.predict(x).items():
        assert torch.equal(q, loaded.predict(x)[h])
    assert checkpoint_metadata(tmp_path / "ckpt") == {"steps": 12}


def test_dense_twin_round_trip(nano_dense, tmp_path):
    loaded = load_checkpoint(save_checkpoint(nano_dense, tmp_path))
    assert loaded.config.n_experts == 1


def test_missing_file_names_the_file(nano, tmp_path):
    save_checkpoint(nano, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        load_checkpoint(tmp_path)


def test_config_with_unknown_fields_is_rejected(nano, tmp_path):
    save_checkpoint(nano, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["config"]["n_expert"] = 3
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="n_expert"):
        load_checkpoint(tmp_path)


def test_float16_checkpoint_loads_as_float32_with_rounded_weights(nano, tmp_path):
    save_checkpoint(nano, tmp_path / "half", dtype=torch.float16)
    loaded = load_checkpoint(tmp_path / "half")
    full = (tmp_path / "half" / "model.safetensors").stat().st_size
    for name, value in nano.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == torch.float32
        assert torch.equal(got, value.half().float()), name
    save_checkpoint(nano, tmp_path / "full")
    assert full < 0.6 * (tmp_path / "full" / "model.safetensors").stat().st_size
