"""Pure functions that put a module into a phase of a plan: requires_grad, BatchNorm modes."""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ftlab.finetuning.plan import Plan


def apply_trainable(module: nn.Module, trainable: set[str]) -> int:
    """Set ``requires_grad`` from ``trainable`` (names); return the trainable element count.

    Frozen parameters also drop any ``.grad`` so the optimizer holds no state for them.
    """
    count = 0
    for name, param in module.named_parameters():
        on = name in trainable
        param.requires_grad_(on)
        if on:
            count += param.numel()
        else:
            param.grad = None
    return count


def bn_params(module: nn.Module) -> set[str]:
    """Names of BatchNorm affine parameters."""
    return {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in module.named_modules()
        if isinstance(mod, _BatchNorm)
        for p_name, _ in mod.named_parameters(recurse=False)
    }


def set_bn_modes(module: nn.Module, all_eval: bool = False) -> None:
    """Frozen BatchNorm layers run in eval mode, so their running statistics stay pretrained.

    A BN layer counts as frozen when none of its affine parameters trains. ``all_eval`` (``bn:
    eval``) puts every BN layer in eval mode, trainable ones too: they normalize with the
    pretrained running statistics (detectron's FrozenBatchNorm, with trainable affine
    parameters), so unfreezing a group does not switch its features to batch statistics under
    a head that was fitted on the pretrained ones (LP-FT's fine-tuning stage). Call this after
    ``module.train()``; in eval mode every layer is already in eval.
    """
    if not module.training:
        return
    for mod in module.modules():
        if isinstance(mod, _BatchNorm) and mod.affine:
            trains = any(p.requires_grad for p in mod.parameters(recurse=False))
            mod.train(trains and not all_eval)


def param_groups(plan: Plan, named: dict[str, nn.Parameter]) -> list[dict]:
    """One optimizer param group per plan unit, each with its own absolute ``lr``.

    Parameters are looked up by name and passed by identity, never matched by value.
    """
    return [
        {
            "params": [named[p] for p in unit.params],
            "lr": unit.lr,
            "weight_decay": unit.weight_decay,
            "name": unit.name,
        }
        for unit in plan.units
    ]


def checksum(module: nn.Module, names: set[str] | None = None) -> str:
    """A hash of parameter bytes (all, or ``names``), to compare replicas across DDP ranks.

    Under FSDP (ftlab.sharding) the full parameters are hashed: a collective, so every rank
    calls it at the same point with the same ``names``.
    """
    digest = hashlib.blake2b(digest_size=8)
    for name, param in module.named_parameters():
        if names is None or name in names:
            digest.update(name.encode())
            # blake2b reads the numpy buffer in place: no copy of a CPU parameter's bytes.
            data = param.detach()
            if hasattr(data, "full_tensor"):  # an FSDP2 shard (DTensor): every rank gathers
                data = data.full_tensor()
            data = data.cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(data.numpy())
    return digest.hexdigest()
