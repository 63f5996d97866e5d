"""peft's prompt-learning family for causal LMs: ``freeze=peft freeze.method=prompt_tuning |
prefix_tuning | p_tuning``.

Unlike LoRA and the other adapters, which peft injects into layers in place, these methods
change what the model reads (virtual tokens before the input, or a key/value prefix in every
layer): peft runs them only through its ``PeftModelForCausalLM`` wrapper. So the backbone's
library model is wrapped (``get_peft_model``), and the virtual tokens' parameters are the only
ones that train: the plan's ``head`` group (ftlab.lm.module).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftlab.errors import FtlabError

# method -> peft's config class name
METHODS = {
    "prompt_tuning": "PromptTuningConfig",
    "prefix_tuning": "PrefixTuningConfig",
    "p_tuning": "PromptEncoderConfig",
}
# The keys a user may set (the rest peft derives from the model, or would load by name).
ALLOWED = {
    # prompt_tuning_init=TEXT is left out: peft loads a tokenizer by name for it.
    "prompt_tuning": ("num_virtual_tokens",),
    "prefix_tuning": ("num_virtual_tokens", "prefix_projection", "encoder_hidden_size"),
    "p_tuning": (
        "num_virtual_tokens", "encoder_reparameterization_type", "encoder_hidden_size",
        "encoder_num_layers", "encoder_dropout",
    ),
}  # fmt: skip
DEFAULT_TOKENS = 8
PROMPT_PARAM = "prompt_encoder."  # where peft keeps the virtual tokens' parameters


def is_prompt_method(peft: Mapping[str, Any] | None) -> bool:
    return bool(peft) and peft.get("method") in METHODS


def prompt_config(peft: Mapping[str, Any]) -> Any:
    """peft's config for the method, its keys checked (``freeze.peft.<key>``)."""
    import peft as peft_lib

    method = peft["method"]
    given = {k: v for k, v in peft.items() if k != "method"}
    for key in given:
        if key not in ALLOWED[method]:
            raise FtlabError(
                f"freeze.peft.{key} is not a key ftlab passes to peft's {METHODS[method]}: use "
                f"{', '.join(ALLOWED[method])}"
            )
    given.setdefault("num_virtual_tokens", DEFAULT_TOKENS)
    cls = getattr(peft_lib, METHODS[method])
    try:
        return cls(task_type="CAUSAL_LM", **given)
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise FtlabError(
            f"freeze.peft: peft's {cls.__name__} refuses the settings: {first}"
        ) from None


def wrap(backbone: Any, peft: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap ``backbone.model`` in peft's causal-LM model with the method; return its settings."""
    from peft import get_peft_model

    config = prompt_config(peft)
    backbone.model = get_peft_model(backbone.model, config)
    # peft froze the base; ftlab freezes by plan (after DDP has registered every parameter).
    for param in backbone.parameters():
        param.requires_grad_(True)
    return {"method": peft["method"], "config": {k: v for k, v in peft.items() if k != "method"}}
