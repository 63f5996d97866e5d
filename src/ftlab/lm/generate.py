"""A causal-LM checkpoint rebuilt for inference, ``ftlab-generate``, and the merged export.

The checkpoint's ``ftlab_lm`` entry (written by :class:`~ftlab.lm.module.CausalLM`) holds plain
values only: the base model's name and folder, and the adapter settings. They are read strictly
(peft's own settings parser for the peft family, fixed keys otherwise); the base is built from
its config and tokenizer with ``trust_remote_code`` off unless the command line turns it on,
the adapters are injected as in training, and the state dict supplies every weight.

    ftlab-generate ckpt_path=<run>/checkpoints/best-epoch000.ckpt prompt="Hello!"
    ftlab-generate ckpt_path=... export=merged out=<dir>   # a folder transformers.pipeline loads
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ftlab.errors import FtlabError

KEYS = ("ckpt_path", "prompt", "max_new_tokens", "chat", "export", "out", "trust_remote_code")
RECORD_KEYS = ("name", "weights", "lora", "peft", "prompt_learning", "chat")


def _text(value: Any, key: str, where: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or "${" in value:
        raise FtlabError(f"{where}: ftlab_lm.{key} must be a plain string")
    return value


def parse_lm_record(meta: Any, where: str) -> dict[str, Any]:
    """The ``ftlab_lm`` entry, checked: known keys, plain values, methods from fixed tables."""
    from ftlab.adapters.peft_methods import parse_settings
    from ftlab.lm.prompt_learning import ALLOWED
    from ftlab.record import parse_lora

    if not isinstance(meta, Mapping) or set(meta) - set(RECORD_KEYS) or "name" not in meta:
        raise FtlabError(f"{where} is not a causal-LM checkpoint ftlab wrote (no ftlab_lm entry)")
    out = {"name": _text(meta["name"], "name", where, optional=False)}
    out["weights"] = _text(meta.get("weights"), "weights", where)
    out["lora"] = parse_lora(meta.get("lora"), where, "ftlab_lm.lora")
    out["peft"] = parse_settings(meta["peft"], where, "ftlab_lm.peft") if meta.get("peft") else None
    prompt = meta.get("prompt_learning")
    if prompt is not None:
        method = prompt.get("method") if isinstance(prompt, Mapping) else None
        config = prompt.get("config") if isinstance(prompt, Mapping) else None
        if method not in ALLOWED or not isinstance(config, Mapping):
            raise FtlabError(f"{where}: ftlab_lm.prompt_learning must be {{method, config}}")
        bad = [k for k, v in config.items() if k not in ALLOWED[method] or not _plain(v)]
        if bad:
            raise FtlabError(f"{where}: ftlab_lm.prompt_learning.config.{bad[0]} is not allowed")
        prompt = {"method": method, "config": dict(config)}
    out["prompt_learning"] = prompt
    out["chat"] = bool(meta.get("chat", False))
    return out


def _plain(value: Any) -> bool:
    return isinstance(value, bool | int | float | str) and "${" not in str(value)


def load_causal_lm(path: str, trust_remote_code: bool = False) -> Any:
    """The CausalLM of a checkpoint, trained weights loaded, in eval mode."""
    from ftlab.adapters import inject_lora, inject_peft
    from ftlab.backbones.hf_causal import build_causal_backbone
    from ftlab.lm.module import CausalLM
    from ftlab.lm.prompt_learning import wrap

    file = Path(path).expanduser()
    if not file.is_file():
        raise FtlabError(f"ckpt_path={path}: no such file (give a .ckpt from a run's checkpoints/)")
    try:  # tensors and plain values only: nothing in the file is called
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FtlabError(
            f"ckpt_path={path}: not a checkpoint torch can read safely ({err})"
        ) from None
    meta = parse_lm_record(ckpt.get("ftlab_lm"), f"ckpt_path={path}")
    backbone = build_causal_backbone(
        meta["name"], pretrained=False, weights=meta["weights"],
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if meta["lora"]:
        inject_lora(backbone, meta["lora"])
    if meta["peft"]:
        inject_peft(backbone, meta["peft"])
    module = CausalLM(backbone, freeze=None, chat=meta["chat"])
    if meta["prompt_learning"]:
        settings = meta["prompt_learning"]
        module.prompt_learning = wrap(
            backbone, {"method": settings["method"], **settings["config"]}
        )
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def prompt_tokens(module: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """The prompt through the tokenizer's chat template when it has one (``chat=false``: as
    plain text, as a prompt–completion run without ``task.chat`` was trained)."""
    from ftlab.lm.formats import prompt_ids

    tok = module.backbone.tokenizer
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    return prompt_ids(tok, {"prompt": prompt, "completion": ""}, chat=use_chat)


def export_merged(module: Any, out: Path) -> Path:
    """A plain transformers folder: LoRA / peft adapters folded into the base weights (prompt
    learning cannot fold: its virtual tokens are inputs, refused in one line).

    Whether to merge is read from the model itself (any peft layer in it), not from the
    module's record: a module rebuilt by :func:`load_causal_lm` gets its adapters injected
    from the checkpoint's ``ftlab_lm`` entry and has no ``freeze`` record, and an unmerged
    save writes ``q_proj.base_layer.weight`` / ``lora_*`` keys that transformers drops on
    load, re-initialising ``q_proj.weight`` at random (the bug this guards against). The merge
    runs on a copy, so ``module`` keeps its adapters.
    """
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    from ftlab.adapters import is_adapter_param, merge_lora

    if module.prompt_learning:
        raise FtlabError(
            "export=merged: prompt learning's virtual tokens are inputs, not weights, so they "
            "cannot fold into the model; load the run's adapter/ with AutoPeftModelForCausalLM"
        )
    model = module.backbone.model
    if any(isinstance(layer, BaseTunerLayer) for layer in model.modules()):
        model = merge_lora(copy.deepcopy(model))
    left = [n for n in model.state_dict() if is_adapter_param(n) or ".base_layer." in n]
    if left:  # transformers would silently drop these and re-initialise the layer
        raise FtlabError(f"export=merged: {left[0]} is still an adapter tensor after merging")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    module.backbone.tokenizer.save_pretrained(out)
    return out


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise FtlabError(
                f"ftlab-generate: {arg!r} is not key=value with a key of {', '.join(KEYS)}"
            )
        args[key] = value
    if "ckpt_path" not in args:
        raise FtlabError(
            'ftlab-generate needs ckpt_path=<run>/checkpoints/<file>.ckpt prompt="..."'
        )
    return args


def run(argv: Sequence[str]) -> str:
    args = parse_args(argv)
    trust = args.get("trust_remote_code", "false").lower() == "true"
    module = load_causal_lm(args["ckpt_path"], trust_remote_code=trust)
    if args.get("export"):
        if args["export"] != "merged" or not args.get("out"):
            raise FtlabError("ftlab-generate export=merged out=<dir>: the one export it writes")
        return str(export_merged(module, Path(args["out"])))
    if "prompt" not in args:
        raise FtlabError('ftlab-generate: give prompt="..." (or export=merged out=<dir>)')
    module.max_new_tokens = int(args.get("max_new_tokens", 64))
    chat = None if "chat" not in args else args["chat"].lower() == "true"
    with torch.no_grad():
        return module.generate_text(prompt_tokens(module, args["prompt"], chat))


def main() -> None:
    """``ftlab-generate key=value ...``: one line on stdout, or one error line on stderr."""
    try:
        print(run(sys.argv[1:]))
    except FtlabError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
