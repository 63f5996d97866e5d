"""WiSE-FT (Wortsman et al., 2022): weight-space ensembles of the pretrained and fine-tuned model.

θ(α) = (1−α)·θ_pretrained + α·θ_fine-tuned, for the backbone only. The head is always the
fine-tuned one: a new head has no pretrained counterpart (there is no zero-shot head to mix
with), and the WiSE-FT authors use the fine-tuned classifier in that case. Floating-point
entries are interpolated, BatchNorm running statistics included (they describe the weights they
come with); integer buffers (``num_batches_tracked``) are the fine-tuned model's.

LoRA (peft) adapters: an update is B·A with B zero at the start, so B is interpolated (0 → B)
and A kept fine-tuned, which gives exactly α·B·A, the WiSE-FT of the merged weights
(interpolating both would give α²·B·A plus a term in the initial A).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlab.errors import FtlabError

StateDict = dict[str, torch.Tensor]

LORA_DOWN = re.compile(r"(^|\.)lora_(embedding_)?A\.")  # peft's A matrices, kept fine-tuned


def snapshot(module: nn.Module) -> StateDict:
    """A CPU copy of the module's state (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def interpolate(
    pretrained: Mapping[str, torch.Tensor], finetuned: StateDict, alpha: float
) -> StateDict:
    """θ(α) for every entry of ``finetuned``; exactly the pretrained weights at α=0 and the
    fine-tuned ones at α=1 (``torch.lerp`` computes from the nearer end)."""
    out: StateDict = {}
    for key, tuned in finetuned.items():
        start = pretrained.get(key)
        if tuned.is_floating_point() and start is not None and not LORA_DOWN.search(key):
            out[key] = torch.lerp(start.to(tuned.dtype), tuned, float(alpha))
        else:  # integer buffers, LoRA A matrices, entries the pretrained snapshot lacks
            out[key] = tuned
    return out


@contextmanager
def loaded(module: nn.Module, state: StateDict, restore: StateDict) -> Iterator[nn.Module]:
    """``module`` holding ``state`` inside the block, ``restore`` after it (also on errors)."""
    module.load_state_dict(state)
    try:
        yield module
    finally:
        module.load_state_dict(restore)


def check_alphas(alphas: Any) -> list[float]:
    """``wise_ft.alphas`` as floats in [0, 1] (empty when off: null or [])."""
    if alphas is None:
        return []
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError):  # a scalar, or items that are not numbers
        values = None
    if values is None or not all(0 <= a <= 1 for a in values):
        raise FtlabError(
            f"wise_ft.alphas={alphas} must be a list of numbers in [0, 1], e.g. [0,0.25,0.5,0.75,1]"
        )
    return values


def sweep(
    backbone: nn.Module,
    pretrained: StateDict,
    finetuned: StateDict,
    alphas: Sequence[float],
    score: Callable[[float], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per α: ``{alpha, val_acc, test_acc, ood: {name: acc}}`` from ``score(α)``,
    which evaluates the module with the backbone at θ(α)."""
    rows = []
    for alpha in alphas:
        with loaded(backbone, interpolate(pretrained, finetuned, alpha), finetuned):
            result = score(alpha)
        rows.append(
            {
                "alpha": alpha,
                "val_acc": result["val"]["acc"],
                "test_acc": result["test"]["acc"] if "test" in result else None,
                "ood": {name: m["acc"] for name, m in result["ood"].items()},
            }
        )
    return rows


def best_alpha(rows: list[dict[str, Any]]) -> float:
    """The α of the best validation accuracy (the first one on ties)."""
    return max(rows, key=lambda r: r["val_acc"])["alpha"]


def best_row(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The row of ``alpha`` shaped like metrics.json's own sections (``val``, ``test``, ``ood``),
    so that sweep reports read WiSE-FT's accuracies under the same names as the run's."""
    row = next(r for r in rows if r["alpha"] == alpha)
    out: dict[str, Any] = {"alpha": alpha, "val": {"acc": row["val_acc"]}}
    if row["test_acc"] is not None:
        out["test"] = {"acc": row["test_acc"]}
    out["ood"] = {name: {"acc": acc} for name, acc in row["ood"].items()}
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """``alpha, val_acc, test_acc, ood_<name>_acc...``, one line per α."""
    flat = [
        {
            **{k: v for k, v in row.items() if k != "ood"},
            **{f"ood_{name}_acc": acc for name, acc in row["ood"].items()},
        }
        for row in rows
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return path
