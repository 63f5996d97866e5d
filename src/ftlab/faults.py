"""Faults during training: a preemption (SIGTERM) and a loss that is no longer finite.

SIGTERM: Lightning's own signal connector catches it (and passes it on to its DDP children),
and its loops stop at the next batch boundary, every rank at the same one, by raising
``SIGTERMException`` after calling each callback's ``on_exception``. ``FaultGuard`` saves
``checkpoints/last.ckpt`` there: the full state (weights, optimizer, scheduler, phase, loop
progress and the train loader's position, see ftlab.data.resumable), so ``resume=true``
continues mid-epoch exactly. ``recorded`` then writes ``metrics.json`` with status
``interrupted`` and raises ``RunInterrupted``, whose message ends with the resume command.

A loss that is nan or inf stops the run before its backward pass, so no update and no
checkpoint holds it: the last periodic ``last.ckpt`` stays the last good state.
``metrics.json`` says ``failed`` with the reason.

SIGKILL cannot be caught: what it loses is bounded by the periodic checkpoint
(``callbacks.last_checkpoint.every_n_train_steps``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ftlab.errors import FtlabError, RunInterrupted
from ftlab.finetuning.plan import Plan
from ftlab.outputs import write_json
from ftlab.rundir import LAST, resume_command

log = logging.getLogger("ftlab")


class TrainingDiverged(FtlabError):
    """The loss became nan or inf; ``record`` is what metrics.json says about it."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class FaultGuard(L.Callback):
    """Saves the state on SIGTERM; stops on a non-finite loss before it reaches the weights."""

    def __init__(self, run_dir: Path, plan: Plan) -> None:
        self.last = run_dir / LAST
        self.plan = plan

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops at the same step, or the others hang
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise self._diverged(trainer, float(loss.detach().float().mean()))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only during fit: validate/test after it run on the best weights, not the run's state.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.last)
            log.info("SIGTERM: state at global step %d saved to %s", trainer.global_step, self.last)

    def _diverged(self, trainer: L.Trainer, value: float) -> TrainingDiverged:
        phase = self.plan.phase_at(trainer.current_epoch)
        groups = ", ".join(self.plan.summary()[phase]["unfrozen"]) or "no new groups"
        kept = self.last if self.last.is_file() else None
        where = (
            f"{kept} (global step {_step_of(kept)}) is the last saved state"
            if kept
            else "no checkpoint was saved before it"
        )
        loss = "nan" if math.isnan(value) else "inf"
        message = (
            f"loss is {loss} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"phase {phase}: {groups} unfrozen): stopped before that update, {where}; lower "
            "optimizer.lr or set trainer.gradient_clip_val and start again"
        )
        record = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "phase": phase,
            "last_checkpoint": str(kept) if kept else None,
        }
        return TrainingDiverged(message, record)


def _step_of(path: Path) -> int | str:
    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # a checkpoint we cannot read is still named; its step is unknown
        return "?"


@contextmanager
def recorded(trainer: L.Trainer, run_dir: Path, started: dict[str, Any]) -> Iterator[None]:
    """Turn a SIGTERM stop or a divergence into metrics.json's status and a one-line exception.

    ``started`` is what metrics.json records about any run (seed, model); rank 0 writes it.
    """
    try:
        yield
    except SIGTERMException:
        last = run_dir / LAST
        command = resume_command(run_dir)
        record = {
            "status": "interrupted",
            "reason": "SIGTERM",
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "checkpoint": str(last) if last.is_file() else None,
            "resume": command,
            **started,
        }
        if trainer.is_global_zero:
            write_json(run_dir / "metrics.json", record)
        saved = f"state saved to {last}" if last.is_file() else "no state saved"
        raise RunInterrupted(
            f"SIGTERM at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"{saved}; continue with: {command}"
        ) from None
    except TrainingDiverged as err:
        if trainer.is_global_zero:
            write_json(
                run_dir / "metrics.json",
                {"status": "failed", "error": str(err), **err.record, **started},
            )
        raise
