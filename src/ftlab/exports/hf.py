"""``export=hf``: a transformers classifier where its head pools as ftlab did, else the
sentence-transformers layout (:mod:`ftlab.exports.sentence`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ftlab.errors import FtlabError
from ftlab.exports.job import Export, head_layers, max_length, one_linear
from ftlab.exports.sentence import write_sentence_transformers
from ftlab.registry import Registry

# transformers classifiers whose head reproduces ftlab's [CLS] pooling + linear head, by
# model_type: how the ftlab head goes in (see _vit_head, _bert_head).
CLS_HEADS: Registry[Callable[[nn.Module, nn.Linear], list[str]]] = Registry(
    "transformers classifier head", key="model_type"
)
# BERT's classifier runs tanh(pooler(CLS)); a pooler of ε·I and a classifier of W/ε give
# W·CLS + b up to a relative (ε·|x|)²/3: below float32 rounding for |x| < 30.
BERT_EPSILON = 1e-4


def write_hf(job: Export) -> None:
    """transformers' classifier where its head pools as ftlab did, else sentence-transformers."""
    backbone = job.backbone
    fits = backbone.model_type in CLS_HEADS and len(head_layers(job)) == 1
    if backbone.modality == "text" and not (backbone.pooling == "cls" and fits):
        write_sentence_transformers(job)
        return
    if not fits:
        raise FtlabError(
            f"export=hf: transformers' {backbone.model_type} image classifier does not pool as "
            "ftlab did (or the head is not one linear layer); use export=onnx or export=merged"
        )
    write_transformers(job)


def write_transformers(job: Export) -> None:
    """``AutoModelFor{Image,Sequence}Classification`` with ftlab's head, id2label and the
    tokenizer or image processor."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    backbone = job.backbone
    image = backbone.modality == "image"
    auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    config = backbone.model.config.__class__.from_dict(backbone.model.config.to_dict())
    config.id2label = {i: str(c) for i, c in enumerate(job.classes)}
    config.label2id = {str(c): i for i, c in enumerate(job.classes)}
    config.architectures = None
    model = auto.from_config(config).eval()
    missing, unexpected = model.base_model.load_state_dict(
        backbone.model.state_dict(), strict=False
    )
    filled = CLS_HEADS.get(backbone.model_type)(model, one_linear(job, "use export=onnx"))
    if unexpected or sorted(missing) != sorted(filled):
        raise FtlabError(
            f"export=hf: transformers' {type(model).__name__} does not hold ftlab's "
            f"{backbone.model_type} weights as they are (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use export=onnx or export=merged"
        )
    model.save_pretrained(str(job.out))
    preprocessor = backbone.preprocessor
    if not image:
        preprocessor.model_max_length = max_length(backbone, job.run)  # the training limit
    preprocessor.save_pretrained(str(job.out))
    loaded = auto.from_pretrained(str(job.out)).eval()
    job.check(loaded(**_accepted(loaded, job.inputs)).logits, f"{auto.__name__}.from_pretrained")
    task = "image-classification" if image else "text-classification"
    job.written, job.library = f"transformers {type(model).__name__}", "transformers"
    job.usage = "\n".join(
        [
            f"from transformers import {auto.__name__}, pipeline",
            f'model = {auto.__name__}.from_pretrained("{job.shown}")',
            f'classify = pipeline("{task}", model="{job.shown}")',
        ]
    )
    if backbone.model_type == "bert":
        job.notes.append(
            f"BERT's classifier applies tanh(pooler([CLS])); ftlab trained a linear head on "
            f"[CLS] itself, so the pooler is {BERT_EPSILON:g}·I and the classifier is scaled by "
            f"1/{BERT_EPSILON:g}: the same logits in float32 (fine-tune it further with care)."
        )


def _accepted(model: nn.Module, inputs: Any) -> dict[str, Tensor]:
    if isinstance(inputs, Tensor):
        return {"pixel_values": inputs}
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in inputs.items() if k in accepted}


def _vit_head(model: nn.Module, linear: nn.Linear) -> list[str]:
    """ViTForImageClassification: ``classifier(last_hidden_state[:, 0])``, ftlab's exactly."""
    model.classifier.load_state_dict(linear.state_dict())
    return []


def _bert_head(model: nn.Module, linear: nn.Linear) -> list[str]:
    """BertForSequenceClassification: ``classifier(tanh(pooler(CLS)))``, see BERT_EPSILON."""
    dense = model.base_model.pooler.dense
    width = dense.weight.shape[0]
    dense.weight.copy_(torch.eye(width) * BERT_EPSILON)
    dense.bias.zero_()
    model.classifier.weight.copy_(linear.weight / BERT_EPSILON)
    model.classifier.bias.copy_(linear.bias)
    return ["pooler.dense.bias", "pooler.dense.weight"]  # not in ftlab's backbone: set here


CLS_HEADS.register("vit", _vit_head)
CLS_HEADS.register("bert", _bert_head)
