"""Freezing schedules in real Lightning runs: frozen means frozen, lrs follow the plan under any
scheduler, resume is exact, and every backbone family works."""

from __future__ import annotations

import math
from typing import ClassVar

import lightning as L
import pytest
import torch
from conftest import FAST, read_metrics

from ftlab.train import train


class Probe(L.Callback):
    """Records, per epoch, what frozen parameters look like and the lr of every param group."""

    runs: ClassVar[list[Probe]] = []

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.lr_checks: list[tuple[str, float, float]] = []
        self.lrs_by_epoch: dict[int, dict[str, float]] = {}
        self.frozen_counts: list[int] = []
        Probe.runs.append(self)

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.state_dict().items()}

    def on_after_backward(self, trainer, pl_module):
        for name, p in pl_module.named_parameters():
            if not p.requires_grad and p.grad is not None:
                self.violations.append(f"{name} has .grad while frozen")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        plan, opt = pl_module.plan, trainer.optimizers[0]
        phase = plan.phase_at(trainer.current_epoch)
        config = trainer.lr_scheduler_configs[0] if trainer.lr_scheduler_configs else None
        factor = 1.0
        if config is not None and hasattr(config.scheduler, "lr_lambdas"):
            factor = config.scheduler.lr_lambdas[0](trainer.global_step)
        for unit, group in zip(plan.units, opt.param_groups, strict=True):
            if unit.phase <= phase:
                self.lr_checks.append((unit.name, group["lr"], plan.lr_at(unit, phase) * factor))
        self.lrs_by_epoch.setdefault(
            trainer.current_epoch,
            {
                u.name: g["lr"] / plan.lr_at(u, phase)
                for u, g in zip(plan.units, opt.param_groups, strict=True)
                if u.phase <= phase
            },
        )

    def on_train_epoch_end(self, trainer, pl_module):
        state = trainer.optimizers[0].state
        frozen = [(n, p) for n, p in pl_module.named_parameters() if not p.requires_grad]
        self.frozen_counts.append(len(frozen))
        for name, p in frozen:
            if state.get(p):
                self.violations.append(f"{name} has optimizer state while frozen")
            if not torch.equal(p.detach(), self.start[name]):
                self.violations.append(f"{name} changed while frozen")
        # Frozen BatchNorm layers keep their pretrained running statistics.
        for mod_name, mod in pl_module.named_modules():
            frozen_bn = isinstance(mod, torch.nn.BatchNorm2d) and not mod.weight.requires_grad
            if frozen_bn and not torch.equal(
                mod.running_mean, self.start[f"{mod_name}.running_mean"]
            ):
                self.violations.append(f"{mod_name} running_mean changed while frozen")


