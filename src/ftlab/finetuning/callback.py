"""The Lightning adapter: enter the plan's phase at each epoch start.

Correct by construction under resume and DDP:
- the optimizer holds every unit's param group from the first step, so nothing is added mid-run;
- the phase is ``plan.phase_at(current_epoch)``, the same on every rank and after a restart;
- every parameter is registered with DDP before any is frozen (the module starts fully
  trainable and is frozen here, after the strategy wrapped it), so a parameter unfrozen later is
  all-reduced like any other; DDP runs with ``find_unused_parameters`` so frozen ones are skipped;
- the only stateful step, a phase's ``lr_scale``, is recorded in the checkpoint and applied once.
Replicas are compared by checksum at every phase change and at the end; a mismatch raises.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from ftlab.finetuning.freezing import apply_trainable, checksum
from ftlab.finetuning.plan import Plan
from ftlab.finetuning.schedulers import rescale_lrs

log = logging.getLogger(__name__)


class RankDivergenceError(RuntimeError):
    """DDP replicas hold different trainable parameters."""


class PhaseCallback(L.Callback):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.applied = -1  # last phase whose lr_scale was applied (checkpointed)
        self.active: int | None = None  # phase the module is in now (not checkpointed)
        self.history: list[dict[str, Any]] = []  # one entry per phase entered (checkpointed)
        self.rank_checksums: list[str] = []

    @property
    def state_key(self) -> str:
        return "ftlab.PhaseCallback"

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.applied = state_dict["applied"]
        self.history = list(state_dict["history"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch (Lightning skips it
        # on a mid-epoch restart): enter its phase here, before the first step.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = self.plan.phase_at(trainer.current_epoch)
        if phase == self.active:
            return
        trainable = self.plan.trainable(phase)
        count = apply_trainable(pl_module, trainable)
        # Re-derive the modules' modes from requires_grad (frozen BatchNorm, frozen backbone).
        pl_module.train(pl_module.training)
        for p in range(self.applied + 1, phase + 1):
            self._scale(trainer, p)
        self.applied = max(self.applied, phase)
        self.active = phase
        sums = self._check_ranks(trainer, pl_module, trainable, f"entering phase {phase}")
        if not self.history or self.history[-1]["phase"] < phase:
            entry = {**self.plan.summary()[phase], "start_epoch": trainer.current_epoch}
            entry["rank_checksums"] = sums
            self.history.append(entry)
        if trainer.is_global_zero:
            log.info(
                "phase %d from epoch %d: %s trainable parameters (+%s)",
                phase,
                trainer.current_epoch,
                f"{count:,}",
                ", ".join(self.plan.summary()[phase]["unfrozen"]) or "nothing",
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = self.active if self.active is not None else 0
        pl_module.log_dict(
            {
                "ftlab/phase": float(phase),
                "ftlab/trainable_params": float(self.plan.trainable_numel(phase)),
            },
            on_step=False,
            on_epoch=True,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = self.active if self.active is not None else 0
        self.rank_checksums = self._check_ranks(
            trainer, pl_module, self.plan.trainable(phase), "at the end of training"
        )

    def _scale(self, trainer: L.Trainer, phase: int) -> None:
        factor = self.plan.phases[phase].lr_scale
        if phase == 0 or not factor or factor == 1.0:
            return
        optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        # Groups already training when the phase starts: units of earlier phases, in plan order.
        indices = [i for i, u in enumerate(self.plan.units) if u.phase < phase]
        rescale_lrs(optimizer, scheduler, indices, factor)

    @staticmethod
    def _check_ranks(
        trainer: L.Trainer, pl_module: L.LightningModule, names: set[str], when: str
    ) -> list[str]:
        local = checksum(pl_module, names)
        if trainer.world_size == 1:
            return [local]
        as_int = torch.tensor(int(local, 16) - (1 << 63), dtype=torch.int64)
        gathered = trainer.strategy.all_gather(as_int).reshape(-1).tolist()
        sums = [f"{v + (1 << 63):016x}" for v in gathered]
        if len(set(sums)) > 1:
            raise RankDivergenceError(
                f"DDP ranks hold different trainable parameters {when}: checksums {sums}"
            )
        return sums
