"""LoRA through peft: only adapters and head train, the adapter is small and peft-loadable, the
merged export reproduces the logits, and the plan treats adapters as their own group."""

from __future__ import annotations

import json
from typing import ClassVar

import lightning as L
import pytest
import torch
from conftest import FAST
from peft import PeftModel
from safetensors.torch import load_file

from ftlab.adapters import add_lora, is_adapter_param, load_adapter, merge_lora
from ftlab.backbones import build_backbone
from ftlab.compose import model_and_data as build_model
from ftlab.errors import FtlabError
from ftlab.evaluate import evaluate, load_checkpoint, restore_module
from ftlab.finetuning.spec import FreezeSpec
from ftlab.module import Classifier, make_head
from ftlab.train import train

BERT = ["model=minilm", "data=bbc_news", "data.max_length=32", "data.batch_size=8"]


class TrainedNames(L.Callback):
    """Names of the parameters that require grad during training, and of those that changed."""

    runs: ClassVar[list[TrainedNames]] = []

    def __init__(self) -> None:
        TrainedNames.runs.append(self)

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.requires_grad = {n for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_end(self, trainer, pl_module):
        self.changed = {
            n for n, p in pl_module.named_parameters() if not torch.equal(p, self.start[n])
        }


PROBE = ["+callbacks.names._target_=test_lora.TrainedNames"]


@pytest.fixture(autouse=True)
def _clear():
    TrainedNames.runs.clear()


def _without_images(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o not in ("data=digits", "data.image_size=32")]


def test_vit_trains_only_adapters_and_head_and_saves_a_small_peft_adapter(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, *PROBE, "model=test_vit", "freeze=lora", "freeze.r=4", "test=false")
    train(cfg)
    names = TrainedNames.runs[0]
    adapters = {n for n in names.requires_grad if is_adapter_param(n)}
    heads = {n for n in names.requires_grad if n.startswith("head.")}
    assert names.requires_grad == adapters | heads and len(adapters) == 4 * 6 * 2  # 4 layers x 6
    assert {n.split(".")[-3] for n in adapters} == {"lora_A", "lora_B"}
    assert names.changed <= names.requires_grad and names.changed & adapters

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    lora = metrics["lora"]
    assert (lora["r"], lora["modules"], lora["base_weights_trained"]) == (4, 24, False)
    assert 0 < metrics["trainable_share"] < 0.1
    adapter = tmp_path / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "ftlab_base.json",
        "head.safetensors",
    ]
    full_bytes = 4 * metrics["total_params"]
    assert lora["adapter_bytes"] == (adapter / "adapter_model.safetensors").stat().st_size
    assert lora["adapter_bytes"] < 0.1 * full_bytes

    # The run's best weights, then the same model from the adapter loaded by peft itself.
    module, _ = restore_module(load_checkpoint(metrics["best_checkpoint"]))
    images = torch.randn(4, 3, 32, 32)
    expected = module.eval()(images)
    # Lightning's own entry point gives the same model, adapters included.
    lightning_way = Classifier.load_from_checkpoint(metrics["best_checkpoint"])
    assert not lightning_way.training and lightning_way.record == module.record
    torch.testing.assert_close(lightning_way(images), expected, rtol=0, atol=0)
    L.seed_everything(cfg.seed, verbose=False)  # the random init the run started from
    fresh = build_backbone("test_vit", source="timm", pretrained=False)
    peft_model = PeftModel.from_pretrained(fresh.model, str(adapter)).eval()
    head = make_head(fresh.num_features, 10)
    head.load_state_dict(load_file(adapter / "head.safetensors"))
    torch.testing.assert_close(head(peft_model(images)), expected, rtol=1e-5, atol=1e-5)
    L.seed_everything(cfg.seed, verbose=False)
    ours = build_backbone("test_vit", source="timm", pretrained=False)
    load_adapter(ours, adapter)
    torch.testing.assert_close(head(ours.eval()(images)), expected, rtol=1e-5, atol=1e-5)

    # export=merged: a plain timm model (no peft) with the adapters folded in.
    evaluate(make_cfg("export=merged", f"ckpt_path={metrics['best_checkpoint']}", config="eval"))
    merged = tmp_path / "merged"
    plain = build_backbone("test_vit", source="timm", pretrained=False)
    plain.model.load_state_dict(load_file(merged / "model.safetensors"))
    head.load_state_dict(load_file(merged / "head.safetensors"))
    torch.testing.assert_close(head(plain.eval()(images)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # MiniLM with adapters
def test_minilm_adapts_query_and_value(make_cfg, tmp_path):
    overrides = _without_images([*FAST, *PROBE, *BERT, "freeze=lora", "test=false"])
    train(make_cfg(*overrides, "trainer.max_epochs=1"))
    trained = TrainedNames.runs[0].requires_grad
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained if is_adapter_param(n)}
    assert adapted == {"query", "value"}
    assert {n for n in trained if not is_adapter_param(n)} == {"head.weight", "head.bias"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 12 and config["r"] == 8  # 6 layers x 2


def test_timm_cnn_gets_conv_adapters_that_merge_exactly():
    torch.manual_seed(0)
    backbone = build_backbone("test_resnet", source="timm", pretrained=False)
    convs = [n for n, m in backbone.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert add_lora(backbone, {"name": "lora", "r": 2})["target_modules"] == convs
    with torch.no_grad():  # nonzero adapters (peft starts B at 0), so merging has work to do
        for name, param in backbone.named_parameters():
            if is_adapter_param(name):
                param.normal_(std=0.1)
    images = torch.randn(2, 3, 32, 32)
    expected = backbone.eval()(images)
    merge_lora(backbone.model)
    assert not any(is_adapter_param(n) for n, _ in backbone.named_parameters())
    torch.testing.assert_close(backbone(images), expected, rtol=1e-4, atol=1e-5)


def test_lora_then_full_fine_tuning_is_a_valid_schedule(make_cfg):
    phases = "[{epoch: 0, groups: [head, lora]}, {epoch: 2, groups: [backbone]}]"
    schedule = ["model=test_vit", "data=digits", "freeze=schedule", "freeze.lora={r: 4}"]
    module, _ = build_model(make_cfg(*schedule, f"freeze.phases={phases}"))
    plan, named = module.plan, dict(module.named_parameters())
    adapters = {n for n in named if is_adapter_param(n)}
    assert plan.trainable(0) == adapters | {"head.weight", "head.bias"}
    assert plan.trainable(1) == set(named)
    assert plan.groups[-2:] == ("lora", "head")
    assert plan.to_schedule()["lora"] == {"r": 4}
    # Like the head, the adapters train from phase 0 unless a phase names them.
    implicit = "[{epoch: 0, groups: [head]}, {epoch: 2, groups: [backbone]}]"
    module, _ = build_model(make_cfg(*schedule, f"freeze.phases={implicit}"))
    assert module.plan.trainable(0) == plan.trainable(0)

    regex = "[{epoch: 0, groups: [head, lora]}, {epoch: 2, groups: ['^backbone\\.']}]"
    with pytest.raises(FtlabError, match=r"phases\[1\].*group 'backbone' is the base weights"):
        build_model(make_cfg(*schedule, f"freeze.phases={regex}"))


def test_plan_true_writes_a_schedule_that_rebuilds_the_lora_model(make_cfg, tmp_path):
    vit = ["model=test_vit", "data=digits"]
    train(make_cfg(*vit, "freeze=lora", "freeze.r=4", "plan=true"))
    lora, _ = build_model(make_cfg(*vit, "freeze=lora", "freeze.r=4"))
    path = tmp_path / "schedule.yaml"
    again, _ = build_model(make_cfg(*vit, "freeze=schedule", f"freeze.phases={path}"))
    assert again.plan.lora == lora.plan.lora and again.plan.lora["r"] == 4
    assert again.plan.trainable(0) == lora.plan.trainable(0)
    assert again.plan.units == lora.plan.units


@pytest.mark.parametrize(
    ("freeze", "message"),
    [
        ({"name": "lora", "r": 0}, r"freeze\.r=0 must be an integer >= 1"),
        ({"name": "lora", "alpha": -1}, r"freeze\.alpha=-1 must be a number > 0"),
        ({"name": "lora", "dropout": 1.5}, r"freeze\.dropout=1\.5 must be in \[0, 1\)"),
        (
            {"name": "lora", "target_modules": ["nope"]},
            r"freeze\.target_modules=\['nope'\] matches",
        ),
        ({"name": "schedule", "lora": {"rank": 4}}, r"freeze\.lora\.rank is not a LoRA key"),
        ({"name": "schedule", "lora": {"r": 2.5}}, r"freeze\.lora\.r=2\.5 must be an integer"),
    ],
)
def test_bad_lora_settings_name_the_key(freeze, message):
    backbone = build_backbone("test_vit", source="timm", pretrained=False)
    with pytest.raises(FtlabError, match=message):
        add_lora(backbone, freeze)


def test_lora_settings_come_from_either_spelling():
    def lora(freeze):
        return FreezeSpec.parse(freeze).lora

    assert lora({"name": "lora", "r": 4, "bn": "frozen"}) == {"r": 4}
    assert lora({"name": "schedule", "lora": {"alpha": 8}}) == {"alpha": 8}
    assert lora({"name": "schedule", "lora": None}) is None
    assert lora({"name": "gradual"}) is None
