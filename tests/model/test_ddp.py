"""Two CPU processes under torchrun (gloo) end a few DDP steps with identical weights."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from moecast.model.train import TrainConfig, train

    out = Path(sys.argv[1])
    cfg = TrainConfig(preset="nano", steps=3, batch_size=4, warmup_steps=1, real_weight=0.0,
                      log_every=1, checkpoint_every=3, run=out / "run")
    model = train(cfg)
    torch.save(model.state_dict(), out / f"rank{dist.get_rank()}.pt")
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", str(script), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # The ranks drew different batches, so identical weights mean gradients were averaged;
    # and training did move them away from the seed initialisation.
    from moecast.model.config import preset
    from moecast.model.network import MoecastModel

    torch.manual_seed(0)
    fresh = MoecastModel(preset("nano")).state_dict()
    assert any(not torch.equal(fresh[n], rank0[n]) for n in rank0)
