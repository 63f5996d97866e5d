"""``tune=lr_find`` and ``tune=batch_size``: Lightning's finders on ftlab's plans."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import FAST, read_metrics, run_cli

import ftlab
from ftlab.tuning import find_lr


class Recording(ftlab.Classifier):
    """Records the param groups' lrs as the optimizer applies them (after every other hook)."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        if not hasattr(self, "applied"):
            self.applied = []
            inner.register_step_pre_hook(
                lambda opt, *_: self.applied.append([g["lr"] for g in opt.param_groups])
            )
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)


def test_the_range_test_moves_every_group_with_the_head(tmp_path: Path):
    L.seed_everything(0, verbose=False)
    backbone = ftlab.build_backbone("test_resnet", source="timm", pretrained=False)
    data = ftlab.build_data(
        {"_target_": "ftlab.data.DigitsDataModule", "image_size": 32, "batch_size": 16},
        backbone.input_spec,
    )
    data.setup("fit")
    optimization = ftlab.Optimization(lr=1e-3, layer_decay=0.5)
    module = Recording(backbone, 10, freeze="none", optimization=optimization)
    planned = [module.plan.lr_at(u, 0) / optimization.lr for u in module.plan.units]

    def trainer(callbacks):
        return L.Trainer(
            callbacks=callbacks, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip

    found = find_lr(module, data, trainer, {"num_training_steps": 12, "min_lr": 1e-5}, tmp_path)
    assert len(module.applied) == 12 and (tmp_path / "lr_find.png").is_file()
    head = next(i for i, u in enumerate(module.plan.units) if u.group == "head" and u.decay)
    for lrs in module.applied:  # each step: the plan's ratios to the head, exactly
        assert [lr / lrs[head] for lr in lrs] == pytest.approx(planned, rel=1e-9)
    # The candidates rise from min_lr, and the head's lr is the candidate.
    heads = [lrs[head] for lrs in module.applied]
    assert heads[0] == pytest.approx(1e-5) and heads == sorted(heads)
    assert found["points"] == 12 and found["configured_lr"] == 1e-3
    assert max(planned) == 1.0 and min(planned) < 0.05  # the decay spans the depth


@pytest.mark.slow
def test_lr_find_then_trains_with_the_suggestion(tmp_path: Path):
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py", *FAST, "freeze=lp_ft", "freeze.lp_epochs=1", "tune=lr_find",
        "tune.num_training_steps=30", "optimizer.layer_decay=0.7",
        "trainer.limit_train_batches=null", "trainer.max_epochs=2", run_dir=run_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)
    lr = metrics["tune"]["suggestion"]
    assert metrics["tune"]["kind"] == "lr_find" and (run_dir / "lr_find.png").is_file()
    assert lr != metrics["tune"]["configured_lr"]
    # The run's plan was built from it: the head's phase-0 lr is the suggestion, and lp_ft's
    # second phase and the decayed groups follow from it.
    assert metrics["phases"][0]["lr"]["head"] == pytest.approx(lr)
    assert not list(run_dir.glob(".lr_find_*.ckpt"))  # Lightning's temporary checkpoint


@pytest.mark.slow
def test_batch_size_finder_and_suggest_only(tmp_path: Path):
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py", *FAST, "data.batch_size=8", "tune=batch_size", "tune.max_trials=2",
        "train=false", run_dir=run_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)
    # 8 fits, then 16 fits and the trials are spent: 16 (a CPU never runs out of memory first).
    assert metrics == {
        "status": "tuned",
        "tune": {"kind": "batch_size", "suggestion": 16, "configured_batch_size": 8},
    }
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # suggest only: no training


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune=lr_find", "tune.mode=cubic"], "tune.mode='cubic' is unknown for tune=lr_find"),
        (["tune=lr_find", "+tune.steps_per_trial=3"], "tune.steps_per_trial is not a key of"),
        (["tune=lr_find", "tune.min_lr=0"], "tune.min_lr=0 must be a number > 0"),
    ],
    ids=["mode", "key of the other finder", "zero lr"],
)
def test_bad_finder_settings_are_one_line(tmp_path: Path, overrides, message):
    done = run_cli("train.py", *FAST, *overrides, run_dir=tmp_path / "run")
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1
