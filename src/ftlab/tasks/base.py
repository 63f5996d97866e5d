"""The task seam: what a run learns, as one small object the module and the data ask.

A task owns the contract between data and model that every other layer used to assume was
single-label classification:

- the batch: ``(inputs, targets)``; :meth:`Task.check_targets` says what ``targets`` hold
  (classification: int64 ``[B]`` class indices; multilabel: float multi-hot ``[B, C]``;
  regression: float ``[B]`` or ``[B, D]``);
- the targets' names (``data.classes``: class names, label names or target dimensions), whose
  count is the head's width (``num_classes``);
- how one source is split by fraction (:meth:`Task.split`);
- the loss, the metrics (validation/test and training), and the metric a run optimizes by
  default (:attr:`Task.metric`, :attr:`Task.mode`: the checkpoint keeps its best);
- what the checkpoint record says about it (:meth:`Task.record`);
- which evaluations after fit apply (:attr:`Task.evaluations`; the others are refused in one
  line by :meth:`Task.require`).

Pooling: the backbones still return pooled ``[B, F]`` features (timm's own head pooling,
``forward_head(pre_logits=True)``; Hugging Face's masked mean or CLS token), and the task's
:meth:`Task.pool` is the identity on them. Moving the pooling out of the backbones would change
the order of floating-point operations inside forward passes that the committed results and the
feature cache keys were measured with; the one place a task that needs unpooled outputs (a
language model's per-token logits) reaches them is the backbone's ``features`` hook, not this
protocol. A task is built from the ``task`` config group's plain values (``task.*`` keys) by
:func:`ftlab.tasks.build_task`; new ones register in :data:`ftlab.tasks.TASKS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics import Metric

from ftlab.data.splits import Fractions
from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")

# The evaluations after fit a task may allow (ftlab.evaluation, ftlab.sweeps.soups):
# the keys that turn them on, for the refusal's line.
EVALUATION_KEYS = {
    "ood": "data.ood",
    "wise_ft": "wise_ft.alphas",
    "drift": "(drift)",
    "soups": "ftlab-soup",
    "forgetting": "eval.forgetting",
}


class Task:
    """One kind of learning problem. Subclass it, set :attr:`name`, and override what differs;
    the options are the ``task.*`` config keys (besides ``name``)."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "val/loss"  # the default optimized_metric
    mode: ClassVar[str] = "min"  # its direction: max | min
    evaluations: ClassVar[frozenset[str]] = frozenset({"drift"})

    def __init__(self, **options: Any) -> None:
        if options:
            raise FtlabError(
                f"task={self.name} takes no options {sorted(options)}: drop them (see conf/task)"
            )

    # -- data ----------------------------------------------------------------------------------

    def split(self, targets: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
        """Positions of train/val/test in one source of ``targets`` (see ftlab.data.splits)."""
        raise NotImplementedError

    def check_targets(self, targets: torch.Tensor, width: int, where: str) -> None:
        """Refuse, in one line, one sample's ``targets`` that do not fit the contract."""

    # -- model ---------------------------------------------------------------------------------

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The head's input from the backbone's output (pooled already: see the module doc)."""
        return features

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective on the head's outputs (also what L-BFGS head fits minimize)."""
        raise NotImplementedError

    def metrics(self, width: int) -> Mapping[str, Metric]:
        """Fresh torchmetrics for validation and test, by name (``val/<name>``)."""
        raise NotImplementedError

    def train_metrics(self, width: int) -> Mapping[str, Metric]:
        """Fresh torchmetrics for the training steps: none that read a device value back."""
        return {}

    def predictions(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(preds, target)`` as the metrics take them."""
        return outputs, targets

    # -- records and evaluations ----------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The ``task.*`` options, as plain values (recorded in checkpoints)."""
        return {}

    def record(self) -> dict[str, Any]:
        """What the checkpoint record says about the task: ``{name, options}``; the targets'
        names are the record's ``classes``."""
        return {"name": self.name, "options": self.options()}

    def require(self, evaluation: str, key: str | None = None) -> None:
        """Refuse an evaluation after fit that this task has no meaning for, in one line."""
        if evaluation not in self.evaluations:
            allowed = ", ".join(sorted(self.evaluations)) or "none"
            raise FtlabError(
                f"{key or EVALUATION_KEYS.get(evaluation, evaluation)}: {evaluation} is not "
                f"defined for task={self.name} (it applies: {allowed}); drop it for this run"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options()})"
