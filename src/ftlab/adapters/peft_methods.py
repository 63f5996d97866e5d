"""The peft family (LoRA, DoRA, IA³, LoHa, LoKr, AdaLoRA) through peft's own config classes.

``freeze=peft freeze.method=ia3 freeze.peft.<key>=...``: the method picks peft's config class
from peft's own method -> config table (``PEFT_TYPE_TO_CONFIG_MAPPING``), every ``freeze.peft``
key is a field of that dataclass, and the adapters are injected in place like LoRA's
(ftlab.adapters.lora), so layer groups and parameter names stay those of the library model.

The settings are plain values, ``{method, config}`` with ``target_modules`` resolved to full
module names: the checkpoint record holds them, and :func:`parse_settings` reads them back
strictly, so a file picks a method from :data:`METHODS` and plain config values, never code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ftlab.adapters.lora import (
    ADAPTER,
    adapter_numel,
    is_adapter_param,
    resolve_targets,
    write_adapter,
)
from ftlab.errors import FtlabError
from ftlab.finetuning.spec import FreezeSpec

if TYPE_CHECKING:
    from peft import PeftConfig

log = logging.getLogger(__name__)

# method -> (peft's PeftType name, config values the method fixes). DoRA is LoRA with
# use_dora: peft has no type of its own for it.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LORA", {}),
    "dora": ("LORA", {"use_dora": True}),
    "ia3": ("IA3", {}),
    "loha": ("LOHA", {}),
    "lokr": ("LOKR", {}),
    "adalora": ("ADALORA", {}),
}
# Defaults ftlab adds where peft has none that fits a timm or HF backbone: IA³ needs its
# feed-forward layers named (none: every target's output is scaled); AdaLoRA needs its step
# budget (ftlab does not run its rank allocation, so it only has to be valid).
DEFAULTS: dict[str, dict[str, Any]] = {
    "ia3": {"feedforward_modules": []},
    "adalora": {"total_step": 1000},
}
# peft's prompt learning prepends virtual tokens through a PeftModel wrapper for a causal or
# seq2seq LM task; ftlab injects into the backbone in place and pools its token outputs.
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
# Config fields ftlab sets itself or that would reach beyond the adapters: peft's bookkeeping,
# modules_to_save (the head is ftlab's), code by name (megatron_core), nested configs and
# data-driven inits, base-weight biases, token and parameter targeting.
REFUSED = frozenset(
    {
        "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
        "revision", "inference_mode", "modules_to_save", "megatron_core", "bias",
        "trainable_token_indices", "alora_invocation_tokens", "target_parameters",
        "layer_replication", "use_qalora", "qalora_group_size", "use_bdlora",
        "ensure_weight_tying",
    }
)  # fmt: skip
# init_lora_weights values that leave the base weights untouched (pissa, olora, ... rewrite
# them, and the adapter would no longer load onto the base it names).
SAFE_INITS = (True, False, "gaussian")


def config_class(method: str) -> type[PeftConfig]:
    """peft's config class for ``method`` (peft's own mapping)."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[METHODS[method][0]]]


def allowed_keys(method: str) -> list[str]:
    """The config fields ``freeze.peft.<key>`` may set for ``method``."""
    fields = [f.name for f in dataclasses.fields(config_class(method))]
    return [k for k in fields if k not in REFUSED and not k.endswith("_config")]


def check_method(method: Any, at: str = "freeze.method") -> str:
    if method in PROMPT_METHODS:
        raise FtlabError(
            f"{at}={method}: peft's prompt learning needs a PeftModel wrapper around a causal or "
            "seq2seq LM, and ftlab adapts its backbones in place; use lora, dora, ia3, loha, "
            "lokr or adalora"
        )
    if method not in METHODS:
        raise FtlabError(f"{at}={method!r} is unknown: use one of {', '.join(METHODS)}")
    return method


def check_keys(method: str, config: Mapping[str, Any], at: str) -> None:
    """Every key a field of the method's peft config class that ftlab passes on."""
    allowed = allowed_keys(method)
    for key in config:
        if key not in allowed:
            raise FtlabError(
                f"{at}.{key} is not a key ftlab passes to peft's {config_class(method).__name__}: "
                f"use {', '.join(allowed)}"
            )
    fixed = METHODS[method][1]
    for key, value in fixed.items():
        if key in config and config[key] != value:
            raise FtlabError(
                f"{at}.{key}={config[key]} contradicts method {method} ({key}={value})"
            )
    init = config.get("init_lora_weights", True)
    if init not in SAFE_INITS:
        raise FtlabError(
            f"{at}.init_lora_weights={init!r} rewrites the base weights: use true or gaussian"
        )


