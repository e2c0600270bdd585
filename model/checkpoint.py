"""Checkpoints: a directory with `model.safetensors` and `config.json`.

A model pruned for a site keeps every expert's weights; config.json lists the experts each
layer routes to under `kept_experts` (absent when nothing is pruned, as in older checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from moecast.model.config import ModelConfig
from moecast.model.network import MoecastModel
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KEPT_EXPERTS_KEY = "kept_experts"


def save_checkpoint(
    model: MoecastModel,
    directory: str | Path,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the weights and config; `metadata` (JSON-able) goes into config.json.

    `dtype=torch.float16` halves the file for shipping; loading always gives a float32 model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()
    }
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": "moecast"})
    document = {"config": json.loads(model.config.to_json()), "metadata": metadata or {}}
    if model.is_pruned:
        document[KEPT_EXPERTS_KEY] = model.kept_experts
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return directory


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", **overrides: Any
) -> MoecastModel:
    """Rebuild the model from a checkpoint directory, in eval mode. `overrides` change config
    fields that hold no weights (e.g. `hold_decoding=False`)."""
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a moecast checkpoint: {name} is missing")
    document = json.loads((directory / CONFIG_FILE).read_text())
    config = ModelConfig.from_json(json.dumps(document["config"])).replace(**overrides)
    model = MoecastModel(config)
    model.load_state_dict(load_file(directory / WEIGHTS_FILE, device=str(device)), strict=True)
    if KEPT_EXPERTS_KEY in document:
        model.prune_experts(document[KEPT_EXPERTS_KEY])
    return model.to(device).eval()


def checkpoint_metadata(directory: str | Path) -> dict[str, Any]:
    document = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return document.get("metadata", {})
