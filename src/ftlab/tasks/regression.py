"""``task=regression``: float targets, one value or a vector per sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, Metric, R2Score

from ftlab.data.splits import Fractions, quantile_split, random_split
from ftlab.errors import FtlabError
from ftlab.tasks.base import Task

LOSSES = ("mse", "huber")
SPLITS = ("quantile", "random")


class Regression(Task):
    """Targets: float ``[B]`` (one value; ``data.classes`` is its one name) or ``[B, D]``
    (``data.classes`` names the D dimensions); the head outputs D values. Split on quantile
    bins of the (first) value, or at random; MSE or Huber; MAE and R²; the run keeps the
    lowest ``val/mae``. Of the evaluations after fit, drift applies.

    Args:
        loss: ``mse`` or ``huber`` (``huber_delta``: Huber's delta).
        split: ``quantile`` (10 bins of the first value) or ``random``.
    """

    name = "regression"
    metric = "val/mae"
    mode = "min"

    def __init__(self, loss: str = "mse", huber_delta: float = 1.0, split: str = "quantile"):
        if loss not in LOSSES:
            raise FtlabError(f"task.loss={loss} is not a regression loss: use one of mse, huber")
        if split not in SPLITS:
            raise FtlabError(f"task.split={split} is not a split: use one of quantile, random")
        if not float(huber_delta) > 0:
            raise FtlabError(f"task.huber_delta={huber_delta} must be above 0, e.g. 1.0")
        self.kind, self.delta, self.split_kind = loss, float(huber_delta), split

    def options(self) -> dict[str, Any]:
        return {"loss": self.kind, "huber_delta": self.delta, "split": self.split_kind}

    def split(self, targets: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
        if self.split_kind == "random":
            return random_split(targets, fractions, seed)
        return quantile_split(targets, fractions, seed)

    def check_targets(self, targets: torch.Tensor, width: int, where: str) -> None:
        shape_ok = (targets.ndim == 0 and width == 1) or (
            targets.ndim == 1 and len(targets) == width
        )
        if not shape_ok or not targets.is_floating_point():
            raise FtlabError(
                f"{where}: task=regression takes a float value (or a vector of the {width} "
                f"named dimensions) per sample, this data gives {tuple(targets.shape)} "
                f"{targets.dtype} targets: give floats (classes = the target names)"
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.reshape(targets.shape)  # [B, 1] head outputs for [B] targets
        if self.kind == "huber":
            return F.huber_loss(outputs, targets.to(outputs.dtype), delta=self.delta)
        return F.mse_loss(outputs, targets.to(outputs.dtype))

    def metrics(self, width: int) -> Mapping[str, Metric]:
        return {
            "mae": MeanAbsoluteError(),
            "r2": R2Score() if width == 1 else R2Score(num_outputs=width),
        }

    def train_metrics(self, width: int) -> Mapping[str, Metric]:
        return {"mae": MeanAbsoluteError()}

    def predictions(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if outputs.shape[-1] == 1:  # one value: both flat [B]
            return outputs.reshape(-1), targets.reshape(-1).to(outputs.dtype)
        return outputs, targets.to(outputs.dtype)
