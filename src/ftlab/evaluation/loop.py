"""Plain evaluation loops, no Trainer: a module's metrics on a loader, a backbone's features.

Evaluating outside ``trainer.validate`` keeps the dozens of extra evaluations (every WiSE-FT α on
every set) out of the loggers' val/test curves. The metrics are those FinetuneModule logs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.plugins.precision import Precision
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

Limit = int | float | None
OnBatch = Callable[[], object] | None  # called after each batch (a Progress's advance)


def batch_limit(limit: Limit, total: int) -> int:
    """How many of ``total`` batches a ``trainer.limit_*_batches`` value lets through."""
    if limit is None:
        return total
    if isinstance(limit, float):  # a share of the batches, as in Lightning
        return int(total * limit)
    return min(int(limit), total)


def batches(loader: DataLoader, limit: Limit = None) -> Iterator[Any]:
    return itertools.islice(loader, batch_limit(limit, len(loader)))


def feature_batches(loader: DataLoader, count: int, limit: Limit = None) -> int:
    """How many batches :func:`pooled_features` reads for ``count`` samples."""
    allowed = batch_limit(limit, len(loader))
    return min(allowed, math.ceil(count / loader.batch_size)) if loader.batch_size else allowed


def _forward(model: nn.Module, inputs: Any, precision: Precision | None) -> torch.Tensor:
    """``model(inputs)`` on the model's device, under the trainer's precision when given."""
    device = next(model.parameters()).device
    inputs = move_data_to_device(inputs, device)
    if precision is None:
        return model(inputs)
    with precision.forward_context():
        return model(precision.convert_input(inputs))


@torch.no_grad()
def evaluate(
    module: nn.Module,
    loader: DataLoader,
    num_classes: int,
    limit: Limit = None,
    precision: Precision | None = None,
    on_batch: OnBatch = None,
) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy of ``module`` (in eval mode) on ``loader``."""
    module.eval()
    logits, labels = [], []
    for inputs, target in batches(loader, limit):
        logits.append(_forward(module, inputs, precision).float().cpu())
        labels.append(target)
        if on_batch is not None:
            on_batch()
    if not logits:
        return {"acc": float("nan"), "f1": float("nan"), "loss": float("nan")}
    out, target = torch.cat(logits), torch.cat(labels)
    return {
        "acc": float(multiclass_accuracy(out, target, num_classes, average="micro")),
        "f1": float(multiclass_f1_score(out, target, num_classes, average="macro")),
        "loss": float(F.cross_entropy(out, target)),
    }


@torch.no_grad()
def pooled_features(
    backbone: nn.Module,
    loader: DataLoader,
    count: int,
    limit: Limit = None,
    precision: Precision | None = None,
    on_batch: OnBatch = None,
) -> torch.Tensor:
    """The backbone's pooled features ``[n, d]`` of the loader's first ``count`` samples."""
    backbone.eval()
    features: list[torch.Tensor] = []
    seen = 0
    for inputs, _ in batches(loader, limit):
        if seen >= count:
            break
        features.append(_forward(backbone, inputs, precision).float().cpu())
        seen += len(features[-1])
        if on_batch is not None:
            on_batch()
    return torch.cat(features)[:count] if features else torch.empty(0)  # limit_val_batches=0
