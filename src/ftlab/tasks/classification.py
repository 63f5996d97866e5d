"""``task=classification``: single-label classes, ftlab's first task, moved here unchanged."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ftlab.data.splits import Fractions, stratified_split
from ftlab.errors import FtlabError
from ftlab.tasks.base import Task


class Classification(Task):
    """Targets: int64 class indices ``[B]`` into ``data.classes``; the head's width is the
    number of classes. Split per class (stratified); cross-entropy; accuracy (micro) and F1
    (macro); the run keeps the best ``val/acc``. Every evaluation after fit applies."""

    name = "classification"
    metric = "val/acc"
    mode = "max"
    evaluations = frozenset({"ood", "wise_ft", "drift", "soups", "forgetting"})

    def split(self, targets: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
        if np.ndim(targets) != 1:  # e.g. multi-hot labels: per-class strata would not fit them
            raise FtlabError(
                f"task=classification splits one class index per sample, this data's targets "
                f"are {np.shape(targets)}: for multi-hot labels use task=multilabel, for "
                "float values task=regression"
            )
        return stratified_split(targets, fractions, seed)

    def check_targets(self, targets: torch.Tensor, width: int, where: str) -> None:
        if targets.ndim != 0 or targets.is_floating_point():
            raise FtlabError(
                f"{where}: task=classification takes one integer class index per sample, this "
                f"data gives {tuple(targets.shape)} {targets.dtype} targets: for multi-hot "
                "labels use task=multilabel, for float values task=regression"
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def metrics(self, width: int) -> Mapping[str, Metric]:
        return {
            "acc": MulticlassAccuracy(width, average="micro"),
            "f1": MulticlassF1Score(width, average="macro"),
        }

    def train_metrics(self, width: int) -> Mapping[str, Metric]:
        # Micro accuracy only, its argument checks off: on a GPU macro F1's bincount reads a
        # device value back at every step (tests/test_host_syncs.py). The data modules checked
        # the labels once, when they were read.
        return {"acc": MulticlassAccuracy(width, average="micro", validate_args=False)}
