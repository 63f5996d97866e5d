"""What a LoRA or peft run writes at its end: the adapter and head, and their report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ftlab.adapters.lora import adapter_numel, is_adapter_param, save_adapter
from ftlab.adapters.peft_methods import run_report, save_peft_adapter

log = logging.getLogger(__name__)


def save_run_adapter(module: nn.Module, trained: set[str], out: Path) -> dict[str, Any]:
    """At the end of a LoRA or peft run: write the adapter and head to ``out``; return what
    metrics.json records about them (under ``lora``, or ``peft`` for freeze=peft)."""
    if module.record.peft:
        settings = module.record.peft
        size = save_peft_adapter(module.backbone, module.head, settings, out)
        report = run_report(module, settings, size)
        return {
            **report,
            "adapter_dir": str(out),
            "base_weights_trained": _base_trained(trained, out),
        }
    settings = module.record.lora
    size = save_adapter(module.backbone, module.head, settings, out)
    return {
        "r": settings["r"],
        "alpha": settings["alpha"],
        "dropout": settings["dropout"],
        "modules": len(settings["target_modules"]),
        "adapter_params": adapter_numel(module.backbone),
        "adapter_dir": str(out),
        "adapter_bytes": size,
        "base_weights_trained": _base_trained(trained, out),
    }


def _base_trained(trained: set[str], out: Path) -> bool:
    """Whether the run trained base weights too (then the adapter alone is not the model)."""
    base = sorted(n for n in trained if n.startswith("backbone.") and not is_adapter_param(n))
    if base:
        log.warning(
            "%d base weights trained too (e.g. %s): %s holds only the adapter and head; the "
            "checkpoint and `python eval.py export=merged ckpt_path=...` hold the whole model",
            len(base),
            base[0],
            out,
        )
    return bool(base)
