"""The stand-in data module during fit (:class:`FeatureCache`): cached-feature loaders in the
cached epochs, the data's own loaders after them (see :mod:`ftlab.finetuning.features`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ftlab.data.resumable import ResumableLoader
from ftlab.finetuning.features.cache_plan import FEATURES, CachePlan, plan_cache
from ftlab.finetuning.features.head_solver import HeadSolver, solver_name
from ftlab.finetuning.features.store import cache_key, compute_features, read_or_compute

log = logging.getLogger("ftlab")


class FeatureDataset(Dataset):
    """Precomputed features and labels; an item is ``({FEATURES: [F]}, label)``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {FEATURES: self.features[index]}, self.labels[index]


class FeatureCache(L.LightningDataModule):
    """The data module during fit: cached-feature loaders in cached epochs, the data's own
    loaders otherwise (see the module docstring). ``datamodule`` is what ``trainer.fit`` takes."""

    def __init__(
        self,
        data: L.LightningDataModule,
        plan: CachePlan,
        cache_dir: str | None = None,
        head_solver: str | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.plan = plan
        self.cache_dir = Path(cache_dir).expanduser() / "features" if cache_dir else None
        self.features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sources: dict[str, str] = {}  # split -> "disk" or "computed"
        self.seconds = 0.0
        self._loaders: dict[tuple[str, bool], DataLoader] = {}
        self.solver = HeadSolver(self) if head_solver == "lbfgs" else None

    @classmethod
    def for_module(
        cls,
        module: Any,
        data: L.LightningDataModule,
        trainer: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> FeatureCache:
        """The cache for a module's plan and freeze spec on ``data``; logs its choice.

        ``trainer`` holds the Trainer's keyword arguments (its batch limits decide whether a
        whole split is visited); ``cache_dir`` keeps the features on disk across runs. The
        module may name a reason its steps need the inputs (``cache_blocker``).
        """
        blocker = getattr(module, "cache_blocker", lambda: None)()
        decision = plan_cache(module.plan, module.freeze, data, trainer or {}, blocker)
        log.info("feature cache %s: %s", "on" if decision.used else "off", decision.reason)
        solver = solver_name(module.freeze, decision)
        return cls(data, decision, cache_dir, solver)

    @property
    def callbacks(self) -> list[L.Callback]:
        return [self.solver] if self.solver is not None else []

    @property
    def datamodule(self) -> L.LightningDataModule:
        return self if self.plan.used else self.data

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        # Ask for loaders every epoch so images take over at until_epoch, also after a resume.
        return {"reload_dataloaders_every_n_epochs": 1} if self.plan.until_epoch else {}

    def report(self) -> dict[str, Any]:
        """For metrics.json: whether and where features were cached, and why."""
        return {
            "used": self.plan.used,
            "reason": self.plan.reason,
            "until_epoch": self.plan.until_epoch,
            "splits": list(self.plan.splits),
            "sources": dict(self.sources),
            "seconds": round(self.seconds, 3),
            "head_solver": self.solver.result if self.solver is not None else None,
        }

    # -- LightningDataModule ----------------------------------------------------------------

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.data.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.data.load_state_dict(state_dict)

    # -- loaders and features ----------------------------------------------------------------

    def _loader(self, split: str) -> DataLoader:
        cached = split in self.plan.splits and self.plan.cached(self.trainer.current_epoch)
        if not cached:  # past the cached epochs: free the features
            self._loaders.pop((split, True), None)
            self.features.pop(split, None)
        if (split, cached) not in self._loaders:
            loader = getattr(self.data, f"{split}_dataloader")()
            if cached:
                features, labels = self._features(split, loader)
                # The data's own sampler and batch size: the head sees the same batches.
                loader = ResumableLoader(
                    FeatureDataset(features, labels),
                    batch_size=loader.batch_size,
                    sampler=loader.sampler,
                    drop_last=loader.drop_last,
                )
            self._loaders[split, cached] = loader
        return self._loaders[split, cached]

    def _features(self, split: str, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        if split in self.features:
            return self.features[split]
        started = time.perf_counter()
        trainer, module = self.trainer, self.trainer.lightning_module
        key = cache_key(module.backbone, self.data, split, str(trainer.precision))
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
        (features, labels), self.sources[split] = read_or_compute(
            path,
            key,
            len(loader.dataset),
            lambda: compute_features(module.backbone, loader, trainer, f"{split} features"),
            writer=trainer.is_global_zero,
        )
        self.seconds += time.perf_counter() - started
        log.info(
            "%s features %s: %d x %d in %.1f s%s",
            split,
            "loaded" if self.sources[split] == "disk" else "computed",
            *features.shape,
            time.perf_counter() - started,
            f" ({path})" if path is not None else "",
        )
        self.features[split] = features, labels
        return features, labels
