"""Lightning's finders on ftlab's plans: ``tune=lr_find`` and ``tune=batch_size``.

**lr_find.** Lightning's range test (``LearningRateFinder``, what ``Tuner.lr_find`` runs) sets
every param group to the same candidate lr, which would erase a plan's discriminative lrs: the
curve would describe a model trained at one flat lr that ftlab never uses. :class:`PlanLRFinder`
runs Lightning's test unchanged and, around each optimizer step, scales each group by its ratio
to the plan's base lr (``Optimization.lr``, the head's), so every group moves together and the
candidate Lightning records is the head's lr. The suggestion then replaces ``optimizer.lr``
(``optimizer.lr_range`` is scaled with it), and every other group follows through the plan.

**batch_size.** ``Tuner.scale_batch_size`` on the data module's ``batch_size``. On a CPU there is
no out-of-memory error to stop the doubling, so ``max_trials`` bounds it.

The finders run on their own Trainer, without loggers or checkpoints, before the run's module is
built; the run then trains from the same seed with the value found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.tuner import Tuner

from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")

KINDS = ("lr_find", "batch_size")
# callbacks -> the run's Trainer without loggers, checkpoints or a progress bar (ftlab.compose)
TrainerFactory = Callable[[list[L.Callback]], L.Trainer]
LR_FIND_KEYS = ("min_lr", "max_lr", "num_training_steps", "mode", "early_stop_threshold")
BATCH_SIZE_KEYS = ("mode", "steps_per_trial", "max_trials")


class PlanLRFinder(LearningRateFinder):
    """Lightning's learning-rate range test, keeping the plan's ratios between param groups."""

    def __init__(self, base_lr: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_lr = base_lr

    def lr_find(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.strategy.optimizers[0]
        # The plan's absolute lrs, as ratios to its base: Lightning overwrites them next.
        ratios = [group["lr"] / self.base_lr for group in optimizer.param_groups]
        saved: list[float] = []

        def scale(opt: Any, args: Any, kwargs: Any) -> None:
            saved[:] = [group["lr"] for group in opt.param_groups]
            for group, ratio in zip(opt.param_groups, ratios, strict=True):
                group["lr"] *= ratio

        def restore(opt: Any, args: Any, kwargs: Any) -> None:
            for group, lr in zip(opt.param_groups, saved, strict=True):
                group["lr"] = lr

        handles = [optimizer.register_step_pre_hook(scale)]
        handles.append(optimizer.register_step_post_hook(restore))
        try:
            super().lr_find(trainer, pl_module)
        finally:
            for handle in handles:
                handle.remove()


def check_settings(tune: Mapping[str, Any]) -> str:
    """The finder's kind; unknown kinds and keys in one line."""
    kind = tune.get("kind")
    if kind not in KINDS:
        raise FtlabError(f"tune.kind={kind!r} is unknown: use tune=lr_find or tune=batch_size")
    allowed = ("kind", *(LR_FIND_KEYS if kind == "lr_find" else BATCH_SIZE_KEYS))
    for key in tune:
        if key not in allowed:
            raise FtlabError(f"tune.{key} is not a key of tune={kind}: use {', '.join(allowed)}")
    modes = ("exponential", "linear") if kind == "lr_find" else ("power", "binsearch")
    if tune.get("mode", modes[0]) not in modes:
        raise FtlabError(
            f"tune.mode={tune['mode']!r} is unknown for tune={kind}: use {' or '.join(modes)}"
        )
    return str(kind)


def find_lr(
    module: Any, data: L.LightningDataModule, trainer: TrainerFactory,
    settings: Mapping[str, Any], out: Path,
) -> dict[str, Any]:  # fmt: skip
    """Run the range test on ``module`` (built with its plan); write ``lr_find.png`` to ``out``.

    Returns what metrics.json records: the suggestion (None when the curve has none), the range
    and the tested points.
    """
    options = {k: settings[k] for k in LR_FIND_KEYS if k in settings}
    finder = PlanLRFinder(module.optimization.lr, update_attr=False, **options)
    finder._early_exit = True  # as Tuner.lr_find: stop the fit once the test is done
    trainer([finder]).fit(module, datamodule=data)
    result = finder.optimal_lr
    if result is None:
        raise FtlabError("tune=lr_find ran no test (trainer.fast_dev_run?): unset fast_dev_run")
    suggestion = result.suggestion()
    out.mkdir(parents=True, exist_ok=True)
    figure = result.plot(suggest=suggestion is not None)
    figure.savefig(out / "lr_find.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return {
        "kind": "lr_find",
        "suggestion": suggestion,
        "configured_lr": module.optimization.lr,
        "points": len(result.results["lr"]),
        "plot": str(out / "lr_find.png"),
    }


def find_batch_size(
    module: Any, data: L.LightningDataModule, trainer: TrainerFactory,
    settings: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """``Tuner.scale_batch_size`` from the data's own batch size, doubling while steps succeed."""
    start = int(data.batch_size)
    found = Tuner(trainer([])).scale_batch_size(
        module,
        datamodule=data,
        mode=settings.get("mode", "power"),
        steps_per_trial=int(settings.get("steps_per_trial", 3)),
        init_val=start,
        max_trials=int(settings.get("max_trials", 6)),
    )
    return {"kind": "batch_size", "suggestion": int(found), "configured_batch_size": start}
