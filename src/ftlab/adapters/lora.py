"""LoRA adapters through peft, injected in place into a backbone's library model.

``inject_adapter_in_model`` keeps the timm / Hugging Face model itself (no ``PeftModel``
wrapper), so layer groups, ``group_matcher`` and parameter names stay those of the model:
an adapted layer ``blocks.0.attn.qkv`` holds its base weight as ``...qkv.base_layer.weight``
and the adapter as ``...qkv.lora_A.default.weight`` / ``...qkv.lora_B.default.weight``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ftlab.adapters.settings import parse_lora
from ftlab.errors import FtlabError
from ftlab.finetuning.spec import FreezeSpec

if TYPE_CHECKING:
    from peft import LoraConfig

# peft (and the transformers modules it pulls in, about 1 s) is imported only by the functions
# that inject, save, load or merge adapters: a run without LoRA never imports it.

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name, the one PeftModel.from_pretrained loads into
DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": None}
ADAPTER_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
PEFT_PREFIX = "base_model.model."  # key prefix of a PeftModel's saved adapter


# The prefix peft's tuners give every adapter tensor (their ``prefix``: LoRA, DoRA and AdaLoRA
# lora_, IA3 ia3_, LoHa hada_, LoKr lokr_); tests/test_peft.py checks them against peft's.
ADAPTER_PREFIXES = ("lora_", "ia3_", "hada_", "lokr_")


def is_adapter_param(name: str) -> bool:
    """Whether a parameter belongs to a peft adapter (by the prefix peft names it with)."""
    return any(part.startswith(ADAPTER_PREFIXES) for part in name.split("."))


def adapter_numel(module: nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if is_adapter_param(n))


def cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, as safetensors writes them."""
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def add_lora(
    backbone: nn.Module, freeze: FreezeSpec | Mapping[str, Any] | str
) -> dict[str, Any] | None:
    """Inject the adapters the ``freeze`` spec asks for; return their settings (None: no LoRA).

    The settings hold the resolved module names, so :func:`inject_lora` rebuilds the same model
    from a checkpoint's record (ftlab.record).
    """
    spec = FreezeSpec.parse(freeze)
    given, prefix = spec.lora, spec.lora_prefix
    if given is None:
        return None
    settings = _validated({**DEFAULTS, **given}, prefix)
    settings["target_modules"] = resolve_targets(backbone, settings["target_modules"], prefix)
    inject_lora(backbone, settings, prefix)
    log.info(
        "LoRA r=%d alpha=%g dropout=%g on %d modules: %s adapter parameters",
        settings["r"],
        settings["alpha"],
        settings["dropout"],
        len(settings["target_modules"]),
        f"{adapter_numel(backbone):,}",
    )
    return settings


def inject_lora(backbone: nn.Module, settings: Mapping[str, Any], prefix: str = "freeze.") -> None:
    """Add adapters (settings from :func:`add_lora`) to ``backbone.model``, in place."""
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(_config(settings), backbone.model, adapter_name=ADAPTER)
    except ValueError as err:  # e.g. a layer type peft has no LoRA for
        first = str(err).strip().splitlines()[0]
        raise FtlabError(f"{prefix}target_modules: peft cannot adapt them: {first}") from None
    # peft freezes the base weights; ftlab freezes by plan, after DDP registered every parameter.
    for param in backbone.parameters():
        param.requires_grad_(True)


def save_adapter(
    backbone: nn.Module, head: nn.Module, settings: Mapping[str, Any], out: Path
) -> int:
    """Write the adapter in peft's format (what ``PeftModel.from_pretrained(model, out)`` reads)
    and the head beside it; return the adapter file's size in bytes."""
    return write_adapter(backbone, head, _config(settings), out)


def write_adapter(backbone: nn.Module, head: nn.Module, config: Any, out: Path) -> int:
    """Write the injected adapter with its peft ``config``, and the head; return its bytes."""
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(backbone.model, adapter_name=ADAPTER)
    state = {PEFT_PREFIX + k: v for k, v in state.items()}
    save_file(cpu_state(state), out / ADAPTER_FILE, metadata={"format": "pt"})
    _describe_base(backbone, config)
    config.save_pretrained(str(out))
    _record_base(backbone, out / BASE_FILE)
    save_file(cpu_state(head.state_dict()), out / HEAD_FILE)
    return (out / ADAPTER_FILE).stat().st_size


# ftlab's own record of the base, in a file of its own: peft refuses keys it does not know in
# adapter_config.json ("Unexpected keyword arguments ... upgrade the PEFT version").
BASE_FILE = "ftlab_base.json"


def _describe_base(backbone: nn.Module, config: Any) -> None:
    """What peft reads to find the base: where its weights were loaded from, and the task.

    A Hugging Face base is the folder it was loaded from where there is one (a weights package
    or a local directory: ``config._name_or_path``), so it resolves offline, else the hub id;
    ``task_type`` FEATURE_EXTRACTION, the bare ``AutoModel`` (ftlab pools and applies the head
    in ``head.safetensors`` itself), so ``AutoPeftModelForFeatureExtraction`` loads the folder.
    A timm base has no auto class in peft: its name, and no task type.
    """
    record = getattr(backbone, "record", None)
    hf_config = getattr(getattr(backbone, "model", None), "config", None)
    located = getattr(hf_config, "_name_or_path", "") if hf_config is not None else ""
    pretrained = record is None or record.pretrained
    config.base_model_name_or_path = (located if pretrained else "") or getattr(
        backbone, "name", None
    )
    if record is not None and record.kind == "hf":
        config.task_type = "FEATURE_EXTRACTION"


