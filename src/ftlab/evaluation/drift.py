"""How far fine-tuning moved the backbone: in weights (per layer group) and in features (CKA)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ftlab.adapters import is_adapter_param
from ftlab.backbones.groups import LayerGroup
from ftlab.evaluation.wise_ft import snapshot


def merged_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state (CPU) with every LoRA update folded into its base weight and the
    adapter tensors dropped: the weights the model computes with."""
    state = snapshot(backbone)  # a copy: the module's tensors change when other weights load
    for name, layer in backbone.named_modules():
        if hasattr(layer, "get_delta_weight"):  # a peft LoRA layer
            key = f"{name}.base_layer.weight"
            for adapter in layer.active_adapters:
                state[key] = state[key] + layer.get_delta_weight(adapter).detach().cpu()
    return {k: v for k, v in state.items() if not is_adapter_param(k)}


def weight_change(
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    groups: Sequence[LayerGroup],
) -> dict[str, float | None]:
    """‖θ−θ₀‖/‖θ₀‖ over each group's parameters (None where ‖θ₀‖ is 0: no relative scale).

    Names missing from the states (LoRA tensors, folded in by :func:`merged_state`) are skipped.
    """
    out: dict[str, float | None] = {}
    for group in groups:
        moved = start = torch.zeros((), dtype=torch.float64)
        for name in (n for n in group.param_names if n in pretrained):
            before = pretrained[name].double()
            moved = moved + (finetuned[name].double() - before).square().sum()
            start = start + before.square().sum()
        out[group.name] = float(moved.sqrt() / start.sqrt()) if start > 0 else None
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Linear CKA (Kornblith et al., 2019) of two feature matrices ``[n, d1]``, ``[n, d2]``
    of the same samples: 1 for features equal up to rotation and scale, near 0 for unrelated.
    None when either is constant over the samples.

    Computed from the n×n Gram matrices: ⟨K, L⟩ / (‖K‖ ‖L‖) with K = XXᵀ, L = YYᵀ of the
    centered features, which equals ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖) at any feature width.
    """
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    gram_x, gram_y = x @ x.T, y @ y.T
    denominator = gram_x.norm() * gram_y.norm()
    return float((gram_x * gram_y).sum() / denominator) if denominator > 0 else None
