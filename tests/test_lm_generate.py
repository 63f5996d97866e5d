"""ftlab-generate on a causal-LM checkpoint, and the merged export transformers' pipeline
loads with greedy tokens equal to ftlab's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ftlab.errors import FtlabError
from ftlab.lm.generate import export_merged, load_causal_lm, prompt_tokens, run
from ftlab.train import train
from tests.conftest import ROOT
from tests.lm_tiny import tiny_causal_dir
from tests.test_lm_train import TINY


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ftlab.cli import conf_dir

    root = tmp_path_factory.mktemp("gen")
    tiny = tiny_causal_dir(root)
    out = root / "run"
    GlobalHydra.instance().clear()
    overrides = [
        *TINY, f"model.weights={tiny}", "data=chatterbot", "freeze=peft", "freeze.method=lora",
        "trainer.max_epochs=1", "+freeze.peft.init_lora_weights=gaussian",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    train(cfg)
    GlobalHydra.instance().clear()
    return json.loads((out / "metrics.json").read_text())["best_checkpoint"], root


def test_the_checkpoint_rebuilds_with_its_adapters(lora_run):
    ckpt, _ = lora_run
    module = load_causal_lm(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(module.state_dict()) == set(state)
    assert any("lora_A" in k for k in state)
    text = run([f"ckpt_path={ckpt}", "prompt=Hello", "max_new_tokens=4"])
    assert isinstance(text, str)


def test_merged_folder_gives_ftlabs_greedy_tokens_through_pipeline(lora_run):
    from transformers import pipeline

    ckpt, root = lora_run
    module = load_causal_lm(ckpt)
    module.max_new_tokens = 6
    ids = prompt_tokens(module, "How are you?")
    base = module.generate_ids(ids)
    # A few steps barely move LoRA's B from zero: give the adapters weight that changes the
    # greedy tokens, so that an export which dropped them would fail here.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith("model.norm.weight"):  # the trained final norm (plan's head)
                p.mul_(1.5)
    ours = module.generate_ids(ids)
    with torch.no_grad():
        ours_logits = module(
            {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))}
        )
    assert ours != base
    folder = export_merged(module, root / "merged")
    # The merge ran on a copy: the module keeps its adapters and its logits.
    assert any("lora_B" in n for n, _ in module.named_parameters())
    assert not any(
        "lora" in k for k in json.dumps(json.loads((folder / "config.json").read_text()))
    )
    pipe = pipeline("text-generation", model=str(folder), device="cpu")
    # The same prompt tokens (a decode/encode round trip of byte-level BPE may differ).
    out = pipe.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=6, do_sample=False, pad_token_id=pipe.tokenizer.pad_token_id,
        eos_token_id=pipe.tokenizer.eos_token_id,
    )  # fmt: skip
    theirs = out[0, len(ids) :].tolist()
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.allclose(pipe.model(input_ids=x).logits, ours_logits, atol=1e-4)
    assert theirs == ours


def test_gpt2_conv1d_lora_merges_to_the_same_logits(tmp_path):
    """GPT-2's fused c_attn is a transformers Conv1D (weight stored [in, out]): peft merges it
    with fan_in_fan_out; the merged folder must give the adapted model's logits."""
    from transformers import AutoModelForCausalLM

    from ftlab.adapters import inject_lora
    from ftlab.backbones.hf_causal import build_causal_backbone
    from ftlab.lm.module import CausalLM

    tiny = tiny_causal_dir(tmp_path, arch="gpt2", layers=2)
    backbone = build_causal_backbone("tiny-gpt2", weights=str(tiny))
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["c_attn"]}
    inject_lora(backbone, settings)
    module = CausalLM(backbone, freeze=None).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        ours = module({"input_ids": x, "attention_mask": torch.ones_like(x)})
        plain = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()(input_ids=x).logits
    assert not torch.allclose(ours, plain, atol=1e-2)  # the adapter changes the logits
    folder = export_merged(module, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert not any(".base_layer." in k or "lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, ours, atol=1e-4)


def test_the_cli_prints_one_line_or_one_error(lora_run, tmp_path):
    ckpt, _ = lora_run
    cmd = [sys.executable, "-m", "ftlab.lm.generate", f"ckpt_path={ckpt}", "prompt=Hi",
           "max_new_tokens=3"]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr[-1000:]
    bad = subprocess.run([*cmd[:3], f"ckpt_path={tmp_path}/none.ckpt"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "no such file" in bad.stderr
    # export=merged from the command line: the folder gives the checkpoint's logits.
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    merged = subprocess.run([*cmd[:4], "export=merged", f"out={out}"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-1000:]
    assert merged.stdout.strip().splitlines()[-1] == str(out)
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        ours = load_causal_lm(ckpt)({"input_ids": x, "attention_mask": torch.ones_like(x)})
        theirs = AutoModelForCausalLM.from_pretrained(str(out)).eval()(input_ids=x).logits
    assert torch.allclose(theirs, ours, atol=1e-4)


def test_a_checkpoint_without_the_lm_record_is_refused(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save(
        {"state_dict": {}, "ftlab_lm": {"name": "a", "weights": None, "_target_": "os.system"}},
        path,
    )
    with pytest.raises(FtlabError, match="not a causal-LM checkpoint"):
        load_causal_lm(str(path))
