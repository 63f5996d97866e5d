"""Faults during training: a preemption (SIGTERM) and a loss that is no longer finite.

SIGTERM: Lightning's signal connector catches it (and passes it on to its DDP children).
``FaultGuard`` acts on it at the end of the next training batch, on every rank at once: it saves
``checkpoints/last.ckpt`` there (weights, optimizer, scheduler, phase, loop progress and the
train loader's position, see ftlab.data.resumable), the same state a periodic checkpoint holds,
so ``resume=true`` continues exactly, and stops the loops with Lightning's
``SIGTERMException``. A SIGTERM during validation is held until then: Lightning would stop
mid-validation, and a resume from there re-validates only the rest, so that epoch's val
metrics (and the best checkpoint) would differ. ``recorded`` then writes ``metrics.json`` with
status ``interrupted`` and raises ``RunInterrupted``, whose message ends with the resume command.

A nan or inf loss stops the run before its backward pass, and a save whose weights are nan or
inf stops it before the file is written, so the last good ``last.ckpt`` stays.
``metrics.json`` says ``failed`` with the reason.

SIGKILL cannot be caught: what it loses is bounded by the periodic checkpoint
(``callbacks.last_checkpoint.every_n_train_steps``).
"""

from __future__ import annotations

import logging
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
    """Saves the state and stops on SIGTERM; stops on a non-finite loss before the update."""

    def __init__(self, run_dir: Path, plan: Plan) -> None:
        self.last = run_dir / LAST
        self.plan = plan
        self.pending = False  # a SIGTERM arrived and is not acted on yet
        self.saved = False

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops at the same step, or the others hang
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise self._diverged(trainer, f"loss is {_kind(loss.detach())}")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Runs before the file is written, for every save: a finite loss can still come with an
        # update that overflowed the weights, and that state must not replace the last good one.
        # Trainable parameters only: frozen ones do not change, and some models keep -inf
        # mask buffers on purpose.
        for name, param in pl_module.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise self._diverged(trainer, f"weight {name} is {_kind(param.detach())}")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._hold(trainer)  # Lightning checks its flag right after this hook

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hold(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)  # held through the last validation

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning stopped on its own (a signal between the points above): keep that state.
        # Only during fit: validate/test after it hold the best weights, not the run's state.
        fit = trainer.state.fn == "fit"
        if isinstance(exception, SIGTERMException) and fit and not self.saved:
            self._save(trainer)

    def _hold(self, trainer: L.Trainer) -> None:
        connector = getattr(trainer, "_signal_connector", None)  # Lightning 2.x, private
        if trainer.state.fn == "fit" and connector is not None and connector.received_sigterm:
            connector.received_sigterm = False
            self.pending = True

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        stop = self.pending or trainer.received_sigterm
        if trainer.world_size > 1:  # a signal may reach the ranks at different batches
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._save(trainer)
            raise SIGTERMException

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last)
        self.saved = True
        log.info("SIGTERM: state at global step %d saved to %s", trainer.global_step, self.last)

    def _diverged(self, trainer: L.Trainer, what: str) -> TrainingDiverged:
        phase = self.plan.phase_at(trainer.current_epoch)
        groups = ", ".join(self.plan.summary()[phase]["unfrozen"]) or "no new groups"
        kept = self.last if self.last.is_file() else None
        where = (
            f"{kept} (global step {_step_of(kept)}) is the last saved state"
            if kept
            else "no checkpoint was saved before it"
        )
        message = (
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"phase {phase}: {groups} unfrozen): training stopped, {where}; lower optimizer.lr "
            "or set trainer.gradient_clip_val and start again"
        )
        record = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "phase": phase,
            "last_checkpoint": str(kept) if kept else None,
        }
        return TrainingDiverged(message, record)


def _kind(values: torch.Tensor) -> str:
    """nan, inf, or (a finite value here; another DDP rank's was not) not finite."""
    return "nan" if values.isnan().any() else "inf" if values.isinf().any() else "not finite"


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
