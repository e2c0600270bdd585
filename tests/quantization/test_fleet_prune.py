"""Pruning from the expert load a group's agents report (`moecast fleet prune-for`): the site's
readings never leave it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from moecast.model.checkpoint import save_checkpoint
from moecast.quantization.prune import prune_by_load

from moecast.bundle.format import DEV_PUBLIC_KEY, load_bundle
from moecast.cli import main
from moecast.fleet.client import Connection, aggregate_loads, connected
from tests.agent.conftest import Broker, broker  # noqa: F401  # the fixture

# nano: 2 layers of 4 experts, top-2. The site uses experts 0, 1 (and a little 3) in layer 0
# and 2, 3 in layer 1.
LOAD = np.array([[50.0, 40.0, 0.5, 9.5], [0.0, 1.0, 60.0, 39.0]])


def test_the_fewest_experts_that_carry_the_coverage_are_kept(nano) -> None:
    model = copy.deepcopy(nano)
    result = prune_by_load(model, LOAD, coverage=0.95)
    assert result.keep == 3  # layer 0 needs three: 0 and 1 carry 90 %
    assert result.kept_experts == [[0, 1, 3], [1, 2, 3]]
    assert model.kept_experts == result.kept_experts
    assert min(result.coverage) >= 0.95


def test_an_explicit_count_keeps_the_most_loaded(nano) -> None:
    model = copy.deepcopy(nano)
    result = prune_by_load(model, LOAD, keep=2)
    assert result.kept_experts == [[0, 1], [2, 3]]
    assert result.coverage == pytest.approx([0.9, 0.99])


@pytest.mark.parametrize(
    ("load", "keep", "message"),
    [
        (LOAD[:1], None, "must be"),
        (-LOAD, None, "non-negative"),
        (np.zeros_like(LOAD), None, "no routing load"),
        (LOAD, 1, "keep must be"),
    ],
)
def test_bad_loads_are_refused(nano, load, keep, message) -> None:
    with pytest.raises(ValueError, match=message):
        prune_by_load(copy.deepcopy(nano), load, keep=keep)


def test_agents_columns_map_back_to_expert_indices() -> None:
    sections = {
        "full": {"experts_per_layer": [[0, 1, 2, 3]] * 2, "load": LOAD.tolist(), "runs": 3},
        # Already pruned: its columns are experts 0, 1, 3 and 1, 2, 3.
        "pruned": {"experts_per_layer": [[0, 1, 3], [1, 2, 3]], "load": [[1, 2, 3]] * 2},
        "broken": {"experts_per_layer": [[0]], "load": [[1.0]]},
    }
    site = aggregate_loads(sections, 2, 4)
    assert site.agents == ["full", "pruned"]
    assert site.runs == 3
    np.testing.assert_allclose(site.load, LOAD + np.array([[1, 2, 0, 3], [0, 1, 2, 3]]))


def test_prune_for_builds_a_signed_bundle_from_the_groups_metrics(
    nano,
    broker: Broker,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    checkpoint = save_checkpoint(nano, tmp_path / "ckpt")
    metrics = {
        "moecast/agents/a1/metrics": {"group": "site-7", "load": LOAD.tolist(), "runs": 5},
        "moecast/agents/a2/metrics": {"group": "site-7", "load": (2 * LOAD).tolist(), "runs": 5},
        "moecast/agents/a3/metrics": {"group": "other", "load": LOAD[::-1].tolist(), "runs": 5},
    }
    with connected(Connection(broker.url)) as client:
        for topic, section in metrics.items():
            document = {"expert_load": {**section, "experts_per_layer": [[0, 1, 2, 3]] * 2}}
            client.publish(topic, json.dumps(document), 1, True).wait_for_publish(5)
    out = tmp_path / "pruned"
    code = main(
        [
            "fleet", "prune-for", "--group", "site-7", "--broker", broker.url, "--listen", "1",
            "--checkpoint", str(checkpoint), "--dev-key", "--out", str(out),
            "--model-version", "5", "--keep-experts", "2",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = load_bundle(out, [DEV_PUBLIC_KEY]).manifest
    assert manifest.model_version == 5
    assert manifest.experts_per_layer == [[0, 1], [2, 3]]
    assert manifest.training["pruning"]["agents"] == ["a1", "a2"]
    assert "expert load of 2 agent(s), 10 model runs" in capsys.readouterr().out
