"""Parameter-efficient adapters for ftlab backbones (LoRA through peft)."""

from ftlab.adapters.lora import (
    adapter_numel,
    add_lora,
    inject_lora,
    is_adapter_param,
    load_adapter,
    merge_lora,
    save_adapter,
    save_run_adapter,
)

__all__ = [
    "adapter_numel",
    "add_lora",
    "inject_lora",
    "is_adapter_param",
    "load_adapter",
    "merge_lora",
    "save_adapter",
    "save_run_adapter",
]