class StopAfter(L.Callback):
    """Stops a run at the end of ``epoch`` as a preemption would, after its checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


PROBE = ["+callbacks.probe._target_=test_finetuning.Probe"]


@pytest.fixture(autouse=True)
def _clear_probes():
    Probe.runs.clear()


def test_frozen_parameters_get_no_grad_no_state_and_stay_bit_identical(make_cfg):
    cfg = make_cfg(*FAST, *PROBE, "freeze=gradual", "freeze.step=2", "trainer.max_epochs=3")
    train(cfg)
    probe = Probe.runs[0]
    assert probe.violations == []
    # Phases really froze something, and less of it every epoch (top-down unfreezing).
    assert probe.frozen_counts[0] > probe.frozen_counts[1] > probe.frozen_counts[2] > 0


def test_lrs_follow_the_plan_under_cosine_with_warmup(make_cfg):
    cfg = make_cfg(
        *FAST,
        *PROBE,
        "freeze=lp_ft",
        "freeze.lp_epochs=1",
        "freeze.ft_lr_scale=0.1",
        "optimizer.layer_decay=0.7",
        "scheduler=cosine",
        "scheduler.warmup=2",
    )
    train(cfg)
    checks = Probe.runs[0].lr_checks
    assert len({name for name, _, _ in checks}) > 4
    for name, actual, expected in checks:
        assert actual == pytest.approx(expected, rel=1e-9), name


def test_lrs_keep_their_ratios_under_reduce_on_plateau(make_cfg):
    cfg = make_cfg(
        *FAST,
        *PROBE,
        "freeze=gradual",
        "optimizer.lr_range=[1e-4,1e-2]",
        "scheduler=plateau",
        "scheduler.mode=max",
        "scheduler.patience=0",
        "trainer.max_epochs=3",
    )
    train(cfg)
    by_epoch = Probe.runs[0].lrs_by_epoch
    factors = [sorted(set(round(r, 12) for r in ratios.values())) for ratios in by_epoch.values()]
    # One common factor per epoch for every trained group: the plan's ratios survive the scheduler.
    assert all(len(f) == 1 for f in factors), factors
    assert factors[0] == [1.0] and factors[-1][0] < 1.0  # and the plateau did reduce them


def _final_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow  # three runs: through, stopped, resumed
def test_resume_after_a_phase_change_matches_an_uninterrupted_run(make_cfg, tmp_path):
    common = [*FAST, "freeze=gradual", "trainer.max_epochs=3", "deterministic=true"]
    full = make_cfg(*common)
    train(full)
    reference = _final_state(tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").rename(tmp_path / "reference.ckpt")
    for f in (tmp_path / "checkpoints").iterdir():
        f.unlink()

    stopped = make_cfg(
        *common, "+callbacks.stop._target_=test_finetuning.StopAfter", "+callbacks.stop.epoch=1"
    )
    train(stopped)
    interrupted = _final_state(tmp_path)
    assert interrupted["epoch"] == 1
    assert interrupted["callbacks"]["ftlab.PhaseCallback"]["applied"] == 1

    resumed = make_cfg(*common, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    train(resumed)
    final = _final_state(tmp_path)
    assert final["epoch"] == reference["epoch"] == 2
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    ref_opt, opt = reference["optimizer_states"][0], final["optimizer_states"][0]
    assert [g["lr"] for g in opt["param_groups"]] == [g["lr"] for g in ref_opt["param_groups"]]
    assert opt["state"].keys() == ref_opt["state"].keys()
    for k in ref_opt["state"]:
        assert torch.equal(opt["state"][k]["exp_avg"], ref_opt["state"][k]["exp_avg"])
    assert final["lr_schedulers"] == reference["lr_schedulers"]
    assert (
        final["callbacks"]["ftlab.PhaseCallback"] == reference["callbacks"]["ftlab.PhaseCallback"]
    )


class GroupProbe(L.Callback):
    """Records, at each epoch's first step, which layer groups train (every parameter requires
    grad; a group half trainable is recorded as such) and how many elements train."""

    runs: ClassVar[list[GroupProbe]] = []

    def __init__(self) -> None:
        self.training: list[list[str]] = []  # per epoch: the groups training, input to head
        self.numel: list[int] = []
        GroupProbe.runs.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        params = dict(pl_module.named_parameters())
        row = []
        for group, names in pl_module.layer_groups():
            trains = {params[name].requires_grad for name in names}
            if trains == {True}:
                row.append(group)
            elif trains == {True, False}:
                row.append(f"{group} (partly)")
        self.training.append(row)
        self.numel.append(sum(p.numel() for p in params.values() if p.requires_grad))


# Each family's backbone layer groups, input first (the head comes after them).
FAMILIES = {
    "cnn_bn": (["model=test_cnn"], ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]),
    "vit": (["model=test_vit"], ["stem", *(f"blocks.{i}" for i in range(5)), "blocks.5+norm"]),
    "bert_like": (
        ["model=minilm", "data=bbc_news", "data.max_length=32", "data.batch_size=8"],
        ["embeddings", *(f"encoder.layer.{i}" for i in range(6))],
    ),
}
# The groups training in epochs 0 and 1, given a family's backbone groups.
TRAINING = {
    "gradual": lambda groups: [["head"], [groups[-1], "head"]],  # the head, then the top too
    "lp_ft": lambda groups: [["head"], [*groups, "head"]],  # the probe, then everything
    "bottom_k": lambda groups: [[*groups[1:], "head"]] * 2,  # freeze.k=1: not the input group
}


@pytest.mark.parametrize("freeze", list(TRAINING))
@pytest.mark.parametrize(
    "family",  # MiniLM's runs take ~6 s each (cnn and vit under 1.5 s)
    [pytest.param(f, marks=pytest.mark.slow) if f == "bert_like" else f for f in FAMILIES],
)
def test_schedules_run_on_every_family(make_cfg, tmp_path, freeze, family):
    GroupProbe.runs.clear()
    model, groups = FAMILIES[family]
    probe = "+callbacks.groups._target_=test_finetuning.GroupProbe"
    overrides = [*FAST, *model, f"freeze={freeze}", "trainer.max_epochs=2", probe]
    if freeze == "bottom_k":
        overrides.append("freeze.k=1")
    if "data=bbc_news" in model:
        overrides = [o for o in overrides if o not in ("data=digits", "data.image_size=32")]
    value = train(make_cfg(*overrides))
    assert value is not None and 0.0 <= value <= 1.0 and not math.isnan(value)

    (run,) = GroupProbe.runs
    assert run.training == TRAINING[freeze](groups)
    # metrics.json's phases name the groups each one unfroze and count what then trained.
    metrics = read_metrics(tmp_path)
    for phase in metrics["phases"]:
        epoch = phase["start_epoch"]
        before = run.training[epoch - 1] if epoch else []
        assert phase["unfrozen"] == [g for g in run.training[epoch] if g not in before], phase
        assert phase["trainable_params"] == run.numel[epoch], phase
    starts = [e for e, row in enumerate(run.training) if not e or row != run.training[e - 1]]
    assert [phase["start_epoch"] for phase in metrics["phases"]] == starts
    assert metrics["trainable_params"] == run.numel[-1]


class BNModes(L.Callback):
    """Records, at every training batch, which BatchNorm layers normalize with batch statistics,
    and the running means before and after the fit."""

    runs: ClassVar[list[BNModes]] = []

    def __init__(self) -> None:
        self.training_bn: set[str] = set()
        self.start: dict[str, torch.Tensor] = {}
        self.moved: set[str] = set()
        self.affine_moved: set[str] = set()
        BNModes.runs.append(self)

    def _bns(self, pl_module):
        return [(n, m) for n, m in pl_module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def on_train_start(self, trainer, pl_module):
        for name, mod in self._bns(pl_module):
            self.start[name] = mod.running_mean.clone()
            self.start[f"{name}.weight"] = mod.weight.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.training_bn |= {name for name, mod in self._bns(pl_module) if mod.training}

    def on_train_end(self, trainer, pl_module):
        for name, mod in self._bns(pl_module):
            if not torch.equal(mod.running_mean, self.start[name]):
                self.moved.add(name)
            if not torch.equal(mod.weight.detach(), self.start[f"{name}.weight"]):
                self.affine_moved.add(name)


@pytest.mark.parametrize("bn", ["frozen", "eval"])
def test_bn_eval_keeps_pretrained_statistics_while_every_weight_trains(make_cfg, bn):
    BNModes.runs.clear()
    cfg = make_cfg(
        *FAST,
        "freeze=none",
        f"freeze.bn={bn}",
        "+callbacks.bn_modes._target_=test_finetuning.BNModes",
    )
    train(cfg)
    probe = BNModes.runs[0]
    assert len(probe.start) > 0
    bns = {k for k in probe.start if not k.endswith(".weight")}
    assert probe.affine_moved == bns  # every BN layer's affine parameters trained, either way
    if bn == "eval":  # normalized with the running stats: they never move
        assert probe.training_bn == set() and probe.moved == set()
    else:  # a trainable BN layer normalizes with batch stats and updates its running stats
        assert probe.training_bn == bns and probe.moved == bns
