"""Which epochs and splits train on cached backbone features, decided before training from the
plan and the configs (:func:`plan_cache`), and whether a run visits a whole split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ftlab.finetuning.plan import HEAD, Plan
from ftlab.finetuning.spec import FreezeSpec

FEATURES = "features"  # batch inputs {FEATURES: [B, F]} are backbone outputs: skip the backbone


@dataclass(frozen=True)
class CachePlan:
    """Which epochs and splits use cached features, and why (or why not)."""

    until_epoch: int | None  # epochs before it are cached; None: every epoch; 0: none
    reason: str
    splits: tuple[str, ...] = ()
    head_only: bool = False  # phase 0 trains the head alone (a probe), cached or not

    @property
    def used(self) -> bool:
        return self.until_epoch != 0

    def cached(self, epoch: int) -> bool:
        return self.until_epoch is None or epoch < self.until_epoch


def plan_cache(
    plan: Plan,
    freeze: FreezeSpec | Mapping[str, Any] | str,
    data: Any,
    trainer: Mapping[str, Any],
    blocker: str | None = None,
) -> CachePlan:
    """Decide from the plan and configs, before training, which epochs train on cached features.

    ``blocker`` is the module's reason, if any, why its training steps need the inputs
    themselves (e.g. mixup mixes images; a teacher reads them).
    """
    enabled = FreezeSpec.parse(freeze).cache_features
    until, head_only = None, True
    for index, phase in enumerate(plan.phases):
        others = sorted({u.group for u in plan.units if u.phase == index and u.group != HEAD})
        if others:
            if index == 0:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                head_only, more = False, f"phase 0 trains more than the head ({shown})"
            until = phase.epoch
            break
    if not enabled:
        return CachePlan(0, "freeze.cache_features=false", head_only=head_only)
    if not head_only:
        return CachePlan(0, more)
    if blocker:
        return CachePlan(0, blocker, head_only=True)
    if getattr(data, "augment", False):
        return CachePlan(0, "data.augment=true draws random augmentations", head_only=True)
    # Caching a whole split costs a pass over it; partial epochs would not repay it.
    if reason := partial_train_split(trainer):
        return CachePlan(0, reason, head_only=True)
    splits = ("train", "val") if whole(trainer.get("limit_val_batches")) else ("train",)
    if until is None:
        epochs = "every epoch"
    else:
        epochs = "epoch 0" if until == 1 else f"epochs 0-{until - 1}"
    reason = f"the head alone trains on a frozen backbone in {epochs}"
    return CachePlan(until, reason, splits, head_only=True)


def whole(limit: Any) -> bool:
    """Whether a Lightning batch limit keeps every batch (an integer counts as a part)."""
    return limit is None or (isinstance(limit, float) and limit >= 1.0)


def partial_train_split(trainer: Mapping[str, Any]) -> str | None:
    """Why the run visits part of the train split (``trainer.limit_train_batches``,
    ``trainer.overfit_batches``), or None. A cache of a whole split (features, a teacher's
    logits) costs a pass over it, which partial epochs would not repay."""
    limit, overfit = trainer.get("limit_train_batches"), trainer.get("overfit_batches")
    if overfit or not whole(limit):
        key, value = ("overfit_batches", overfit) if overfit else ("limit_train_batches", limit)
        return f"trainer.{key}={value} visits part of the train split"
    return None