def add_peft(
    backbone: nn.Module, freeze: FreezeSpec | Mapping[str, Any] | str
) -> dict[str, Any] | None:
    """Inject the peft method the ``freeze`` spec asks for; return its settings (None: none)."""
    spec = FreezeSpec.parse(freeze)
    if spec.peft is None:
        return None
    prefix = "freeze.peft" if spec.name == "schedule" else "freeze"
    method = check_method(spec.peft.get("method"), f"{prefix}.method")
    given = {k: v for k, v in spec.peft.items() if k != "method"}
    at = "freeze.peft"
    check_keys(method, given, at)
    config = {**DEFAULTS.get(method, {}), **given, **METHODS[method][1]}
    config["target_modules"] = resolve_targets(backbone, config.get("target_modules"), f"{at}.")
    if method == "ia3" and config["feedforward_modules"]:
        feedforward = resolve_targets(backbone, config["feedforward_modules"], f"{at}.")
        config["feedforward_modules"] = [n for n in feedforward if n in config["target_modules"]]
    settings = {"method": method, "config": config}
    inject_peft(backbone, settings, at)
    log.info(
        "peft %s on %d modules: %s adapter parameters",
        method,
        len(config["target_modules"]),
        f"{adapter_numel(backbone):,}",
    )
    return settings


def peft_config(settings: Mapping[str, Any], at: str = "freeze.peft") -> PeftConfig:
    """peft's config object for the settings, its errors in one line."""
    cls = config_class(settings["method"])
    try:
        return cls(**settings["config"])
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise FtlabError(f"{at}: peft's {cls.__name__} refuses the settings: {first}") from None


def inject_peft(backbone: nn.Module, settings: Mapping[str, Any], at: str = "freeze.peft") -> None:
    """Add the adapters (settings from :func:`add_peft`) to ``backbone.model``, in place."""
    import warnings

    from peft import inject_adapter_in_model

    config = peft_config(settings, at)
    try:
        with warnings.catch_warnings():  # AdaLoRA warns that `r` is unused (init_r is its rank)
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, backbone.model, adapter_name=ADAPTER)
    except (ValueError, TypeError, NotImplementedError) as err:  # a layer type, a bad value
        first = str(err).strip().splitlines()[0]
        raise FtlabError(
            f"{at}: peft's {settings['method']} cannot adapt the model: {first}"
        ) from None
    _ranknum_as_buffers(backbone.model)
    # peft freezes the base weights; ftlab freezes by plan, after DDP registered every parameter.
    for param in backbone.parameters():
        param.requires_grad_(True)


def _ranknum_as_buffers(model: nn.Module) -> None:
    """AdaLoRA's ``ranknum`` (its rank, a constant peft keeps as a frozen parameter) as buffers.

    As a parameter it would fall into a backbone layer group, and a phase unfreezing
    ``backbone`` would train it. Same state-dict key, moved with the model.
    """
    from peft.tuners._buffer_dict import BufferDict

    for module in model.modules():
        ranknum = getattr(module, "ranknum", None)
        if isinstance(ranknum, nn.ParameterDict):
            module.ranknum = BufferDict(
                {k: v.detach() for k, v in ranknum.items()}, persistent=True
            )


def save_peft_adapter(
    backbone: nn.Module, head: nn.Module, settings: Mapping[str, Any], out: Path
) -> int:
    """Write the adapter in peft's format (``PeftModel.from_pretrained(model, out)`` reads it)
    and the head beside it; return the adapter file's size in bytes."""
    return write_adapter(backbone, head, peft_config(settings), out)


def run_report(module: nn.Module, settings: Mapping[str, Any], size: int) -> dict[str, Any]:
    """What ``metrics.json`` ``peft`` records about a run's adapter."""
    return {
        "method": settings["method"],
        "modules": len(settings["config"]["target_modules"]),
        "adapter_params": adapter_numel(module.backbone),
        "adapter_bytes": size,
    }


def parse_settings(value: Any, where: str, at: str = "ftlab.peft") -> dict[str, Any]:
    """peft settings from a file (a checkpoint's record), checked: a method of :data:`METHODS`,
    keys ftlab passes on, plain values, and target modules as module names."""
    from ftlab.adapters.settings import MODULE_NAME

    if not isinstance(value, Mapping) or set(value) != {"method", "config"}:
        raise FtlabError(f"{where}: {at} must be null or a mapping {{method, config}}")
    method = check_method(value["method"], f"{where}: {at}.method")
    config = value["config"]
    if not isinstance(config, Mapping):
        raise FtlabError(f"{where}: {at}.config must be a mapping of peft config keys")
    check_keys(method, config, f"{where}: {at}.config")
    targets = config.get("target_modules")
    if not (
        isinstance(targets, list)
        and targets
        and all(isinstance(t, str) and MODULE_NAME.fullmatch(t) for t in targets)
    ):
        raise FtlabError(f"{where}: {at}.config.target_modules must be a list of module names")
    return {"method": method, "config": dict(config)}


__all__ = [
    "METHODS",
    "add_peft",
    "inject_peft",
    "is_adapter_param",
    "parse_settings",
    "save_peft_adapter",
]
