"""Cached backbone features for the epochs that train only the head on a frozen backbone.

While only the head trains, the backbone is a fixed function of each sample: it runs in eval
mode (FinetuneModule.train), no parameter of it changes and the transforms are deterministic. Its
outputs are then computed once and the head trains on them. The phases are cumulative, so the
cached epochs are always a prefix of the run, ``[0, until_epoch)``.

During fit, :class:`FeatureCache` stands in for the data module. In a cached epoch its train and
val loaders yield ``({FEATURES: [B, F]}, labels)`` with the data's own sampler (the same
EpochShuffle order) and batch size, so the head sees the same batches as on the fly; the module
skips the backbone for such inputs. Lightning asks for the loaders every epoch
(``reload_dataloaders_every_n_epochs=1``; each loader is built once and reused), so the switch
to images happens exactly at the phase boundary, after a resume too. Features live in memory and,
under ``paths.cache_dir``, on disk, keyed by the backbone (weights_id and a checksum of its
state), the data's ``fingerprint()`` (samples and transform), the split and the precision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ftlab.data.resumable import ResumableLoader
from ftlab.errors import FtlabError
from ftlab.finetuning.plan import HEAD, Plan

log = logging.getLogger("ftlab")

FEATURES = "features"  # batch inputs {FEATURES: [B, F]} are backbone outputs: skip the backbone
CACHE_VERSION = 1  # bump when a code change alters the features a backbone produces
HEAD_SOLVERS = ("lbfgs",)


@dataclass(frozen=True)
class CachePlan:
    """Which epochs and splits use cached features, and why (or why not)."""

    until_epoch: int | None  # epochs before it are cached; None: every epoch; 0: none
    reason: str
    splits: tuple[str, ...] = ()

    @property
    def used(self) -> bool:
        return self.until_epoch != 0

    def cached(self, epoch: int) -> bool:
        return self.until_epoch is None or epoch < self.until_epoch


def plan_cache(
    plan: Plan, freeze: Mapping[str, Any], data: Any, trainer: Mapping[str, Any]
) -> CachePlan:
    """Decide from the plan and configs, before training, which epochs train on cached features."""
    enabled = freeze.get("cache_features", True)
    if not isinstance(enabled, bool):
        raise FtlabError(f"freeze.cache_features={enabled} must be true or false")
    if not enabled:
        return CachePlan(0, "freeze.cache_features=false")
    until = None
    for index, phase in enumerate(plan.phases):
        others = sorted({u.group for u in plan.units if u.phase == index and u.group != HEAD})
        if others:
            if index == 0:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                return CachePlan(0, f"phase 0 trains more than the head ({shown})")
            until = phase.epoch
            break
    if getattr(data, "augment", False):
        return CachePlan(0, "data.augment=true draws random augmentations")
    # Caching a whole split costs a pass over it; partial epochs would not repay it.
    limit, overfit = trainer.get("limit_train_batches"), trainer.get("overfit_batches")
    if not _whole(limit) or overfit:
        key, value = ("overfit_batches", overfit) if overfit else ("limit_train_batches", limit)
        return CachePlan(0, f"trainer.{key}={value} visits part of the train split")
    splits = ("train", "val") if _whole(trainer.get("limit_val_batches")) else ("train",)
    if until is None:
        epochs = "every epoch"
    else:
        epochs = "epoch 0" if until == 1 else f"epochs 0-{until - 1}"
    return CachePlan(until, f"the head alone trains on a frozen backbone in {epochs}", splits)


def _whole(limit: Any) -> bool:
    """Whether a Lightning batch limit keeps every batch (an integer counts as a part)."""
    return limit is None or (isinstance(limit, float) and limit >= 1.0)


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
        solver_l2: float | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.plan = plan
        self.cache_dir = Path(cache_dir).expanduser() / "features" if cache_dir else None
        self.features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sources: dict[str, str] = {}  # split -> "disk" or "computed"
        self.seconds = 0.0
        self._loaders: dict[tuple[str, bool], DataLoader] = {}
        self.solver = HeadSolver(self, solver_l2) if solver_l2 is not None else None

    @classmethod
    def from_config(cls, cfg: Any, plan: Plan, data: L.LightningDataModule) -> FeatureCache:
        """The run's cache from ``freeze``, ``trainer`` and ``paths.cache_dir``; logs its choice."""
        freeze = OmegaConf.to_container(cfg.freeze, resolve=True)
        trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
        decision = plan_cache(plan, freeze, data, trainer)
        log.info("feature cache %s: %s", "on" if decision.used else "off", decision.reason)
        solver = solver_name(freeze, decision)
        # The probe's L2 is the head's weight decay, the penalty SGD with that decay minimizes.
        l2 = next((u.weight_decay for u in plan.units if u.group == HEAD and u.decay), 0.0)
        return cls(data, decision, cfg.paths.get("cache_dir"), l2 if solver else None)

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
        if path is not None and path.is_file():
            stored = load_file(path)
            features, labels = stored["features"], stored["labels"]
            self.sources[split] = "disk"
        else:
            features, labels = compute_features(module.backbone, loader, trainer)
            self.sources[split] = "computed"
            if path is not None and trainer.is_global_zero:
                _write_atomic({"features": features, "labels": labels}, path)
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


