"""Knowledge distillation (Hinton et al. 2015): a student classifier trained on the labels and
on a frozen teacher's softened predictions.

The loss of a training step is ``(1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``
(``module.alpha``, ``module.temperature``); validation and test log the student's plain
cross-entropy, so ``val/loss`` compares with a classifier's. The student is any backbone under
any freezing schedule: :class:`Distiller` is a :class:`~ftlab.module.Classifier` and its
checkpoints are a classifier's (``eval.py`` restores the student alone).

**The teacher** is a trained ftlab classifier over the data's classes, in the same order:

- ``module.teacher.ckpt_path``: another run's checkpoint, rebuilt by ftlab's own builders
  (``ftlab.checkpoints``, never a name in the file);
- ``module.teacher.model``: a model config (``name``, ``weights``) whose weights are an
  ``export=merged`` directory (``ftlab.json``, ``model.safetensors``, ``head.safetensors``).
  A backbone's weights alone (ImageNet, a hub id) are refused: without a head trained on the
  data's classes there are no logits to distil.

It is frozen, in eval mode whatever calls ``train()``, and not a submodule of the student: it
has no optimizer state, Lightning's summary and the checkpoints do not see it, and the
student's ``_apply`` moves it along (``.to(device)``, ``.half()``). It gets the student's
batches, converted on the device: images un-normalized with the student's mean and std,
resized to the teacher's side (``module.teacher.image_size``; null: the teacher run's
``data.image_size``, read from the ``.hydra/config.yaml`` beside its checkpoint, else the
student's size) and normalized with the teacher's; texts truncated to the teacher's length.
Text teachers and students must share a tokenizer: token ids index a vocabulary.

**Cached logits.** With deterministic data (no ``data.augment``, no mixup), whole epochs and
``module.cache_logits=true``, the teacher's logits for the train split are computed once, in
index order, and stored like the feature cache's files (``ftlab.finetuning.features``: the
same checks, atomic writes and lock) under ``<cache_dir>/teacher_logits/``, keyed by the
teacher's state (weights and input conversion), its weights_id, the data's fingerprint, the
split and the precision. :class:`TeacherLogits` then stands in for the data during fit: its
train loader is the one it wraps (the data's, or the feature cache's) over the same sampler
with each sample's logits added, so the batches are ``(inputs, labels, teacher_logits)``. The
two caches combine: in head-only epochs the student reads cached features and the teacher is
not run at all. When the logits are not cached the teacher reads the images in every step, so
the feature cache is off (:meth:`Distiller.cache_blocker`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ftlab.checkpoints import first_line, load_checkpoint, restore_module
from ftlab.data.resumable import ResumableLoader
from ftlab.errors import FtlabError
from ftlab.finetuning.features import FEATURES, cache_key, compute_features, read_or_compute
from ftlab.finetuning.optimization import Optimization
from ftlab.finetuning.spec import FreezeSpec
from ftlab.module import Classifier, make_head
from ftlab.specs import ImageSpec, TextSpec

log = logging.getLogger("ftlab")

TEACHER_KEYS = ("ckpt_path", "model", "image_size")
MODEL_KEYS = ("name", "source", "pretrained", "weights")
MERGED_FILES = ("ftlab.json", "model.safetensors", "head.safetensors")  # ftlab.exports "merged"
# Texts the tokenizer check encodes: case, punctuation, digits and accents tell tokenizers
# that share a vocabulary but normalize differently apart.
PROBE_TEXT = "Shares in ACME fell 3.5% on Tuesday; the CEO's café reopened."


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


class Teacher(nn.Module):
    """A trained classifier (backbone and head) that converts the student's inputs to its own.

    Frozen and always in eval mode. The conversion is data on the module: the per-channel
    affine from the student's normalization to the teacher's is a pair of buffers, and the
    target side and length a buffer too, so that the state checksum keying the logit cache
    covers the conversion.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        classes: Sequence[Any],
        source: str,
        student: ImageSpec | TextSpec,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.classes = list(classes)
        self.source = source  # "module.teacher.ckpt_path=..." for logs and metrics.json
        self.weights_id = f"teacher:{backbone.weights_id}"  # the logit cache's key reads it
        self.pooling = getattr(backbone, "pooling", None)
        self.modality = backbone.modality
        own = backbone.input_spec
        self.size: int | None = None
        self.max_length: int | None = None
        scale = shift = None
        if isinstance(own, ImageSpec):
            self.size = int(image_size) if image_size else None
            if (own.mean, own.std) != (student.mean, student.std):
                # x_teacher = (x·σ_s + μ_s − μ_t) / σ_t, per channel; resizing is a convex
                # combination of pixels, so it commutes with this affine.
                mean_s, std_s = torch.tensor(student.mean), torch.tensor(student.std)
                mean_t, std_t = torch.tensor(own.mean), torch.tensor(own.std)
                scale = (std_s / std_t).view(1, -1, 1, 1)
                shift = ((mean_s - mean_t) / std_t).view(1, -1, 1, 1)
        else:
            self.max_length = int(own.max_length)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("target", torch.tensor([self.size or 0, self.max_length or 0]))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # A teacher never trains: dropout off and BatchNorm on its running statistics, whoever
        # calls train() (Lightning on the module, compute_features restoring a mode).
        return super().train(False)

    def convert(self, inputs: Any) -> Any:
        """The student's batch as the teacher reads it (on the inputs' device, no host sync)."""
        if self.max_length is not None:
            return {k: v[:, : self.max_length] for k, v in inputs.items()}
        if self.size is not None and tuple(inputs.shape[-2:]) != (self.size, self.size):
            shrink = inputs.shape[-1] > self.size  # antialias only when downsampling
            inputs = F.interpolate(
                inputs, size=(self.size, self.size), mode="bilinear", antialias=shrink
            )
        if self.scale is not None:
            inputs = inputs * self.scale.to(inputs.dtype) + self.shift.to(inputs.dtype)
        return inputs

    def forward(self, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, Mapping) and FEATURES in inputs:
            raise RuntimeError("the student's cached features reached the teacher")
        return self.head(self.backbone(self.convert(inputs)))

    def describe(self) -> dict[str, Any]:
        """For logs and metrics.json."""
        return {
            "source": self.source,
            "weights_id": self.backbone.weights_id,
            "image_size": self.size,
            "max_length": self.max_length,
            "renormalized": self.scale is not None,
        }


