"""timm image backbones: ``timm.create_model(name, num_classes=0)`` returns pooled features."""

from __future__ import annotations

import logging
from fnmatch import fnmatch
from typing import Any

import timm
from timm.data import resolve_data_config
from torch import Tensor, nn

from ftlab.backbones.base import MODEL_PREFIX, Backbone, random_weights_id
from ftlab.backbones.groups import LayerGroup, timm_layer_groups
from ftlab.backbones.hub import first_line, hub_access
from ftlab.backbones.names import unknown_name_error
from ftlab.backbones.weights import PACKAGE_PREFIX, load_timm_weights, resolve_weights
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec

log = logging.getLogger(__name__)


def image_spec(model: nn.Module) -> ImageSpec:
    """Preprocessing from the model's pretrained config, as timm resolves it."""
    data = resolve_data_config({}, model=model)
    channels, _, size = data["input_size"]
    return ImageSpec(
        size=int(size),
        mean=tuple(float(m) for m in data["mean"]),
        std=tuple(float(s) for s in data["std"]),
        channels=int(channels),
        interpolation=str(data["interpolation"]),
        crop_pct=float(data["crop_pct"]),
    )


class TimmBackbone(Backbone):
    """A timm model without its classifier; ``forward(images [B,3,H,W]) -> [B, num_features]``."""

    family = "timm"
    adapter_targets = ("qkv", "proj", "fc1", "fc2")  # ViT, DeiT, Swin; ConvNeXt's MLP
    adapter_convs = True  # CNNs: every ungrouped conv

    def __init__(self, model: nn.Module, name: str, weights_id: str) -> None:
        # Some models add a pre-logits layer after pooling (MobileNetV3); its width is the output.
        width = getattr(model, "head_hidden_size", None) or model.num_features
        super().__init__(
            model,
            name=name,
            modality="image",
            num_features=width,
            weights_id=weights_id,
            input_spec=image_spec(model),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)

    def layer_groups(self) -> list[LayerGroup]:
        return timm_layer_groups(self.model, MODEL_PREFIX)

    def set_grad_checkpointing(self) -> None:
        try:
            self.model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError) as err:  # timm's refusals
            raise FtlabError(
                f"model.grad_checkpointing: timm has no gradient checkpointing for {self.name} "
                f"({first_line(err)}): set model.grad_checkpointing=false"
            ) from None

    def no_weight_decay(self) -> set[str]:
        # timm's lists may hold wildcards ('pos_embed.*') and names of absent tokens.
        patterns = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
        return {
            MODEL_PREFIX + name
            for name, _ in self.model.named_parameters()
            if any(fnmatch(name, pattern) for pattern in patterns)
        }


def _create(name: str, pretrained: bool, extra: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` without classifier; bad names and options become FtlabErrors."""
    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        raise unknown_name_error(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
    except TypeError as error:
        raise FtlabError(
            f"model options {sorted(extra)} are not all accepted by {name}: {first_line(error)}"
        ) from error


def _hub_source(model: nn.Module, name: str) -> str:
    """Where timm got the pretrained weights; refuses models that have none."""
    cfg = model.pretrained_cfg
    source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if not source:
        raise FtlabError(
            f"timm has no pretrained weights for model.name={name!r}: set model.pretrained=false "
            "or model.weights=/path/to/weights"
        )
    return str(source)


def build_timm_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, **extra: Any
) -> TimmBackbone:
    """A timm backbone with hub weights, ``model.weights`` (file, dir, package) or random init."""
    if not pretrained:
        if weights is not None and not weights.startswith(PACKAGE_PREFIX):
            # A file the user named would be ignored (ftlab.config_checks refuses it earlier,
            # when the config names source=timm; this covers source=auto).
            raise FtlabError(
                f"model.weights={weights!r} is ignored with model.pretrained=false (random init): "
                "set model.pretrained=true to load it, or model.weights=null to start from random"
            )
        if weights is not None:  # the model config's packaged weights, turned off (scratch)
            log.info("model.pretrained=false: %s starts from random init, not %s", name, weights)
        return TimmBackbone(_create(name, False, extra), name, random_weights_id(name))
    if weights is not None:
        source = resolve_weights(weights, name)  # a wrong path fails before the model is built
        model = _create(name, False, extra)
        load_timm_weights(model, source, name)
        return TimmBackbone(model, name, f"{name}@{source.label}")

    def message(reason: str) -> str:
        return (
            f"could not get pretrained weights for model.name={name!r} ({reason}); "
            "fix: model.pretrained=false (random init) or model.weights=/path/to/weights"
        )

    with hub_access(message):
        model = _create(name, True, extra)
    return TimmBackbone(model, name, f"{name}@hub:{_hub_source(model, name)}")
