"""Weight averaging (``averaging=ema`` or ``averaging=swa``) through Lightning's own
:class:`~lightning.pytorch.callbacks.WeightAveraging` and torch's ``AveragedModel``.

What the run keeps is the average: Lightning swaps it in for every validation during fit (so
``val/acc`` and the best checkpoint are the average's), and its ``on_save_checkpoint`` writes the
average as the checkpoint's ``state_dict`` with the optimizer's own weights beside it
(``current_model_state``) and the count (``averaging_state``). A resume restores all three
(the callback's ``latest_update_step`` is its checkpointed state), so it continues exactly.

Three things Lightning 2.6 gets wrong for ftlab, fixed in :class:`Averaging`:

- ``trainer.validate``/``test(ckpt_path=best)`` after fit call the callback's ``on_load_checkpoint``
  too, which loads ``current_model_state`` (the raw weights) into the module: the test and the
  OOD / WiSE-FT evaluation would score the raw weights. Outside fit the hooks do nothing, so the
  module holds the checkpoint's ``state_dict``, the average.
- Before the first update the average is the copy made at ``setup`` (the pretrained backbone, a
  random head): validating or checkpointing it then would keep untrained weights. Until averaging
  starts, the "average" is the current weights.
- The average lives on the model's device (``setup`` runs before the module is moved there) and
  its count on the host, so an update reads nothing back from the device.

**Across phases.** ``AveragedModel`` averages every parameter, frozen or not (``requires_grad`` is
not consulted). A parameter frozen until epoch k is constant until then: its EMA stays exactly
that constant (``lerp(θ₀, θ₀, w) = θ₀``), which is also where an EMA started at epoch k starts,
so the EMA of each parameter runs from when it starts to change. An equal (SWA) average would
instead count the frozen steps; SWA therefore starts at the epoch of the last phase the run
reaches (every parameter that will train is training), and an earlier ``averaging.start_epoch``
is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_avg_fn, get_swa_multi_avg_fn

from ftlab.errors import FtlabError
from ftlab.finetuning import Plan
from ftlab.outputs import strip_prefix

KINDS = ("none", "ema", "swa")
KEYS = ("kind", "decay", "start_epoch")


@dataclass(frozen=True)
class AveragingSpec:
    """``averaging.*``: which average, its EMA decay per optimizer step, and the first epoch
    whose steps update it (SWA's default: the last phase's first epoch)."""

    kind: str = "none"
    decay: float = 0.999
    start_epoch: int | None = None

    @classmethod
    def parse(cls, conf: Mapping[str, Any] | None) -> AveragingSpec:
        conf = dict(conf or {})
        unknown = sorted(set(conf) - set(KEYS))
        if unknown:
            raise FtlabError(
                f"averaging.{unknown[0]} is not an averaging key: use {', '.join(KEYS)}"
            )
        kind = str(conf.get("kind") or "none")
        if kind not in KINDS:
            raise FtlabError(f"averaging.kind={kind} is not one of {', '.join(KINDS)}")
        start = conf.get("start_epoch")
        return cls(kind, float(conf.get("decay", 0.999)), None if start is None else int(start))


def build_averaging(
    conf: Mapping[str, Any] | None, plan: Plan | None, max_epochs: int | None
) -> Averaging | None:
    """The averaging callback of ``averaging.*`` for this plan and run length, or None (off).

    Refused in one line: an average that would never be updated (it would be the pretrained
    start) and an SWA that would count a parameter's frozen steps.
    """
    spec = AveragingSpec.parse(conf)
    if spec.kind == "none":
        return None
    runs = max_epochs is not None and max_epochs >= 0
    starts = [p.epoch for p in plan.phases] if plan is not None else [0]
    reached = [e for e in starts if not runs or e < max_epochs] or [0]
    start = spec.start_epoch
    if spec.kind == "swa":
        last = max(reached)
        if start is None:
            start = last
        elif start < last:
            raise FtlabError(
                f"averaging.start_epoch={start} is before epoch {last}, where the last phase "
                "starts training its layer groups: an equal average would count their frozen "
                f"steps and pull them toward the pretrained weights; use averaging.start_epoch"
                f">={last} (or null), or averaging=ema"
            )
    start = start or 0
    if runs and start >= max_epochs:
        raise FtlabError(
            f"averaging.start_epoch={start} but trainer.max_epochs={max_epochs}: no step would "
            "be averaged; lower averaging.start_epoch or raise trainer.max_epochs"
        )
    return Averaging(spec.kind, spec.decay, start)


class Averaging(WeightAveraging):
    """Lightning's ``WeightAveraging`` with torch's EMA or equal (SWA) average, updated after
    every optimizer step from ``start_epoch`` on; see the module docstring for what it changes."""

    def __init__(self, kind: str, decay: float = 0.999, start_epoch: int = 0) -> None:
        if kind == "ema":
            average = get_ema_multi_avg_fn(decay)
        else:
            swa, swa_one = get_swa_multi_avg_fn(), get_swa_avg_fn()

            # torch's equal average, given the count as a host number: with a device tensor its
            # weight 1/(n+1) would be read back to the host at every step. Integer buffers
            # (BatchNorm's num_batches_tracked) take torch's per-tensor form: foreach refuses them.
            def average(averaged: list[Any], current: list[Any], count: Any) -> None:
                if averaged[0].is_floating_point():
                    swa(averaged, current, self.updates)
                    return
                for mine, theirs in zip(averaged, current, strict=True):
                    mine.copy_(swa_one(mine, theirs, count))

        super().__init__(multi_avg_fn=average)
        self.kind, self.decay, self.start_epoch = kind, float(decay), int(start_epoch)
        self._trainer: L.Trainer | None = None

    @property
    def updates(self) -> int:
        """Steps averaged so far (a host tensor: reading it costs no sync)."""
        return int(self._average_model.n_averaged) if self._average_model is not None else 0

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # After every optimizer step of an epoch >= start_epoch; never at an epoch's end (the
        # epoch-end update's bookkeeping is not in Lightning's checkpointed state).
        return step_idx is not None and self._trainer.current_epoch >= self.start_epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            # Where the module will train: setup runs before the strategy moves it there.
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self._average_model is not None:
            # The count on the host: AveragedModel tests it (`n_averaged == 0`) at every update.
            self._average_model.register_buffer("n_averaged", self._average_model.n_averaged.cpu())

    def _fitting(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and self._average_model is not None

    def _current_until_started(self, pl_module: L.LightningModule) -> None:
        """Before the first update the average is the current weights (not setup's copy)."""
        if self._latest_update_step == 0:
            averaged = itertools.chain(
                self._average_model.module.parameters(), self._average_model.module.buffers()
            )
            current = itertools.chain(pl_module.parameters(), pl_module.buffers())
            for mine, theirs in zip(averaged, current, strict=True):
                mine.data.copy_(theirs.data)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):  # validate/test of a checkpoint score that checkpoint
            self._current_until_started(pl_module)
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._fitting(trainer):
            self._current_until_started(pl_module)
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resume only: validate/test(ckpt_path) keep the checkpoint's state_dict, the average.
        if self._fitting(trainer):
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            if self._average_model.n_averaged.device.type != "cpu":  # loaded onto the device
                self._average_model.register_buffer(
                    "n_averaged", self._average_model.n_averaged.cpu()
                )

    def report(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        best: str | None,
        test: bool = True,
    ) -> dict[str, Any]:
        """``metrics.json``'s ``averaging``: the settings, the steps averaged, and the raw
        (non-averaged) weights saved with the best checkpoint, validated and tested like the
        average but logged nowhere (the loggers' curves stay the average's). Every rank calls
        it; the module is left holding the average again."""
        out: dict[str, Any] = {"kind": self.kind, "start_epoch": self.start_epoch}
        if self.kind == "ema":
            out["decay"] = self.decay
        out["updates"] = self.updates
        out["raw"] = None
        if not best:
            return out
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        if "current_model_state" not in ckpt:  # saved before the first update
            return out
        loggers = trainer.loggers
        trainer.loggers = []
        try:
            module.load_state_dict(ckpt["current_model_state"])
            val = trainer.validate(module, datamodule=datamodule, verbose=False)
            tested = trainer.test(module, datamodule=datamodule, verbose=False) if test else []
        finally:
            trainer.loggers = loggers
            module.load_state_dict(ckpt["state_dict"])
        out["raw"] = {
            "val": strip_prefix(val[0] if val else {}, "val"),
            "test": strip_prefix(tested[0] if tested else {}, "test"),
        }
        return out
