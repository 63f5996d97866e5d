"""``task=multilabel``: any number of labels per sample (multi-hot targets)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import (
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from ftlab.data.splits import Fractions, label_set_split
from ftlab.errors import FtlabError
from ftlab.tasks.base import Task

log = logging.getLogger("ftlab")


class Multilabel(Task):
    """Targets: float multi-hot ``[B, C]`` over ``data.classes`` (the label names). Split
    stratified on each sample's label set, keeping every label in every split where it has
    enough positives (one log line names a label that cannot be); BCE with logits, each
    positive weighted by ``pos_weight``; F1 (macro, at 0.5), mAP (macro average precision) and
    AUROC; the run keeps the best ``val/map``. Of the evaluations after fit, drift applies.

    Args:
        pos_weight: BCE's weight of the positive term, one number for every label (> 0).
        threshold: the probability above which a label counts as predicted, for F1.
    """

    name = "multilabel"
    metric = "val/map"
    mode = "max"

    def __init__(self, pos_weight: float = 1.0, threshold: float = 0.5) -> None:
        if not float(pos_weight) > 0:
            raise FtlabError(f"task.pos_weight={pos_weight} must be a number above 0, e.g. 2.0")
        if not 0 < float(threshold) < 1:
            raise FtlabError(f"task.threshold={threshold} must lie between 0 and 1, e.g. 0.5")
        self.pos_weight, self.threshold = float(pos_weight), float(threshold)

    def options(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight, "threshold": self.threshold}

    def split(self, targets: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
        if np.ndim(targets) != 2:
            raise FtlabError(
                f"task=multilabel splits multi-hot targets [N, C], this data's are "
                f"{np.shape(targets)}: for one class index per sample use task=classification "
                "(data=digits_multilabel gives the digits three labels)"
            )
        parts, missing = label_set_split(targets, fractions, seed)
        if missing:
            log.warning("task=multilabel split: %s (the split goes on)", "; ".join(missing))
        return parts

    def check_targets(self, targets: torch.Tensor, width: int, where: str) -> None:
        if targets.ndim != 1 or len(targets) != width or not targets.is_floating_point():
            raise FtlabError(
                f"{where}: task=multilabel takes a float multi-hot vector of the {width} labels "
                f"per sample, this data gives {tuple(targets.shape)} {targets.dtype} targets: "
                "give [C] floats in {0, 1} (classes = the label names)"
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.pos_weight != 1.0:  # a device tensor built on the device: no host sync
            weight = outputs.new_full((outputs.shape[-1],), self.pos_weight)
        return F.binary_cross_entropy_with_logits(
            outputs, targets.to(outputs.dtype), pos_weight=weight
        )

    def metrics(self, width: int) -> Mapping[str, Metric]:
        # torchmetrics applies the sigmoid to logits itself (values outside [0, 1]).
        return {
            "f1": MultilabelF1Score(width, threshold=self.threshold, average="macro"),
            "map": MultilabelAveragePrecision(width, average="macro"),
            "auroc": MultilabelAUROC(width, average="macro"),
        }

    def train_metrics(self, width: int) -> Mapping[str, Metric]:
        return {
            "f1": MultilabelF1Score(
                width, threshold=self.threshold, average="macro", validate_args=False
            )
        }

    def predictions(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs, targets.long()  # torchmetrics' multilabel metrics take int targets
