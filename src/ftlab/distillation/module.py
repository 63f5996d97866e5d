"""The distilling LightningModule (:class:`Distiller`, a Classifier) and its loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ftlab.distillation.logits import TeacherLogits
from ftlab.distillation.teacher import load_teacher
from ftlab.errors import FtlabError
from ftlab.finetuning.optimization import Optimization
from ftlab.finetuning.spec import FreezeSpec
from ftlab.module import Classifier


class DistillTargets(NamedTuple):
    """What a training step's loss compares the student's logits with."""

    labels: torch.Tensor  # class indices, or Mixup's soft targets
    teacher: torch.Tensor  # the teacher's logits [B, C]


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    ce: torch.Tensor,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``((1-α)·ce + α·T²·KL(softmax(t/T) ‖ softmax(s/T)), T²·KL)``, KL averaged over the batch.

    T² keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et
    al.); both sides in float32, so that bf16 logits do not round the softmax.
    """
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    soft = kl * (t * t)
    return (1.0 - alpha) * ce + alpha * soft, soft


class Distiller(Classifier):
    """A classifier trained on the labels and a frozen teacher's logits (module docstring).

    Args:
        teacher: ``{ckpt_path, model, image_size}``: where the teacher comes from (one of
            ckpt_path and model) and the side its images are resized to (null: see above).
        alpha: weight of the distillation term, in [0, 1] (0: a plain classifier's loss).
        temperature: T > 0 softens both distributions; the term is scaled by T².
        cache_logits: compute the teacher's train logits once when the data allows it.
        (the rest: :class:`~ftlab.module.Classifier`)
    """

    kind = "classifier"  # checkpoints hold the student alone: eval.py restores a classifier

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        freeze: FreezeSpec | Mapping[str, Any] | str | None = "none",
        optimization: Optimization | None = None,
        classes: Sequence[Any] | None = None,
        head: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        teacher: Mapping[str, Any] | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        cache_logits: bool = True,
    ) -> None:
        super().__init__(
            backbone, num_classes, freeze, optimization, classes, head, label_smoothing, mixup,
            cutmix,
        )  # fmt: skip
        if not 0.0 <= float(alpha) <= 1.0:
            raise FtlabError(f"module.alpha={alpha} must be in [0, 1], e.g. module.alpha=0.5")
        if not float(temperature) > 0.0:
            raise FtlabError(
                f"module.temperature={temperature} must be > 0, e.g. module.temperature=4"
            )
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.cache_logits = bool(cache_logits)
        built = load_teacher(teacher, list(classes or range(num_classes)), backbone)
        # In the instance dict, not registered: no parameters for the plan, the optimizer,
        # DDP or the checkpoint; _apply below moves it with the student.
        self.__dict__["teacher"] = built
        self.logits: TeacherLogits | None = None

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Distiller:
        super()._apply(fn, recurse)
        teacher = self.__dict__.get("teacher")  # absent while the base class is built
        if teacher is not None:
            teacher._apply(fn, recurse)
        return self

    def cache_blocker(self) -> str | None:
        blocker = super().cache_blocker()
        if blocker is None and not self.cache_logits:
            return "module.cache_logits=false: the teacher reads the training images each step"
        return blocker

    def fit_data(
        self,
        datamodule: L.LightningDataModule,
        data: L.LightningDataModule,
        trainer: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> L.LightningDataModule:
        self.logits = TeacherLogits(datamodule, data, self, trainer or {}, cache_dir)
        return self.logits if self.logits.used else datamodule

    def report(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "temperature": self.temperature,
            "teacher": self.teacher.describe(),
            "teacher_logits": self.logits.report() if self.logits is not None else None,
        }

    def teacher_logits(self, inputs: Any) -> torch.Tensor:
        """The teacher's logits for a batch of the student's inputs (no graph)."""
        with torch.no_grad():
            return self.teacher(inputs)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        inputs, labels, *cached = batch
        targets = labels
        # Mixup as the classifier does it (an odd last batch trains unmixed); the teacher then
        # reads the mixed images, which is why mixing turns the logit cache off.
        if self.mixer is not None and torch.is_tensor(inputs) and len(labels) % 2 == 0:
            inputs, targets = self.mixer(inputs, labels)
        teacher = cached[0] if cached else self.teacher_logits(inputs)
        return self.step(inputs, labels, "train", loss_targets=DistillTargets(targets, teacher))

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        if not isinstance(targets, DistillTargets):  # validation and test: the student's CE
            return super().loss(outputs, targets)
        ce = super().loss(outputs, targets.labels)
        loss, soft = distillation_loss(outputs, targets.teacher, ce, self.alpha, self.temperature)
        if self._trainer is not None:  # epoch means, accumulated on the device: no sync
            size = outputs.shape[0]
            self.log("train/ce", ce.detach(), on_step=False, on_epoch=True, batch_size=size)
            self.log("train/kd", soft.detach(), on_step=False, on_epoch=True, batch_size=size)
        return loss