# --- loading the teacher ----------------------------------------------------------------------


def load_teacher(
    config: Mapping[str, Any] | None,
    classes: Sequence[Any],
    student: nn.Module,
) -> Teacher:
    """The teacher ``module.teacher`` names (see the module docstring), checked against the
    student: same classes in the same order, same modality, same tokenizer for text."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(TEACHER_KEYS))
    if unknown:
        raise FtlabError(
            f"module.teacher has unknown keys {unknown}: it takes {', '.join(TEACHER_KEYS)}"
        )
    ckpt_path, model = config.get("ckpt_path"), config.get("model")
    if bool(ckpt_path) == bool(model):
        given = "both" if ckpt_path else "neither"
        raise FtlabError(
            f"module.teacher: {given} of ckpt_path and model given; set one, e.g. "
            "module.teacher.ckpt_path=<teacher run>/checkpoints/last.ckpt"
        )
    # Building the teacher initialises a model before loading its weights: it must not move
    # the run's random stream, so that a distilled run and its plain twin start alike.
    with torch.random.fork_rng(devices=[]):
        if ckpt_path:
            key = "module.teacher.ckpt_path"
            where = f"{key}={ckpt_path}"
            ckpt = load_checkpoint(str(ckpt_path), key=key)
            restored, backbone = restore_module(ckpt, str(ckpt_path))
            head, taught = restored.head, list(ckpt["ftlab"].classes)
            trained_at = run_image_size(Path(str(ckpt_path)))
        else:
            backbone, head, taught, where = _from_export(model)
            trained_at = (False, None)
    _check_classes(where, taught, classes)
    spec = student.input_spec
    if backbone.modality != student.modality:
        raise FtlabError(
            f"{where} reads {backbone.modality} and the student {student.modality}: give a "
            f"teacher trained on {student.modality} data"
        )
    size = None
    if isinstance(spec, TextSpec):
        _check_tokenizers(where, backbone.input_spec, spec)
    else:
        size = _teacher_size(where, config.get("image_size"), trained_at, backbone)
    teacher = Teacher(backbone, head, taught, where, spec, size)
    log.info("teacher %s: %s", where, teacher.describe())
    return teacher


def run_image_size(ckpt_path: Path) -> tuple[bool, int | None]:
    """``(found, data.image_size)`` of the run that wrote ``<run>/checkpoints/<file>.ckpt``,
    from the ``.hydra/config.yaml`` Hydra left beside it (plain YAML, never run). A size of
    None in a found config means the teacher's backbone's own size."""
    parent = ckpt_path.expanduser().resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    try:
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
        size = config["data"]["image_size"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False, None
    return (True, size) if size is None or isinstance(size, int) else (False, None)


def _teacher_size(
    where: str,
    given: int | None,
    trained_at: tuple[bool, int | None],
    backbone: nn.Module,
) -> int | None:
    """The side the teacher's images are resized to; None keeps the student's images' size."""
    if given:
        return int(given)
    found, size = trained_at
    if found:
        size = size or backbone.input_spec.size
        log.info("%s: its images are resized to %d px, the size its run trained at", where, size)
        return int(size)
    log.warning(
        "%s: no run config beside it says the size it was trained at; it gets the student's "
        "images at their size (set module.teacher.image_size to resize them)",
        where,
    )
    return None


