"""Surgical fine-tuning, Auto-RGN, init_from and forgetting (Lee et al., ICLR 2023).

The plans name the groups that train; Auto-RGN's factors equal ‖g‖/‖θ‖ per group computed here
from the very gradients the optimizer used, land in the optimizer's param groups through the
scheduler, survive a resume and agree across DDP ranks; init_from loads the tensors and refuses
another architecture; the forgetting numbers equal a direct evaluation of both checkpoints.
"""

# The bad-input tables keep one entry a line.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, read_metrics, run_cli
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from ftlab import build_backbone, compose
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.cli import conf_dir
from ftlab.data import build_data
from ftlab.errors import FtlabError
from ftlab.module import Classifier
from ftlab.options import load_option
from ftlab.train import train

GROUPS = ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]  # timm test_resnet


def trained_groups(freeze: dict) -> list[str]:
    backbone = build_backbone("test_resnet", pretrained=False)
    plan = Classifier(backbone, 10, freeze=freeze).plan
    return sorted({u.group for u in plan.units}, key=plan.groups.index)


# --- surgical: which groups train ---------------------------------------------------------------

SURGICAL = {
    "first": (["first"], ["stem"]),
    "middle": (["middle"], ["layer2.0"]),
    "last": (["last"], ["layer4.0"]),
    "a name": (["layer3.0"], ["layer3.0"]),
    "indices": ([1, -2], ["layer1.0", "layer3.0"]),
    "mixed, out of order": (["last", "first"], ["stem", "layer4.0"]),
    "one, unbracketed": ("middle", ["layer2.0"]),
}


@pytest.mark.parametrize(("blocks", "expected"), SURGICAL.values(), ids=SURGICAL)
def test_surgical_trains_the_named_blocks_and_the_head(blocks, expected):
    assert trained_groups({"name": "surgical", "blocks": blocks}) == [*expected, "head"]


BAD = {
    "no blocks": ({"name": "surgical", "blocks": []}, r"freeze.blocks=\[\] must be a non-empty"),
    "index out of range": (
        {"name": "surgical", "blocks": [5]},
        r"index 5 is out of range.*5 layer groups",
    ),
    "unknown name": (
        {"name": "surgical", "blocks": ["layer9"]},
        r"'layer9' is not a backbone layer group: use first",
    ),
    "the head": ({"name": "surgical", "blocks": ["head"]}, r"the head always trains"),
    "twice": ({"name": "surgical", "blocks": ["first", 0]}, r"names a layer group twice"),
    "unknown key": ({"name": "surgical", "k": 2}, r"freeze.k is not a key of freeze=surgical"),
    "rgn steps": (
        {"name": "auto_rgn", "every_n_steps": 0},
        r"freeze.every_n_steps=0 must be an integer >= 1",
    ),
}


@pytest.mark.parametrize(("freeze", "message"), BAD.values(), ids=BAD)
def test_bad_freeze_settings_fail_in_one_line(freeze, message):
    with pytest.raises(FtlabError, match=message) as err:
        trained_groups(freeze)
    assert "\n" not in str(err.value)


# --- Auto-RGN -----------------------------------------------------------------------------------


class ByHand(L.Callback):
    """At every optimizer step, ‖g‖/‖θ‖ per layer group in float64 from the gradients the
    optimizer is about to apply; at every batch start, the lrs in the optimizer and the
    scheduler's own factor."""

    def __init__(self) -> None:
        self.rgn: list[dict[str, float]] = []
        self.lrs: list[tuple[list[float], float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = dict(pl_module.named_parameters())
        row = {}
        for group, names in pl_module.layer_groups():
            grad = sum(float(params[n].grad.double().pow(2).sum()) for n in names)
            weight = sum(float(params[n].detach().double().pow(2).sum()) for n in names)
            row[group] = (grad / weight) ** 0.5
        self.rgn.append(row)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)  # cosine with warmup (LambdaLR)
        self.lrs.append(([g["lr"] for g in trainer.optimizers[0].param_groups], factor))


def test_auto_rgn_factors_are_the_relative_gradient_norms_and_reach_the_optimizer(make_cfg):
    cfg = make_cfg(*FAST, "freeze=auto_rgn", "freeze.every_n_steps=1")
    module, data = compose.model_and_data(cfg)
    probe = ByHand()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=data)

    history = module.auto_rgn.history
    assert [h["step"] for h in history] == [0, 1, 2]  # every optimizer step (every_n_steps=1)
    for step, rgn in enumerate(probe.rgn):
        top = max(rgn.values())
        expected = {g: v / top for g, v in rgn.items()}
        assert history[step]["scales"] == pytest.approx(expected, rel=1e-5), step
    # The factors differ across groups (else this test could not tell them apart)...
    assert min(history[0]["scales"].values()) < 0.5
    # ...and the optimizer holds them: each param group's lr is its unit's lr times the factor
    # of the step before, times the scheduler's factor (which must not have undone it).
    plan = module.plan
    for step in (1, 2):
        lrs, factor = probe.lrs[step]
        scales = history[step - 1]["scales"]
        expected = [u.lr * scales[u.group] * factor for u in plan.units]
        assert lrs == pytest.approx(expected, rel=1e-6), step


