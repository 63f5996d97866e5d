"""AdaLoRA's rank allocation (Zhang et al. 2023), run for real.

ftlab injects peft's adapters in place (ftlab.adapters.peft_methods), so there is no
``AdaLoraModel`` whose ``update_and_allocate`` a training loop would call; without the call,
AdaLoRA trains at its initial rank: LoRA under another name (huggingface/peft #1327, #1801).
This callback drives peft's own ``RankAllocator`` as ``AdaLoraModel.update_and_allocate``
does: after every optimizer step (the gradients are still there: Lightning zeroes them before
the next step's backward), importance scores are updated and the singular values below the
budget are masked; after ``total_step - tfinal`` the final pattern is kept.

Not carried over: AdaLoraModel's orthogonality penalty on the loss (``orth_reg_weight``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ftlab.adapters.lora import ADAPTER


class AdaLoRAAllocation(L.Callback):
    """Calls peft's RankAllocator at every optimizer step of a freeze=peft method=adalora run."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from ftlab.adapters.peft_methods import peft_config

        self.config = peft_config(settings)
        self.allocator: Any = None
        self.rank_pattern: dict[str, Any] | None = None
        self.last_step = -1

    @classmethod
    def for_module(cls, module: Any) -> AdaLoRAAllocation | None:
        peft = getattr(module.record, "peft", None) if module.record else None
        return cls(peft) if peft and peft["method"] == "adalora" else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        from peft.tuners.adalora.layer import RankAllocator

        self.allocator = RankAllocator(pl_module.backbone.model, self.config, ADAPTER)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step  # optimizer steps so far; once per step under accumulation
        if step == self.last_step:
            return
        self.last_step = step
        model, config = pl_module.backbone.model, self.config
        end = config.total_step - config.tfinal
        with torch.no_grad():
            if step < end:
                _, pattern = self.allocator.update_and_allocate(model, step)
                if pattern:
                    self.rank_pattern = pattern
            elif step == end:
                _, self.rank_pattern = self.allocator.update_and_allocate(
                    model, step, force_mask=True
                )
                self.allocator.reset_ipt()
            elif self.rank_pattern:
                self.allocator.mask_using_rank_pattern(model, self.rank_pattern)

    def state_dict(self) -> dict[str, Any]:
        return {"rank_pattern": self.rank_pattern, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rank_pattern = state.get("rank_pattern")
        self.last_step = int(state.get("last_step", -1))

    @staticmethod
    def ranks(model: torch.nn.Module) -> dict[str, int]:
        """Each adapted module's rank now: its singular values (lora_E) that are not masked."""
        return {
            name.removesuffix(f".lora_E.{ADAPTER}"): int((p != 0).sum())
            for name, p in model.named_parameters()
            if ".lora_E." in name
        }

    def report(self) -> dict[str, Any]:
        return {
            "init_r": self.config.init_r,
            "target_r": self.config.target_r,
            "total_step": self.config.total_step,
            "ranks": self.ranks(self._model) if getattr(self, "_model", None) else None,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._model = pl_module.backbone.model
