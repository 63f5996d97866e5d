"""Checkpoints written by earlier ftlab code keep loading: tests/data holds one written at
commit a6b22b7 (before the task seam; LoRA on tiny ViT), by tests/data/make_ckpt_a6b22b7.py."""

from __future__ import annotations

from pathlib import Path

import torch

from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.module import Classifier

DATA = Path(__file__).resolve().parent / "data"
OLD = DATA / "ckpt_a6b22b7_lora.ckpt"


def test_a_checkpoint_of_a6b22b7_loads_with_its_adapters_and_gives_its_logits() -> None:
    ckpt = load_checkpoint(str(OLD))
    record = ckpt["ftlab"]
    # Fields it never had read as their defaults: a classification task.
    assert record.task == {"name": "classification", "options": {}}
    assert record.classes == ["a", "b", "c"] and record.lora["r"] == 2
    module, _ = restore_module(ckpt, str(OLD))
    expected = torch.load(DATA / "ckpt_a6b22b7_lora.logits.pt", weights_only=True)
    torch.manual_seed(expected["inputs_seed"])
    with torch.no_grad():
        logits = module.eval()(torch.randn(2, 3, 160, 160))
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
    loaded = Classifier.load_from_checkpoint(OLD)  # Lightning's way, too
    assert loaded.task.name == "classification"