class StopAfter(L.Callback):
    """Stops a run at the end of ``epoch``'s validation, after its checkpoint, as a
    preemption would (before on_train_epoch_end: the next start finishes that epoch's window)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.slow  # three runs: through, stopped, resumed (~20 s)
def test_auto_rgn_factors_survive_a_resume(make_cfg, tmp_path):
    common = [*FAST, "freeze=auto_rgn", "trainer.max_epochs=3", "deterministic=true"]
    train(make_cfg(*common))
    reference = read_metrics(tmp_path)
    ref_ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    for f in (tmp_path / "checkpoints").iterdir():
        f.unlink()
    (tmp_path / "metrics.json").unlink()

    stop = ["+callbacks.stop._target_=test_surgical.StopAfter", "+callbacks.stop.epoch=1"]
    train(make_cfg(*common, *stop))
    stopped = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(stopped["callbacks"]["ftlab.AutoRGN"]["record"]) == [0]  # epoch 1's is pending
    (tmp_path / "metrics.json").unlink()

    train(make_cfg(*common, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    resumed = read_metrics(tmp_path)
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(reference["auto_rgn"]) == ["0", "1", "2"]
    assert list(resumed["auto_rgn"]) == ["0", "1", "2"]  # the stopped run's epochs kept
    for epoch, scales in reference["auto_rgn"].items():
        assert resumed["auto_rgn"][epoch] == pytest.approx(scales, rel=1e-6), epoch
    ref_lrs = [g["lr"] for g in ref_ckpt["optimizer_states"][0]["param_groups"]]
    lrs = [g["lr"] for g in final["optimizer_states"][0]["param_groups"]]
    assert lrs == pytest.approx(ref_lrs, rel=1e-6)
    base_lrs = final["lr_schedulers"][0]["base_lrs"]  # the cosine ends at 0: its base lrs
    assert base_lrs == pytest.approx(ref_ckpt["lr_schedulers"][0]["base_lrs"], rel=1e-6)
    assert len(set(base_lrs)) > 2  # the factors differ per group
    assert resumed["test"]["acc"] == pytest.approx(reference["test"]["acc"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.ddp
def test_auto_rgn_factors_agree_across_ddp_ranks(tmp_path):
    run = run_cli(
        "train.py",
        *FAST,
        "freeze=auto_rgn",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        run_dir=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["world_size"] == 2
    sums = metrics["auto_rgn_rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert list(metrics["auto_rgn"]) == ["0", "1"]
    assert set(metrics["auto_rgn"]["0"]) == {*GROUPS, "head"}
    assert max(metrics["auto_rgn"]["0"].values()) == 1.0
    assert (tmp_path / "auto_rgn.png").stat().st_size > 10_000


# --- init_from and forgetting -------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The first stage: a full fine-tune on digits, in this process (~4 s); its best checkpoint."""
    run_dir = tmp_path_factory.mktemp("source")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose_config("train", [*FAST, "freeze=none"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    train(cfg)
    GlobalHydra.instance().clear()
    return Path(read_metrics(run_dir)["best_checkpoint"])


def test_init_from_loads_the_backbone_and_the_head(make_cfg, source):
    module, _ = compose.model_and_data(make_cfg(*FAST, f"model.init_from={source}"))
    state = load_checkpoint(str(source))["state_dict"]
    ours = module.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items()), "a tensor was not loaded"
    assert module.started_from == {
        "path": str(source.resolve()),
        "model": "test_resnet",
        "classes": 10,
        "head": "loaded",
    }


def test_init_from_with_other_classes_keeps_a_new_head(make_cfg, source, tmp_path):
    ckpt = torch.load(source, weights_only=True)
    ckpt["ftlab"]["classes"] = [f"c{i}" for i in range(10)]  # another task's classes
    other = tmp_path / "other_classes.ckpt"
    torch.save(ckpt, other)
    module, _ = compose.model_and_data(make_cfg(*FAST, f"model.init_from={other}"))
    ours = module.state_dict()
    backbone = [k for k in ckpt["state_dict"] if k.startswith("backbone.")]
    assert all(torch.equal(ours[k], ckpt["state_dict"][k]) for k in backbone)
    assert not torch.equal(ours["head.weight"], ckpt["state_dict"]["head.weight"])
    assert module.started_from["head"] == "new"


def _drop_a_key(path: Path, tmp_path: Path) -> Path:
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["backbone.model.conv1.0.weight"]
    out = tmp_path / "fewer.ckpt"
    torch.save(ckpt, out)
    return out


REFUSED = {
    "another model": (
        lambda src, tmp: src,
        ["model=test_vit"],
        r"model\.init_from=.* holds a test_resnet model, this run builds test_vit: give a test_vit checkpoint",
    ),
    "other keys": (
        _drop_a_key,
        [],
        r"model\.init_from=.* does not fit this run's backbone: 1 missing",
    ),
    "no file": (
        lambda src, tmp: tmp / "nope.ckpt",
        [],
        r"model\.init_from=.*nope.ckpt: no such file",
    ),
}


@pytest.mark.parametrize(("path", "extra", "message"), REFUSED.values(), ids=REFUSED)
def test_init_from_refuses_another_architecture_in_one_line(
    make_cfg, source, tmp_path, path, extra, message
):
    ckpt = path(source, tmp_path)
    cfg = make_cfg(*FAST, *extra, f"model.init_from={ckpt}")
    with pytest.raises(FtlabError, match=message) as err:
        compose.model_and_data(cfg)
    assert "\n" not in str(err.value)


def _accuracy(module: torch.nn.Module, loader, batches: int) -> float:
    module.eval()
    right = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            right += int((module(x).argmax(1) == y).sum())
            total += len(y)
    return right / total


@pytest.mark.slow  # a second run on top of the module's source run (~12 s)
def test_two_stage_surgical_run_records_forgetting_equal_to_a_direct_evaluation(source, tmp_path):
    run = run_cli(
        "train.py",
        *FAST,
        f"model.init_from={source}",
        "eval.forgetting=digits",
        "freeze=surgical",
        "freeze.blocks=[first]",
        "optimizer.lr=0.01",  # move the weights enough that the source task can suffer
        run_dir=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["init_from"]["head"] == "loaded"
    # surgical: only the first block (and the head) moved from the source weights
    change = metrics["drift"]["weight_change"]
    assert change["stem"] > 0 and all(change[g] == 0 for g in GROUPS[1:]), change

    # the source test set, read as the run read it (its size and batches), scored directly
    cfg = {**load_option("data", "digits", "test"), "image_size": 32, "batch_size": 16}
    cfg.pop("ood")
    source_module, backbone = restore_module(load_checkpoint(str(source)), str(source))
    data = build_data(cfg, backbone.input_spec)
    data.prepare_data()
    data.setup("test")
    adapted, _ = restore_module(load_checkpoint(metrics["best_checkpoint"]))
    before = _accuracy(source_module, data.test_dataloader(), 2)
    after = _accuracy(adapted, data.test_dataloader(), 2)
    forgetting = metrics["forgetting"]
    assert forgetting == pytest.approx(
        {
            "data": "digits",
            "source_acc": before,
            "adapted_acc": after,
            "drop": before - after,
            "head": "adapted",
        },
        abs=1e-6,
    )
    assert before != after  # the run changed what the source task sees


def test_forgetting_needs_init_from(make_cfg, tmp_path):
    with pytest.raises(
        FtlabError,
        match=r"eval\.forgetting=digits compares with the source run's model: set model\.init_from=",
    ):
        train(make_cfg(*FAST, "eval.forgetting=digits"))
