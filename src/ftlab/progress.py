"""Progress: a rich bar in a terminal, plain log lines elsewhere (CI, SLURM logs, pipes)."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger("ftlab")


class EpochLines(L.Callback):
    """One log line per epoch with its metrics and duration."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        self._report(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Without a val loop this is the only end-of-epoch hook that fires.
        if trainer.is_global_zero and trainer.num_val_batches in ([], [0]):
            self._report(trainer)

    def _report(self, trainer: L.Trainer) -> None:
        metrics = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and not k.endswith("_step")
        }
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        seconds = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        log.info(
            "epoch %d/%d %s (%.1fs)", trainer.current_epoch + 1, trainer.max_epochs, shown, seconds
        )


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """One line per Lightning message: its own handler would repeat what Hydra's root logs."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())


def progress_callbacks() -> tuple[bool, list[L.Callback]]:
    """``(enable_progress_bar, callbacks)`` for the current stdout."""
    if sys.stdout.isatty():
        return True, [RichProgressBar()]
    return False, [EpochLines()]