def _from_export(model: Any) -> tuple[nn.Module, nn.Module, list[Any], str]:
    """Backbone, head, classes and a name for messages from ``module.teacher.model``."""
    from safetensors.torch import load_file

    from ftlab.record import parse_record, restore_backbone

    if not isinstance(model, Mapping):
        raise FtlabError(
            f"module.teacher.model={model!r} must be a model config such as "
            "{name: test_resnet, weights: <run>/merged}"
        )
    unknown = sorted(set(model) - set(MODEL_KEYS) - {"_target_"})
    if unknown:
        raise FtlabError(
            f"module.teacher.model has unknown keys {unknown}: it takes {', '.join(MODEL_KEYS)}"
        )
    weights = model.get("weights")
    where = f"module.teacher.model.weights={weights}"
    folder = Path(str(weights or "")).expanduser()
    if not weights or not all((folder / f).is_file() for f in MERGED_FILES):
        raise FtlabError(
            f"{where} holds no classifier over the data's classes (a backbone's weights alone "
            "cannot teach): give an export=merged directory of a trained ftlab run "
            f"({', '.join(MERGED_FILES)}), or module.teacher.ckpt_path"
        )
    try:
        record = parse_record(json.loads((folder / "ftlab.json").read_text()), where)
        backbone = restore_backbone(record.backbone)
        backbone.model.load_state_dict(load_file(folder / "model.safetensors"))
        head = make_head(backbone.num_features, len(record.classes), **_head_kwargs(record.head))
        head.load_state_dict(load_file(folder / "head.safetensors"))
    except FtlabError:
        raise
    except Exception as err:  # a torn or foreign file: one line, not a load_state_dict dump
        raise FtlabError(
            f"{where} is not a loadable export=merged directory ({first_line(err)}): export the "
            "teacher's checkpoint again (python eval.py export=merged ckpt_path=...)"
        ) from None
    name = model.get("name")
    if name and name != record.backbone.name:
        raise FtlabError(
            f"{where} holds a {record.backbone.name} model, not {name}: set "
            f"module.teacher.model.name={record.backbone.name}"
        )
    return backbone, head, list(record.classes), where


def _head_kwargs(head: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": head["kind"], "dropout": head["dropout"], "hidden": head.get("hidden", 0)}


def _check_classes(where: str, taught: Sequence[Any], classes: Sequence[Any]) -> None:
    if [str(c) for c in taught] != [str(c) for c in classes]:
        shown = ", ".join(map(str, list(taught)[:6])) + (", ..." if len(taught) > 6 else "")
        mine = ", ".join(map(str, list(classes)[:6])) + (", ..." if len(classes) > 6 else "")
        raise FtlabError(
            f"{where} was trained on classes [{shown}], this run's data has [{mine}]: its "
            "logits must cover the same classes in the same order"
        )


def _check_tokenizers(where: str, teacher: TextSpec, student: TextSpec) -> None:
    """Refuse a text teacher whose tokenizer maps text to other ids than the student's."""
    a, b = teacher.tokenizer, student.tokenizer
    same = a.get_vocab() == b.get_vocab() and (
        a(PROBE_TEXT)["input_ids"] == b(PROBE_TEXT)["input_ids"]
    )
    if not same:
        raise FtlabError(
            f"{where} reads text with the tokenizer of {teacher.name or type(a).__name__}, the "
            f"student with that of {student.name or type(b).__name__}: the teacher would get "
            "ids of another vocabulary; distil between models that share a tokenizer"
        )


# --- the module ---------------------------------------------------------------------------------


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


# --- the teacher-logit cache --------------------------------------------------------------------


class LogitsDataset(Dataset):
    """A data set's items with the teacher's logits of each appended: ``(*item, logits)``."""

    def __init__(self, dataset: Dataset, logits: torch.Tensor) -> None:
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], self.logits[index])