def cache_key(backbone: nn.Module, data: Any, split: str, precision: str) -> str:
    """What the features depend on: the backbone's weights (id and state), the data's samples
    and transform (``fingerprint()``), the split and the precision."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())
    identity = {
        "version": CACHE_VERSION,
        "backbone": type(backbone).__name__,
        "weights_id": getattr(backbone, "weights_id", ""),
        "state": digest.hexdigest(),
        "data": type(data).__name__,
        "fingerprint": data.fingerprint(),
        "split": split,
        "precision": precision,
    }
    blob = json.dumps(identity, sort_keys=True).encode()
    return f"{split}-{hashlib.sha256(blob).hexdigest()[:24]}"


@torch.no_grad()
def compute_features(
    backbone: nn.Module, loader: DataLoader, trainer: L.Trainer
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's outputs for every sample of ``loader``'s data set, in index order, computed
    in eval mode the way Lightning runs a step (device, input conversion, precision context)."""
    ordered = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    # The extra pass must not draw from the run's RNG (a loader draws a seed per iterator), so
    # that head dropout then gets the same masks as on the fly.
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in ordered:
                inputs, targets = trainer.precision_plugin.convert_input(
                    trainer.strategy.batch_to_device(batch)
                )
                with trainer.precision_plugin.forward_context():
                    features.append(backbone(inputs).cpu())
                labels.append(targets.cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write then rename, so that a concurrent run never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, partial)
    os.replace(partial, path)


# --- head solver ---------------------------------------------------------------------------------


def solver_name(freeze: Mapping[str, Any], cache: CachePlan) -> str | None:
    """``freeze.head_solver``, checked: it needs phase 0 to train on cached features."""
    name = freeze.get("head_solver")
    if name is None:
        return None
    if name not in HEAD_SOLVERS:
        raise FtlabError(f"freeze.head_solver={name!r} is unknown: use lbfgs or null")
    if not cache.used:
        raise FtlabError(
            f"freeze.head_solver={name} fits the head on cached features, which this run does "
            f"not use: {cache.reason}"
        )
    return name


def fit_head_lbfgs(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    l2: float,
    max_iter: int = 100,
) -> dict[str, float]:
    """Fit the head by full-batch L-BFGS on cross-entropy + ``l2``/2 · ‖weights‖² (biases are
    not penalized), as LP-FT fits its linear probe. Returns the loss before and after."""
    weights = [p for p in head.parameters() if p.ndim > 1]
    criterion = nn.CrossEntropyLoss()
    was_training = head.training
    head.eval()  # head dropout off: L-BFGS needs a deterministic objective

    def objective() -> torch.Tensor:
        loss = criterion(head(features), labels)
        return loss + 0.5 * l2 * sum((w * w).sum() for w in weights)

    optimizer = torch.optim.LBFGS(
        head.parameters(), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.no_grad():
        before = objective().item()
    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        after = objective().item()
    optimizer.zero_grad(set_to_none=True)
    head.train(was_training)
    return {"loss_before": before, "loss_after": after}


class HeadSolver(L.Callback):
    """Fits the head with L-BFGS on the cached train features before the first step.

    Only a run that starts at step 0 fits; a resumed one has the fitted head in its checkpoint.
    """

    def __init__(self, cache: FeatureCache, l2: float) -> None:
        self.cache, self.l2 = cache, l2
        self.result: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:
            return
        started = time.perf_counter()
        features, labels = self.cache.features["train"]
        device = pl_module.device
        self.result = fit_head_lbfgs(
            pl_module.head, features.to(device), labels.to(device), self.l2
        )
        # Ranks fit on the same data; rank 0's head makes them bit-identical.
        for param in pl_module.head.parameters():
            param.data.copy_(trainer.strategy.broadcast(param.data, src=0))
        self.result["seconds"] = round(time.perf_counter() - started, 3)
        log.info(
            "head_solver=lbfgs: train loss %.4f -> %.4f in %.1f s (l2 %g)",
            self.result["loss_before"],
            self.result["loss_after"],
            self.result["seconds"],
            self.l2,
        )
