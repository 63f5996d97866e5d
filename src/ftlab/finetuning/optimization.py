"""``Optimization``: the learning rates a plan needs, and the optimizer and scheduler it feeds.

Plain values and two factories, so a module is constructed whole: the plan reads ``lr``,
``weight_decay`` and the discriminative keys (``layer_decay`` or ``lr_range``) when the module is
built; ``configure`` builds the optimizer from the plan's param groups (each with its absolute lr)
and the scheduler over it when Lightning asks.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class Optimization:
    """How the plan's param groups are optimized.

    Attributes:
        lr: the head's base lr (every other group's lr is derived from it by the plan).
        weight_decay: for weights (norms, biases and the model's no-decay list never decay).
        layer_decay: each group below the head gets ``layer_decay`` times the lr of the next.
        lr_range: ``[lo, hi]``: geometric from the input group (lo) to the head (hi).
        optimizer: ``param_groups -> Optimizer``, e.g. ``functools.partial(torch.optim.SGD,
            momentum=0.9)``; AdamW when None. Each group carries its own lr.
        scheduler: ``optimizer (, total_steps=...) -> LRScheduler``, or None. A factory that
            takes ``total_steps`` gets the run's length in ``interval`` units.
        interval: ``step`` or ``epoch``: when the scheduler steps.
        monitor: the metric a ReduceLROnPlateau-like scheduler watches.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    layer_decay: float | None = None
    lr_range: Sequence[float] | None = None
    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    scheduler: Callable[..., Any] | None = None
    interval: str = "step"
    monitor: str | None = None

    def lrs(self) -> dict[str, Any]:
        """What :func:`ftlab.finetuning.build_plan` reads."""
        out: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.layer_decay is not None:
            out["layer_decay"] = self.layer_decay
        if self.lr_range is not None:
            out["lr_range"] = list(self.lr_range)
        return out

    def configure(self, param_groups: list[dict[str, Any]], trainer: Any) -> Any:
        """What ``LightningModule.configure_optimizers`` returns for these param groups."""
        factory = self.optimizer or torch.optim.AdamW
        optimizer = factory(param_groups)
        if self.scheduler is None:
            return optimizer
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler).parameters:
            kwargs["total_steps"] = _length(trainer, self.interval)
        scheduler = {"scheduler": self.scheduler(optimizer, **kwargs), "interval": self.interval}
        if self.monitor:
            scheduler["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _length(trainer: Any, interval: str) -> int | None:
    """The run's length in steps or epochs; None for ``max_epochs=-1`` (no length: schedules
    that need one are refused at composition, ftlab.config_checks; warmup_step ignores it)."""
    steps = trainer.estimated_stepping_batches if interval == "step" else None
    steps = trainer.max_epochs if steps is None else steps
    return int(steps) if steps is not None and 0 < steps < math.inf else None
