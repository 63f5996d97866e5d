"""Cached features for head-only epochs: the same head as on the fly, invalidation by weights,
data and transform, the switch to images at the phase boundary (after a resume too), L-BFGS."""

from __future__ import annotations

import json
from typing import ClassVar

import lightning as L
import pytest
import torch
from conftest import FAST
from omegaconf import OmegaConf
from torch import nn

from ftlab.backbones import build_backbone
from ftlab.data import build_data
from ftlab.errors import FtlabError
from ftlab.finetuning import build_plan
from ftlab.finetuning.features import FEATURES, cache_key, fit_head_lbfgs, plan_cache, solver_name
from ftlab.finetuning.freezing import apply_trainable
from ftlab.train import build_model, train

# Whole splits (a cache is only used when every batch is visited), kept small.
WHOLE = [
    *FAST,
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "data.max_train_samples=64",
    "deterministic=true",
    "test=false",
]


class Inputs(L.Callback):
    """Per epoch: whether batches were cached features, and the backbone's mode and grads."""

    runs: ClassVar[list[Inputs]] = []

    def __init__(self) -> None:
        self.epochs: dict[int, tuple[bool, bool, bool]] = {}
        Inputs.runs.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        inputs = batch[0]
        self.epochs[trainer.current_epoch] = (
            isinstance(inputs, dict) and FEATURES in inputs,
            pl_module.backbone.training,
            pl_module.backbone_trains(),
        )


INPUTS = ["+callbacks.inputs._target_=test_feature_cache.Inputs"]


@pytest.fixture(autouse=True)
def _clear():
    Inputs.runs.clear()


def _run(make_cfg, tmp_path, *overrides: str) -> tuple[dict, dict]:
    """Train; return metrics.json and the last checkpoint's state dict."""
    train(make_cfg(*WHOLE, f"paths.cache_dir={tmp_path / 'cache'}", *overrides))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    return metrics, state


def test_linear_probe_on_cached_features_learns_the_same_head(make_cfg, tmp_path):
    common = ["freeze=linear_probe", "head_dropout=0.3", *INPUTS]  # dropout: the same masks too
    off, off_state = _run(make_cfg, tmp_path, *common, "freeze.cache_features=false")
    computed, computed_state = _run(make_cfg, tmp_path, *common)
    disk, disk_state = _run(make_cfg, tmp_path, *common)

    assert off["feature_cache"]["used"] is False
    assert computed["feature_cache"]["sources"] == {"train": "computed", "val": "computed"}
    assert disk["feature_cache"]["sources"] == {"train": "disk", "val": "disk"}
    # On the fly and cached: a frozen backbone in eval mode, images vs features.
    assert [run.epochs for run in Inputs.runs] == [
        {0: (False, False, False), 1: (False, False, False)},
        {0: (True, False, False), 1: (True, False, False)},
        {0: (True, False, False), 1: (True, False, False)},
    ]
    heads = [k for k in off_state["state_dict"] if k.startswith("head.")]
    assert len(heads) == 2
    for state in (computed_state, disk_state):
        for key in heads:
            torch.testing.assert_close(
                state["state_dict"][key], off_state["state_dict"][key], rtol=1e-4, atol=1e-6
            )
    assert computed["val"]["acc"] == pytest.approx(off["val"]["acc"])


def test_lp_ft_switches_to_images_at_the_boundary_and_resumes_exactly(make_cfg, tmp_path):
    common = ["freeze=lp_ft", "freeze.lp_epochs=2", "freeze.head_solver=lbfgs"]
    common += ["trainer.max_epochs=3", *INPUTS]
    full, reference = _run(make_cfg, tmp_path, *common)
    assert Inputs.runs[0].epochs == {
        0: (True, False, False),
        1: (True, False, False),
        2: (False, True, True),  # fine-tuning: images through a training backbone
    }
    solver = full["feature_cache"]["head_solver"]
    assert solver["loss_after"] < solver["loss_before"]

    stop = ["+callbacks.stop._target_=test_finetuning.StopAfter", "+callbacks.stop.epoch=0"]
    _run(make_cfg, tmp_path, *common, *stop)
    resumed, final = _run(
        make_cfg, tmp_path, *common, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"
    )
    # Lightning counts from the resumed epoch; the switch still happens at epoch 2.
    assert Inputs.runs[-1].epochs == {1: (True, False, False), 2: (False, True, True)}
    assert resumed["feature_cache"]["head_solver"] == {}  # the fitted head came from the ckpt
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


def _digits(image_size: int = 32, **keys) -> object:
    backbone_spec = build_backbone("test_resnet", source="timm", pretrained=False).input_spec
    config = {"_target_": "ftlab.data.DigitsDataModule", "image_size": image_size, **keys}
    return build_data(OmegaConf.create(config), backbone_spec)


