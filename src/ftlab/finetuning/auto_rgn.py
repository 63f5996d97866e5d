"""Auto-RGN (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution
Shifts"): every layer group's lr is scaled by its relative gradient norm.

For each layer group ``i`` (the plan's groups, the head included), ``RGN_i = ‖g_i‖ / ‖θ_i‖``
over the group's trainable parameters, and its lr factor is ``RGN_i / max_j RGN_j``: the group
whose gradient moves it most, relative to its size, keeps the full lr. The RGNs of every optimizer
step are summed on the device and turned into factors at a boundary: the start of each epoch
(from the previous epoch's steps) or every ``freeze.every_n_steps`` optimizer steps. The first
epoch (or window) trains at factor 1.

Correct by construction:
- DDP: the norms are taken in ``on_before_optimizer_step``, after DDP's all-reduce finished in
  backward, so every rank sums the same gradients; the factors' checksums are gathered from every
  rank at each boundary and a mismatch raises (ftlab.finetuning.callback.RankDivergenceError).
- Any scheduler: the factors are written as absolute lrs into the optimizer's param groups and the
  scheduler's base lrs (:func:`ftlab.finetuning.schedulers.rescale_lrs`, by the ratio new / old),
  so LambdaLR, OneCycle, SequentialLR and plateau schedulers all apply them.
- Resume: the factors, the sums since the last boundary and the record are callback state, saved
  in every checkpoint; the optimizer and scheduler states hold the scaled lrs, so a resumed run
  neither scales twice nor loses a window (an epoch-end checkpoint is finished at the next start).
- Host syncs: none per step; the sums are read back once per boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ftlab.finetuning.callback import RankDivergenceError
from ftlab.finetuning.plan import Plan
from ftlab.finetuning.schedulers import rescale_lrs
from ftlab.finetuning.spec import FreezeSpec

log = logging.getLogger(__name__)

# A group whose gradient is zero for a whole window gets this factor, not 0: the lrs are scaled
# by new / old ratios (so that every scheduler keeps them), and a 0 could never be scaled back.
MIN_SCALE = 1e-6
EPS = 1e-12  # ‖θ‖ of an all-zero group (a zero-initialized bias alone)


class AutoRGN(L.Callback):
    """Scale each layer group's lr by ``RGN_i / max_j RGN_j`` (module docstring).

    Args:
        plan: the module's plan; its units map 1:1, in order, to the optimizer's param groups.
        every_n_steps: recompute every this many optimizer steps; None: at every epoch start.
    """

    def __init__(self, plan: Plan, every_n_steps: int | None = None) -> None:
        self.plan = plan
        self.every_n_steps = every_n_steps
        self.groups = [g for g in plan.groups if any(u.group == g for u in plan.units)]
        self.scales = dict.fromkeys(self.groups, 1.0)  # in the optimizer now (checkpointed)
        # {epoch: {group: factor}}: the factors computed from that epoch's gradients (the last
        # window's, with every_n_steps), checkpointed with the state.
        self.record: dict[int, dict[str, float]] = {}
        self.history: list[dict[str, Any]] = []  # every boundary: epoch, step, factors
        self.rank_checksums: list[str] = []
        self._sums: torch.Tensor | None = None  # RGN per group, summed over the window's steps
        self._count = 0  # steps in the window
        self._window_epoch = 0  # the epoch the window's steps belong to
        self._params: list[list[torch.Tensor]] = []

    @classmethod
    def for_spec(cls, spec: FreezeSpec | None, plan: Plan | None) -> AutoRGN | None:
        """The callback ``freeze=auto_rgn`` asks for, else None."""
        if spec is None or plan is None or spec.name != "auto_rgn":
            return None
        return cls(plan, spec.options.get("every_n_steps"))

    @property
    def state_key(self) -> str:
        return "ftlab.AutoRGN"

    def state_dict(self) -> dict[str, Any]:
        sums = None if self._sums is None else self._sums.tolist()  # one read, at a checkpoint
        return {
            "scales": dict(self.scales),
            "record": {int(k): dict(v) for k, v in self.record.items()},
            "history": list(self.history),
            "sums": sums,
            "count": self._count,
            "window_epoch": self._window_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scales = dict(state_dict["scales"])
        self.record = {int(k): dict(v) for k, v in state_dict["record"].items()}
        self.history = list(state_dict["history"])
        sums = state_dict["sums"]
        self._sums = None if sums is None else torch.tensor(sums, dtype=torch.float32)
        self._count = int(state_dict["count"])
        self._window_epoch = int(state_dict["window_epoch"])

    # -- hooks -------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        self._params = [
            [named[p] for u in self.plan.units if u.group == g for p in u.params]
            for g in self.groups
        ]
        device = pl_module.device
        self._sums = (
            torch.zeros(len(self.groups), device=device)
            if self._sums is None
            else self._sums.to(device)
        )
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch (PhaseCallback).
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The previous epoch's window ends here, also when its checkpoint was written before
        # on_train_epoch_end (at validation end) and the run resumed from it.
        if (
            self.every_n_steps is None
            and self._count
            and self._window_epoch < trainer.current_epoch
        ):
            self._recompute(trainer)
        if self._count == 0:
            self._window_epoch = trainer.current_epoch

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self._sums is not None
        self._sums += self.relative_grad_norms()
        self._count += 1
        if self.every_n_steps is not None and self._count >= self.every_n_steps:
            self._recompute(trainer)  # applies to this very step's update

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last epoch's factors, for the record: no step uses them.
        if self.every_n_steps is None and self._count:
            self._recompute(trainer, apply=False)

    # -- the computation -----------------------------------------------------------------------

    @torch.no_grad()
    def relative_grad_norms(self) -> torch.Tensor:
        """``‖g_i‖ / ‖θ_i‖`` per group, on the device (no host sync); 0 for a group without
        gradients (e.g. one frozen by BatchNorm rules, or unused in this step)."""
        assert self._sums is not None
        out = torch.zeros_like(self._sums)
        for i, params in enumerate(self._params):
            with_grad = [p for p in params if p.grad is not None]
            if with_grad:
                grad = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
                weight = torch.nn.utils.get_total_norm(with_grad)
                out[i] = grad / weight.clamp_min(EPS)
        return out

    def _recompute(self, trainer: L.Trainer, apply: bool = True) -> None:
        assert self._sums is not None
        means = (self._sums / self._count).tolist()  # the one host read of the window
        top = max(means)
        scales = {
            g: max(m / top, MIN_SCALE) if top > 0 else 1.0
            for g, m in zip(self.groups, means, strict=True)
        }
        self.rank_checksums = self._check_ranks(trainer, scales)
        if apply:
            self._apply(trainer, scales)
        epoch = self._window_epoch if self.every_n_steps is None else trainer.current_epoch
        self.record[epoch] = scales
        self.history.append({"epoch": epoch, "step": trainer.global_step, "scales": scales})
        self._sums.zero_()
        self._count = 0
        self._window_epoch = trainer.current_epoch

    def _apply(self, trainer: L.Trainer, scales: dict[str, float]) -> None:
        """Write ``scales`` into the optimizer's lrs and the scheduler's base lrs."""
        optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        for group in self.groups:
            ratio = scales[group] / self.scales[group]
            if ratio != 1.0:
                indices = [i for i, u in enumerate(self.plan.units) if u.group == group]
                rescale_lrs(optimizer, scheduler, indices, ratio)
        self.scales = dict(scales)

    @staticmethod
    def _check_ranks(trainer: L.Trainer, scales: dict[str, float]) -> list[str]:
        digest = hashlib.sha256(json.dumps(scales, sort_keys=True).encode()).hexdigest()[:16]
        if trainer.world_size == 1:
            return [digest]
        as_int = torch.tensor(int(digest, 16) - (1 << 63), dtype=torch.int64)
        gathered = trainer.strategy.all_gather(as_int).reshape(-1).tolist()
        sums = [f"{v + (1 << 63):016x}" for v in gathered]
        if len(set(sums)) > 1:
            raise RankDivergenceError(f"Auto-RGN factors differ across DDP ranks: {sums}")
        return sums

    # -- the record ----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What metrics.json records: ``auto_rgn: {epoch: {group: factor}}`` and the ranks'
        checksums of the last factors."""
        return {
            "auto_rgn": {int(k): v for k, v in sorted(self.record.items())},
            "auto_rgn_rank_checksums": self.rank_checksums,
        }

    def plot(self, path: Path) -> Path | None:
        """Each group's factor against the epoch whose gradients gave it (``auto_rgn.png``)."""
        if not self.record:
            return None
        from matplotlib.figure import Figure  # ~0.5 s to import: only once there is a plot

        epochs = sorted(self.record)
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.subplots()
        for group in self.groups:
            ax.plot(epochs, [self.record[e][group] for e in epochs], marker="o", label=group)
        ax.set_xlabel("epoch (its gradients give the next epoch's lr factors)")
        ax.set_ylabel("lr factor  RGN / max RGN")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("Auto-RGN: ‖g‖/‖θ‖ per layer group, normalized")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        fig.savefig(path, dpi=120)
        return path
