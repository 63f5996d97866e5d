"""Multi-node DDP on one machine: two "nodes" of one process each, over loopback with gloo.

Each node is launched the way a cluster launches ``train.py`` on every node (Lightning's own
environment variables: ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``). The run must match a
single process on the same global batch: the interleaved shards of one (seed, epoch) shuffle
make up exactly the single process's batches, and DDP averages the shard gradients.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, read_metrics, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ddp]  # three training processes, two of them gloo

# test_vit: LayerNorm only, so per-shard batch statistics (BatchNorm) cannot differ.
COMMON = [
    "model=test_vit",
    "data=digits",
    "data.image_size=32",
    "freeze=gradual",
    "freeze.step=2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "deterministic=true",
]
GLOBAL_BATCH = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.mark.timeout(600)
def test_two_nodes_of_one_process_match_one_process(tmp_path: Path) -> None:
    single = tmp_path / "single"
    done = run_cli(
        "train.py",
        *COMMON,
        "trainer=cpu",
        f"data.batch_size={GLOBAL_BATCH}",
        run_dir=single,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    port = free_port()
    nodes = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(rank))
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            *COMMON,
            "trainer=ddp_cpu",
            "trainer.devices=1",
            "trainer.num_nodes=2",
            f"data.batch_size={GLOBAL_BATCH // 2}",
            f"hydra.run.dir={tmp_path / f'node{rank}'}",
        ]
        nodes.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [node.communicate(timeout=540) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]

    multi = read_metrics(tmp_path / "node0")  # global rank 0 writes the run's results
    assert not (tmp_path / "node1" / "metrics.json").exists()
    assert multi["world_size"] == 2
    assert len(multi["rank_checksums"]) == 2 and len(set(multi["rank_checksums"])) == 1
    assert [len(set(p["rank_checksums"])) for p in multi["phases"]] == [1, 1]

    one = read_metrics(single)
    assert one["world_size"] == 1
    for stage in ("val", "test"):
        assert multi[stage]["acc"] == pytest.approx(one[stage]["acc"], abs=1e-6), stage
        assert multi[stage]["loss"] == pytest.approx(one[stage]["loss"], rel=1e-4), stage
    a, b = weights(tmp_path / "node0"), weights(single)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
