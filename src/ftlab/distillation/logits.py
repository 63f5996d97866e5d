"""The teacher-logit cache: the teacher's logits for the train split computed once and stored
like the feature cache's files, and :class:`TeacherLogits`, the data module that adds them
to each train batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ftlab.data.resumable import ResumableLoader
from ftlab.finetuning.features import (
    cache_key,
    compute_features,
    partial_train_split,
    read_or_compute,
)

if TYPE_CHECKING:  # the module builds its logit cache
    from ftlab.distillation.module import Distiller

log = logging.getLogger("ftlab")


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
    return partial_train_split(trainer)


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