def test_cache_key_changes_with_weights_data_transform_and_split():
    torch.manual_seed(0)
    backbone = build_backbone("test_resnet", source="timm", pretrained=False)
    data = _digits()
    key = cache_key(backbone, data, "train", "32-true")
    torch.manual_seed(0)
    same = build_backbone("test_resnet", source="timm", pretrained=False)
    assert cache_key(same, _digits(), "train", "32-true") == key
    changed = {
        "weights": cache_key(
            build_backbone("test_resnet", source="timm", pretrained=False), data, "train", "32-true"
        ),
        "data": cache_key(backbone, _digits(max_train_samples=10), "train", "32-true"),
        "transform": cache_key(backbone, _digits(image_size=40), "train", "32-true"),
        "split": cache_key(backbone, data, "val", "32-true"),
        "precision": cache_key(backbone, data, "train", "bf16-mixed"),
    }
    with torch.no_grad():  # same weights_id, other weights: the state checksum sees it
        next(same.parameters()).add_(1.0)
    changed["state"] = cache_key(same, data, "train", "32-true")
    assert key not in changed.values() and len(set(changed.values())) == len(changed)


@pytest.fixture
def toy_plan():
    module = nn.ModuleDict(
        {"backbone": nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), "head": nn.Linear(4, 2)}
    )
    groups = [
        ("block", ("backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias")),
        ("head", ("head.weight", "head.bias")),
    ]
    named = dict(module.named_parameters())

    def make(**freeze):
        bn = {"backbone.1.weight", "backbone.1.bias"}
        return build_plan(freeze, groups, named, {"lr": 0.1}, (), bn)

    return make


class _Data:
    augment = False


def test_cache_is_used_only_where_valid_and_says_why(toy_plan):
    trainer = {"limit_train_batches": 1.0, "limit_val_batches": 1.0}
    probe, data = toy_plan(name="linear_probe"), _Data()
    assert plan_cache(probe, {}, data, trainer).until_epoch is None
    lp_ft = plan_cache(toy_plan(name="lp_ft", lp_epochs=3), {}, data, trainer)
    assert (lp_ft.until_epoch, lp_ft.splits, lp_ft.cached(2), lp_ft.cached(3)) == (
        3,
        ("train", "val"),
        True,
        False,
    )
    val_limited = {"limit_train_batches": None, "limit_val_batches": 5}
    assert plan_cache(probe, {}, data, val_limited).splits == ("train",)

    augmenting = _Data()
    augmenting.augment = True
    reasons = {
        "off": plan_cache(probe, {"cache_features": False}, data, trainer),
        "full": plan_cache(toy_plan(name="none"), {}, data, trainer),
        "bn": plan_cache(toy_plan(name="linear_probe", bn="train"), {}, data, trainer),
        "augment": plan_cache(probe, {}, augmenting, trainer),
        "limit": plan_cache(probe, {}, data, {"limit_train_batches": 3}),
    }
    assert not any(r.used for r in reasons.values())
    assert reasons["off"].reason == "freeze.cache_features=false"
    assert (
        reasons["full"].reason
        == reasons["bn"].reason
        == "phase 0 trains more than the head (block)"
    )
    assert "data.augment=true" in reasons["augment"].reason
    assert "trainer.limit_train_batches=3" in reasons["limit"].reason

    with pytest.raises(FtlabError, match=r"freeze\.cache_features=yes must be true or false"):
        plan_cache(probe, {"cache_features": "yes"}, data, trainer)
    with pytest.raises(FtlabError, match="head_solver=lbfgs fits the head on cached features"):
        solver_name({"head_solver": "lbfgs"}, reasons["augment"])
    with pytest.raises(FtlabError, match="head_solver='adam' is unknown"):
        solver_name({"head_solver": "adam"}, plan_cache(probe, {}, data, trainer))


def test_lbfgs_fits_a_probe_far_better_than_an_untrained_head():
    torch.manual_seed(0)
    centers = torch.randn(5, 32) * 2
    labels = torch.arange(500) % 5
    features = centers[labels] + torch.randn(500, 32)
    head = nn.Linear(32, 5)
    result = fit_head_lbfgs(head, features, labels, l2=1e-3)
    assert result["loss_after"] < 0.3 * result["loss_before"]
    assert (head(features).argmax(1) == labels).float().mean() > 0.95


def test_frozen_backbone_runs_in_eval_mode_so_its_outputs_are_fixed(make_cfg):
    cfg = make_cfg("model=minilm", "data=bbc_news", "data.max_length=32", "freeze=linear_probe")
    module, data = build_model(cfg)
    inputs, _ = next(iter(data.train_dataloader()))
    apply_trainable(module, module.plan.trainable(0))
    module.train()
    assert not module.backbone.training and module.head.training
    torch.testing.assert_close(module.backbone(inputs), module.backbone(inputs), rtol=0, atol=0)
    apply_trainable(module, set(dict(module.named_parameters())))
    module.train()
    assert module.backbone.training  # a training backbone keeps its dropout