class LogitsCollate:
    """The wrapped loader's collate on the items without their logits, then the logits stacked
    (a class, not a closure, so that loader workers can pickle it)."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None) -> None:
        self.collate = collate or default_collate

    def __call__(self, items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        batch = self.collate([item[:-1] for item in items])
        return (*batch, torch.stack([item[-1] for item in items]))


def logit_cache_blocker(module: Distiller, data: Any, trainer: Mapping[str, Any]) -> str | None:
    """Why the teacher's logits cannot be cached for this run, or None."""
    if not module.cache_logits:
        return "module.cache_logits=false"
    if module.mixer is not None:
        return "module.mixup/module.cutmix: the teacher reads the mixed images"
    if getattr(data, "augment", False):
        return "data.augment=true draws random augmentations"
    # A pass of the teacher over the whole split would not pay for part of one.
    limit, overfit = trainer.get("limit_train_batches"), trainer.get("overfit_batches")
    if overfit or not (limit is None or (isinstance(limit, float) and limit >= 1.0)):
        key, value = ("overfit_batches", overfit) if overfit else ("limit_train_batches", limit)
        return f"trainer.{key}={value} visits part of the train split"
    return None


class TeacherLogits(L.LightningDataModule):
    """The data module during fit when the teacher's logits are cached: ``inner``'s loaders,
    its train batches extended with each sample's logits (see the module docstring).

    ``inner`` is what fit would read otherwise (the data, or the feature cache in front of
    it); ``data`` is the run's own data module, whose images the teacher reads once.
    """

    def __init__(
        self,
        inner: L.LightningDataModule,
        data: L.LightningDataModule,
        module: Distiller,
        trainer: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.inner, self.data, self.module = inner, data, module
        self.blocker = logit_cache_blocker(module, data, trainer or {})
        self.cache_dir = Path(cache_dir).expanduser() / "teacher_logits" if cache_dir else None
        self.logits: torch.Tensor | None = None
        self.source: str | None = None  # "disk" or "computed"
        self.path: Path | None = None
        self.seconds = 0.0
        self._wrapped: tuple[DataLoader, DataLoader] | None = None  # (inner's, ours)
        log.info(
            "teacher logits: %s",
            f"not cached ({self.blocker}): the teacher runs in every training step"
            if self.blocker
            else "cached (computed once per train split)",
        )

    @property
    def used(self) -> bool:
        return self.blocker is None

    def report(self) -> dict[str, Any]:
        """For metrics.json: whether the logits were cached, where from, and how long it took."""
        return {
            "used": self.used,
            "reason": self.blocker or "deterministic data: computed once per train split",
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "seconds": round(self.seconds, 3),
        }

    # -- LightningDataModule: everything but the train batches is inner's -------------------

    def _attach(self) -> L.LightningDataModule:
        # Lightning attaches the Trainer to the data module fit gets: pass it on (the feature
        # cache reads the epoch from it).
        self.inner.trainer = self.trainer
        return self.inner

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self._attach().setup(stage)

    def val_dataloader(self) -> Any:
        return self._attach().val_dataloader()

    def test_dataloader(self) -> Any:
        return self._attach().test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        loader = self._attach().train_dataloader()
        # inner hands out a new loader at a phase boundary (images after cached features):
        # wrap each once; holding it keeps its id from being reused.
        if self._wrapped is None or self._wrapped[0] is not loader:
            self._wrapped = (loader, extend(loader, self._train_logits()))
        return self._wrapped[1]

    def _train_logits(self) -> torch.Tensor:
        if self.logits is not None:
            return self.logits
        started = time.perf_counter()
        trainer, teacher = self.trainer, self.module.teacher
        images = self.data.train_dataloader()  # the data's own: images, even under features
        key = cache_key(teacher, self.data, "train", str(trainer.precision))
        self.path = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
        (logits, _), self.source = read_or_compute(
            self.path,
            key,
            len(images.dataset),
            lambda: compute_features(teacher, images, trainer, "train teacher logits"),
            writer=trainer.is_global_zero,
        )
        self.seconds = time.perf_counter() - started
        log.info(
            "train teacher logits %s: %d x %d in %.1f s%s",
            "loaded" if self.source == "disk" else "computed",
            *logits.shape,
            self.seconds,
            f" ({self.path})" if self.path else "",
        )
        self.logits = logits
        return logits


def extend(loader: DataLoader, logits: torch.Tensor) -> DataLoader:
    """``loader`` over the same sampler and batching, each batch with its samples' logits last."""
    batching: dict[str, Any] = (
        {"batch_size": loader.batch_size, "sampler": loader.sampler, "drop_last": loader.drop_last}
        if loader.batch_size is not None
        else {"batch_sampler": loader.batch_sampler}
    )
    return ResumableLoader(
        LogitsDataset(loader.dataset, logits),
        collate_fn=LogitsCollate(loader.collate_fn),
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        **batching,
    )
