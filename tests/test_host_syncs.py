"""No per-step host syncs: an ftlab training step reads nothing back from the device, and
FaultGuard's decisions (a nan/inf loss; a SIGTERM under DDP) cost one sync, plus one all-reduce
under DDP, per ``faults.check_every`` optimizer steps, taken at the same step on every rank.

Counted with ``torch.profiler`` in real ``train.py`` runs by ``StepProfile`` from
``benchmarks/bench_syncs.py``: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``,
``float(t)``) step by step, except torch's optimizers reading their CPU step counts, and the
gloo collectives. What a CPU cannot show (syncs CUDA hides in ``nonzero`` or ``unique``) is
listed by the bench, not asserted here."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_syncs

TESTS = str(Path(__file__).parent)
ENV = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}  # PoisonAt

# Profile 4 steps after 3 of warm-up: batches 3-6, which end at global steps 4-7. With
# faults.check_every=2 the checks fall at the ends of the profiled steps 0 and 2. max_steps, not
# limit_train_batches, which would turn the feature cache off.
SKIP, STEPS = 3, 4
PROFILED = [o for o in bench_syncs.SETUP if not o.startswith("freeze=")]
PROFILED += [f"trainer.max_steps={SKIP + STEPS + 2}"]
CHECKED_STEPS = [1, 0, 1, 0]
FREEZE = {
    "full fine-tuning": "freeze=none",
    "linear probe on cached features": "freeze=linear_probe",
}


@pytest.mark.slow
@pytest.mark.parametrize("freeze", FREEZE.values(), ids=FREEZE)
def test_a_training_step_syncs_only_at_faultguards_checks(freeze):
    overrides = [*PROFILED, freeze, "trainer=cpu", "faults.check_every=2"]
    (rank,) = bench_syncs.run_ftlab(overrides, SKIP, STEPS)
    assert rank["step_syncs"] == CHECKED_STEPS, rank
    assert rank["collectives"] == 0


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_ftlab_adds_one_sync_and_one_all_reduce_per_check_to_lightnings():
    overrides = [*PROFILED, "freeze=none", "trainer=ddp_cpu"]
    ftlab = bench_syncs.run_ftlab([*overrides, "faults.check_every=2"], SKIP, STEPS)
    plain = bench_syncs.run_plain(overrides, SKIP, STEPS)
    assert [r["rank"] for r in ftlab] == [r["rank"] for r in plain] == [0, 1]
    for ours, lightning in zip(ftlab, plain, strict=True):
        extra = [a - b for a, b in zip(ours["step_syncs"], lightning["step_syncs"], strict=True)]
        assert extra == CHECKED_STEPS, (ours, lightning)
        assert ours["collectives"] - lightning["collectives"] == 2, (ours, lightning)


class PoisonAt(L.Callback):
    """Test hook: the inputs of the batch trained at global step ``step`` become nan, on rank
    ``rank`` only (None: on every rank)."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            batch[0].fill_(float("nan"))


def poison(step: int, rank: int | None = None) -> list[str]:
    return [
        "+callbacks.poison._target_=test_host_syncs.PoisonAt",
        f"+callbacks.poison.step={step}",
        f"+callbacks.poison.rank={'null' if rank is None else rank}",
    ]


NAN_RUN = [*FAST, "freeze=none", "trainer.max_epochs=1", "trainer.limit_train_batches=8"]


@pytest.mark.slow
def test_a_nan_loss_between_checks_stops_the_run_before_anything_of_it_is_saved(tmp_path):
    # Saves after global steps 3 and 6; the loss of step 4 is nan; no periodic check before 6.
    done = run_cli(
        "train.py",
        *NAN_RUN,
        "faults.check_every=1000",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        *poison(4),
        run_dir=tmp_path,
        env=ENV,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert line.startswith("error: loss is nan at global step 4 (epoch 0, phase 0: "), line
    assert f"{last} (global step 3) is the last saved state" in line, line
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["global_step"] == 4
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3  # the save after step 6 was refused, not written
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert not list(last.parent.glob("best-*.ckpt"))  # no validation ran on the nan weights


@pytest.mark.slow
@pytest.mark.ddp
def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_check(tmp_path):
    done = run_cli(
        "train.py",
        *NAN_RUN,
        "trainer=ddp_cpu",
        "faults.check_every=2",
        *poison(3, rank=1),  # checked at the end of step 4, on both ranks
        run_dir=tmp_path,
        env=ENV,
        timeout=300,  # a rank left behind would wait in its next collective
    )
    assert done.returncode == 2, done.stderr[-3000:]
    # Each rank stops with the same line, at the same step (the two may share a line of stderr).
    stops = re.findall(
        r"error: loss is nan at global step (\d+) \(epoch 0, phase 0: [^)]*\): training stopped, "
        "no checkpoint was saved before it",
        done.stderr,
    )
    assert stops == ["3", "3"], done.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["global_step"] == 3


# Ops whose output size depends on the data: on CUDA each reads a value back (hidden syncs a
# CPU profile cannot count as _local_scalar_dense).
DATA_DEPENDENT = ("aten::bincount", "aten::unique", "aten::_unique2", "aten::nonzero")


def test_a_training_step_runs_no_data_dependent_op():
    """Macro F1 (``torch.bincount``) and torchmetrics' label checks (``torch.unique``) ran at
    every training step; training steps now update unvalidated micro accuracy only."""
    from torch.profiler import profile

    from ftlab import Classifier, build_backbone

    module = Classifier(build_backbone("test_vit", source="timm", pretrained=False), 10)
    batch = (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    module.training_step(batch, 0)  # first calls may take other paths
    with profile() as prof:
        module.training_step(batch, 1)
    ran = {event.key for event in prof.key_averages()}
    assert ran.isdisjoint(DATA_DEPENDENT), sorted(ran & set(DATA_DEPENDENT))
    assert "aten::addmm" in ran  # the step itself was profiled
