"""The LightningModule: a pretrained backbone, a new linear head, loss and metrics."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ftlab.adapters import is_adapter_param
from ftlab.finetuning import HEAD, Plan
from ftlab.finetuning.features import FEATURES
from ftlab.finetuning.freezing import param_groups, set_bn_modes
from ftlab.finetuning.plan import LORA
from ftlab.record import ModelRecord

STAGES = ("train", "val", "test")


def make_head(num_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """A new linear classifier sized for the data's classes."""
    linear = nn.Linear(num_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


class FinetuneModule(L.LightningModule):
    """Backbone + head. Which parameters train is decided by the plan's ``PhaseCallback``."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        plan: Plan | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_options: dict[str, Any] | None = None,
        record: ModelRecord | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.plan = plan
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_options = scheduler_options or {}
        self.record = record  # what a checkpoint says about this model (ftlab.record)
        self.criterion = nn.CrossEntropyLoss()
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        # Training steps update micro accuracy only, its argument checks off: on a GPU macro
        # F1's bincount reads a device value back at every step (tests/test_host_syncs.py). The
        # data modules checked the labels once, when they were read.
        train = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        )
        # ModuleDict keys are attributes: "train" would shadow nn.Module.train.
        self.metrics = nn.ModuleDict(
            {
                "train_": train.clone(prefix="train/"),
                **{f"{s}_": metrics.clone(prefix=f"{s}/") for s in STAGES if s != "train"},
            }
        )

    def layer_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """The backbone's groups (input first) plus the head, with module-level names.

        LoRA adapters form one group ``lora`` just below the head: the backbone groups keep
        only their base weights, so a plan can train the adapters and the base weights apart.
        """
        groups = [
            (g.name, tuple(f"backbone.{p}" for p in g.param_names))
            for g in self.backbone.layer_groups()
        ]
        adapters = tuple(p for _, names in groups for p in names if is_adapter_param(p))
        if adapters:
            groups = [(g, tuple(p for p in ps if not is_adapter_param(p))) for g, ps in groups]
            groups.append((LORA, adapters))
        head = tuple(f"head.{n}" for n, _ in self.head.named_parameters())
        return [*groups, (HEAD, head)]

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def forward(self, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, Mapping) and FEATURES in inputs:
            # Cached backbone outputs (ftlab.finetuning.features), only valid while it is frozen.
            if self.training and self.backbone_trains():
                raise RuntimeError("cached features reached a phase that trains the backbone")
            return self.head(inputs[FEATURES])
        return self.head(self.backbone(inputs))

    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> FinetuneModule:
        # Every switch to training mode leaves frozen BatchNorm layers in eval mode, and a wholly
        # frozen backbone too (dropout off): a fixed feature extractor, equal to cached features.
        super().train(mode)
        set_bn_modes(self)
        if mode and not self.backbone_trains():
            self.backbone.eval()
        return self

    def _step(self, batch: tuple[Any, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = self.criterion(logits, labels)
        metrics = self.metrics[f"{stage}_"]
        metrics.update(logits.detach(), labels)
        on_step = stage == "train"
        # Lightning reads a progress-bar value back to the host at every step (a sync on a
        # GPU), bar or no bar: the running loss goes there only while a bar shows it.
        bar = self._trainer is not None and self._trainer.progress_bar_callback is not None
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=bar or not on_step,
            sync_dist=not on_step,
            batch_size=labels.shape[0],
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        if self.plan is None or self.optimizer_factory is None:
            raise RuntimeError("FinetuneModule needs a plan and an optimizer to train")
        optimizer = self.optimizer_factory(param_groups(self.plan, dict(self.named_parameters())))
        if self.scheduler_factory is None:
            return optimizer
        interval = self.scheduler_options.get("interval", "step")
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            steps = self.trainer.estimated_stepping_batches if interval == "step" else None
            steps = self.trainer.max_epochs if steps is None else steps
            # max_epochs=-1: no length. Schedules that need one are refused at composition
            # (ftlab.config_checks); warmup_step takes the argument without using it.
            kwargs["total_steps"] = int(steps) if 0 < steps < math.inf else None
        scheduler = {"scheduler": self.scheduler_factory(optimizer, **kwargs), "interval": interval}
        if self.scheduler_options.get("monitor"):
            scheduler["monitor"] = self.scheduler_options["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only: the model is rebuilt from them through ftlab's own builders.
        checkpoint["ftlab"] = self.record.to_dict() if self.record else {}
