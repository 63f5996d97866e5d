"""Parameter-efficient adapters for ftlab backbones (LoRA and the peft family through peft)."""

from ftlab.adapters.lora import (
    adapter_numel,
    add_lora,
    inject_lora,
    is_adapter_param,
    load_adapter,
    merge_lora,
    save_adapter,
)
from ftlab.adapters.peft_methods import METHODS, add_peft, inject_peft
from ftlab.adapters.run import save_run_adapter

# peft itself is imported only by the functions that inject, save, load or merge adapters.

__all__ = [
    "METHODS",
    "adapter_numel",
    "add_lora",
    "add_peft",
    "inject_lora",
    "inject_peft",
    "is_adapter_param",
    "load_adapter",
    "merge_lora",
    "save_adapter",
    "save_run_adapter",
]
