from __future__ import annotations

import importlib.util

import pytest

# An agent-only install has no torch: the model tests are not collected there.
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def nano():
    import torch
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(0)
    return MoecastModel(preset("nano")).eval()


@pytest.fixture
def nano_dense():
    import torch
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(0)
    return MoecastModel(preset("nano", n_experts=1, top_k=1)).eval()
