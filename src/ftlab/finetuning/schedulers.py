"""LR schedulers that scale each param group's own lr, so discriminative lrs survive them.

Each factory takes the optimizer and the number of scheduler steps (``total_steps``: optimizer
steps for ``interval: step``, epochs for ``interval: epoch``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, SequentialLR, StepLR


def _steps(value: float, total: int) -> int:
    """A fraction (< 1) of ``total`` or an absolute count."""
    return int(value * total) if 0 < value < 1 else int(value)


def cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Cosine with linear warmup as a LambdaLR: a multiplier on every group's base lr."""
    warmup_steps = _steps(warmup, total_steps)
    return LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps, warmup_steps, min_lr_ratio))


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25) -> OneCycleLR:
    """OneCycle peaking at each group's own lr (torch's default ``max_lr`` would flatten them)."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=peaks, total_steps=max(1, total_steps), pct_start=pct_start)


def warmup_then_step(
    optimizer: Optimizer,
    total_steps: int | None = None,
    warmup: int = 1,
    step_size: int = 1,
    gamma: float = 0.5,
) -> LRScheduler:
    """SequentialLR: linear warmup for ``warmup`` steps, then StepLR (needs no run length, so
    ``total_steps`` is ignored and may be None: ``trainer.max_epochs=-1``)."""
    warm = LambdaLR(optimizer, lambda s: (s + 1) / (warmup + 1))
    decay = StepLR(optimizer, step_size=step_size, gamma=gamma)
    return SequentialLR(optimizer, [warm, decay], milestones=[warmup])


def rescale_lrs(optimizer: Optimizer, scheduler: object | None, indices: list[int], factor: float):
    """Multiply the lr of param groups ``indices`` by ``factor``, in the optimizer and scheduler.

    A phase's ``lr_scale`` (LP-FT) must outlive the next scheduler step: LambdaLR-style
    schedulers recompute lr from ``base_lrs``, OneCycle from ``max_lr``/``min_lr``/``initial_lr``.
    Both live in state_dicts, so a resumed run sees the scaled values and never scales twice.
    """
    for i in indices:
        group = optimizer.param_groups[i]
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    targets = [scheduler, *getattr(scheduler, "_schedulers", [])]
    for sched in targets:
        for attr in ("base_lrs", "_last_lr"):
            values = getattr(sched, attr, None)
            if isinstance(values, list):
                for i in indices:
                    values[i] *= factor
