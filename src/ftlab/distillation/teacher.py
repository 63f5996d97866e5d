"""The frozen teacher (:class:`Teacher`): loaded from a run's checkpoint or an ``export=merged``
folder, checked against the student's classes, modality and tokenizer, and converting the
student's batches to its own inputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.checkpoints import first_line, load_checkpoint, restore_module
from ftlab.errors import FtlabError
from ftlab.finetuning.features import FEATURES
from ftlab.module import make_head
from ftlab.runinfo import RunInfo
from ftlab.specs import ImageSpec, TextSpec

log = logging.getLogger("ftlab")


TEACHER_KEYS = ("ckpt_path", "model", "image_size")


MODEL_KEYS = ("name", "source", "pretrained", "weights")


MERGED_FILES = ("ftlab.json", "model.safetensors", "head.safetensors")  # ftlab.exports "merged"


# Texts the tokenizer check encodes: case, punctuation, digits and accents tell tokenizers
# that share a vocabulary but normalize differently apart.
PROBE_TEXT = "Shares in ACME fell 3.5% on Tuesday; the CEO's café reopened."


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
            trained_at = RunInfo.beside(str(ckpt_path)).image_size()  # its data.image_size
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