def _record_base(backbone: nn.Module, path: Path) -> None:
    """Write the base's ftlab record to ``path`` (``ftlab_base.json``).

    ``base_model_name_or_path`` in adapter_config.json names where the architecture (and, when
    pretrained, the weights) load from. The record (ftlab.record.BackboneRecord: kind, name,
    pretrained, ``weights`` as a package, file or null for the hub, options, ``weights_id``)
    says which base the adapter was trained on, so it can be rebuilt with ``build_backbone``.
    """
    record = getattr(backbone, "record", None)
    base = (
        asdict(record)
        if record is not None
        else {"name": getattr(backbone, "name", None), "weights_id": backbone.weights_id}
    )
    path.write_text(json.dumps(base, indent=2, sort_keys=True) + "\n")


def load_adapter(backbone: nn.Module, directory: Path) -> None:
    """Inject and load an adapter written by :func:`save_adapter` into a fresh backbone."""
    from peft.utils import set_peft_model_state_dict

    config = json.loads((directory / "adapter_config.json").read_text())
    if not isinstance(config, dict):
        raise FtlabError(f"{directory}/adapter_config.json is not a peft adapter config")
    # Only these four plain values are used (checked like a checkpoint's record): a directory
    # never chooses code, and peft's own from_pretrained is not called on it.
    settings = parse_lora(
        {
            "r": config.get("r"),
            "alpha": config.get("lora_alpha"),
            "dropout": config.get("lora_dropout"),
            "target_modules": sorted(config.get("target_modules") or []),
        },
        f"{directory}/adapter_config.json",
        "lora",
    )
    inject_lora(backbone, settings)
    state = load_file(directory / ADAPTER_FILE)
    plain = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    result = set_peft_model_state_dict(backbone.model, plain, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise FtlabError(f"{directory}: adapter keys not in the model: {unexpected[:3]}")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layer back (in place).

    The merged model has the library's own parameter names and loads without peft.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            try:
                module.merge(safe_merge=True)
            except (ValueError, NotImplementedError, TypeError) as err:  # a method that cannot
                first = str(err).strip().splitlines()[0]
                raise FtlabError(f"{name}: peft cannot merge its adapter: {first}") from None
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # left by inject_adapter_in_model
        del model.peft_config
    return model


# --- settings and targets ----------------------------------------------------------------------


def _config(settings: Mapping[str, Any]) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=list(settings["target_modules"]),
        bias="none",
    )


def _validated(settings: dict[str, Any], prefix: str) -> dict[str, Any]:
    r, alpha, dropout = settings["r"], settings["alpha"], settings["dropout"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise FtlabError(f"{prefix}r={r} must be an integer >= 1, e.g. 8")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise FtlabError(f"{prefix}alpha={alpha} must be a number > 0, e.g. 16 (scale alpha/r)")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise FtlabError(f"{prefix}dropout={dropout} must be in [0, 1)")
    targets = settings["target_modules"]
    if (
        targets is not None
        and not isinstance(targets, str)
        and (not isinstance(targets, Sequence) or not all(isinstance(t, str) for t in targets))
    ):
        raise FtlabError(
            f"{prefix}target_modules={targets} must be null, a list of module names or a regex"
        )
    return {"r": r, "alpha": float(alpha), "dropout": float(dropout), "target_modules": targets}


def resolve_targets(
    backbone: nn.Module, targets: str | Sequence[str] | None, prefix: str
) -> list[str]:
    """Full module names to adapt, with peft's matching rules for a user's list or regex:
    a name matches a list entry it equals or ends with (``.qkv``); a string is a full regex."""
    named = dict(backbone.model.named_modules())
    if targets is None:
        names = _default_targets(backbone, named)
        if not names:
            raise FtlabError(
                f"{prefix}target_modules: no default LoRA targets for {backbone.name} "
                f"({backbone.family}); name the layers, e.g. {prefix}target_modules=[query,value]"
            )
        return names
    if isinstance(targets, str):
        regex = _compile(targets, prefix)
        names = [n for n in named if n and regex.fullmatch(n)]
    else:
        names = [n for n in named if n and any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise FtlabError(
            f"{prefix}target_modules={targets} matches no module of {backbone.name} "
            f"(e.g. {', '.join(list(named)[1:4])})"
        )
    return names


def _default_targets(backbone: nn.Module, named: Mapping[str, nn.Module]) -> list[str]:
    """The linears the backbone names as its adapter targets (``Backbone.adapter_targets``,
    data on the backbone as its layer groups are); for a backbone that has none of them and
    allows it (``adapter_convs``), every ungrouped conv (peft cannot merge LoRA into grouped or
    depthwise convs)."""
    suffixes = tuple(backbone.adapter_targets)
    linears = [
        n for n, m in named.items() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in suffixes
    ]
    if linears or not backbone.adapter_convs:
        return linears
    return [n for n, m in named.items() if isinstance(m, nn.Conv2d) and m.groups == 1]


def _compile(pattern: str, prefix: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        message = f"{prefix}target_modules={pattern!r} is not a valid regex: {err}"
        raise FtlabError(message) from None
