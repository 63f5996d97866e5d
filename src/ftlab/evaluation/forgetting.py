"""Catastrophic forgetting, measured directly: after a two-stage run (``model.init_from``), the
source task's test set scored by the source run's own model and by the adapted one.

The adapted model keeps its own head when its classes are the source's (the head came from the
source run and went on training); otherwise the source run's head reads the adapted backbone's
features, the one way a new task's head can be scored on the old task. ``drop`` is
``source_acc - adapted_acc``: what adapting cost the source task (negative: it helped).
The source set is read at this run's input size and batch size, as ``data.ood`` sets are.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L

from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.data import build_data
from ftlab.data.base import ClassificationDataModule
from ftlab.errors import FtlabError
from ftlab.evaluation.loop import evaluate
from ftlab.evaluation.ood import _shared_keys
from ftlab.module import Classifier, FinetuneModule
from ftlab.options import load_option

KEY = "eval.forgetting"


class Forgetting:
    """Built before ``fit`` (so a bad option fails before training), measured after test."""

    def __init__(self, option: str, source: str, data: ClassificationDataModule, input_spec: Any):
        self.option, self.source = option, source
        cfg = {**load_option("data", option, KEY), **_shared_keys(data)}
        cfg.pop("ood", None)
        self.data = build_data(cfg, input_spec)
        self.data.prepare_data()
        self.data.setup("test")
        classes = load_checkpoint(source, key="model.init_from")["ftlab"].classes
        if list(classes) != list(self.data.classes):
            raise FtlabError(
                f"{KEY}={option} has classes {list(self.data.classes)[:10]}, the model.init_from "
                f"run was trained on {list(classes)[:10]}: name the source run's data option"
            )

    @classmethod
    def build(
        cls,
        option: str | None,
        source: str | None,
        module: FinetuneModule,
        data: ClassificationDataModule,
    ) -> Forgetting | None:
        """The measurement ``eval.forgetting=<data option>`` asks for, else None."""
        if not option:
            return None
        module.task.require("forgetting", KEY)  # source vs adapted accuracy
        if not source:
            raise FtlabError(
                f"{KEY}={option} compares with the source run's model: set "
                "model.init_from=<source run>/checkpoints/<best>.ckpt, or drop eval.forgetting"
            )
        if not isinstance(module, Classifier):
            raise FtlabError(f"{KEY} scores single-label classifiers: drop it for this module")
        return cls(str(option), str(source), data, module.backbone.input_spec)

    def measure(self, trainer: L.Trainer, module: FinetuneModule) -> dict[str, Any]:
        """``{data, source_acc, adapted_acc, drop, head}`` on the source test set (within
        ``trainer.limit_test_batches``), ``module`` as the trainer left it (best weights)."""
        device = next(module.parameters()).device
        source, _ = restore_module(load_checkpoint(self.source, key="model.init_from"), self.source)
        source.to(device)
        shared = list(module.record.classes) == list(source.record.classes)
        adapted: FinetuneModule = module
        if not shared:  # the source head on the adapted features
            adapted = copy.deepcopy(source)
            adapted.backbone.load_state_dict(module.backbone.state_dict())
        loader, classes = self.data.test_dataloader(), self.data.num_classes
        limit, precision = trainer.limit_test_batches, trainer.precision_plugin
        before = evaluate(source, loader, classes, limit, precision)["acc"]
        after = evaluate(adapted, loader, classes, limit, precision)["acc"]
        return {
            "data": self.option,
            "source_acc": before,
            "adapted_acc": after,
            "drop": before - after,
            "head": "adapted" if shared else "source",
        }
