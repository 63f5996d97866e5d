"""What a checkpoint says about the model it holds: a typed, plain record that never names code.

A checkpoint, or an exported ``ftlab.json``, is a file a researcher may have been sent. Its
``ftlab`` entry once held the run's Hydra model config and was rebuilt with ``instantiate``, so
the file chose the callable: ``builtins.open`` truncated a file and
``torch.load(weights_only=False)`` ran a pickle, both outside Hydra's blocklist. It now holds a
:class:`ModelRecord`: names, numbers and flags. :func:`parse_record` reads one strictly (known
keys and types only; any ``_``-key such as ``_target_`` or ``_partial_``, and any ``${...}``
interpolation, is refused in one line), and :func:`restore_backbone` builds the architecture
through ftlab's own builders, picked from the fixed :data:`RESTORERS` table by ``kind``.

Restoring reads no weights file the record names: the checkpoint's state dict supplies every
weight. A timm backbone is built untrained; a Hugging Face backbone reads only its
``config.json`` and tokenizer from the named directory or hub id (never ``trust_remote_code``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ftlab.adapters.settings import parse_lora
from ftlab.backbones.base import BackboneRecord
from ftlab.errors import FtlabError

FORMAT = 1  # bump when a field changes meaning; parse_record refuses formats it does not know
# LightningModules ftlab restores by itself (a distilled student is a classifier). "custom": a
# user's own module; a run resumes it (its code comes from the run's config, never the file),
# eval.py does not restore it.
MODULE_KINDS = ("classifier", "custom")
HEAD_KINDS = ("linear", "mlp")
# The one `_target_` that checkpoints written before the record existed carry. It is read as
# "a backbone record" and never called: restoring still goes through RESTORERS.
LEGACY_TARGET = "ftlab.backbones.build_backbone"
BACKBONE_KEYS = ("name", "source", "pretrained", "weights")

# Extra backbone options (``timm.create_model`` kwargs, Hugging Face config attributes) are
# architecture settings such as drop_path_rate or img_size. A file may not use them to reach a
# loader: keys naming files, hubs, code or configs are refused, and values are plain scalars
# with no path separators.
OPTION_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
UNSAFE_OPTION_WORDS = (
    "path", "file", "dir", "url", "uri", "cfg", "config", "checkpoint", "hub", "remote", "code",
    "cache", "revision", "token", "pretrained", "repo", "module", "class", "func", "fn", "load",
    "impl", "kernel", "plugin", "hook", "import",
)  # fmt: skip
OPTION_WORD = re.compile(r"[A-Za-z0-9_.+-]{0,64}")


@dataclass(frozen=True)
class ModelRecord:
    """Everything needed to rebuild a trained ftlab model before its state dict is loaded."""

    backbone: BackboneRecord
    classes: list[Any]
    head: dict[str, Any] = field(default_factory=lambda: {"kind": "linear", "dropout": 0.0})
    lora: dict[str, Any] | None = None  # ftlab.adapters.lora settings, resolved module names
    lora_merged: dict[str, Any] | None = None  # an export's adapters, folded into the weights
    # A peft method's settings {method, config} (ftlab.adapters.peft_methods); absent from
    # checkpoints written before it, which read as None: the format stays 1.
    peft: dict[str, Any] | None = None
    peft_merged: dict[str, Any] | None = None  # an export's peft adapters, folded in
    module: str = "classifier"
    # What the model learns (ftlab.tasks): {name, options}; checkpoints written before tasks
    # existed read as classification: the format stays 1.
    task: dict[str, Any] = field(default_factory=lambda: {"name": "classification", "options": {}})
    format: int = FORMAT

    @property
    def label(self) -> str:
        return self.backbone.name

    def to_dict(self) -> dict[str, Any]:
        """Plain values only: what ``torch.load(weights_only=True)`` and JSON read back."""
        return asdict(self)


def parse_record(meta: Any, where: str) -> ModelRecord:
    """A checkpoint's ``ftlab`` entry as a :class:`ModelRecord`, or one line saying why not.

    ``where`` names the file for the message (``ckpt_path=...``). Nothing is imported, built or
    called here.
    """
    if not isinstance(meta, Mapping):
        raise FtlabError(f"{where}: its ftlab record is not a mapping; give a file ftlab wrote")
    _refuse_code(meta, where, "ftlab")
    legacy = "format" not in meta
    common = ("classes", "head_dropout", "lora")
    known = (
        ("model", *common)
        if legacy
        else (
            "backbone",
            *common,
            "head",
            "lora_merged",
            "peft",
            "peft_merged",
            "module",
            "task",
            "format",
        )
    )
    _known_keys(meta, known, where, "ftlab")
    if not legacy and meta["format"] != FORMAT:
        raise FtlabError(
            f"{where} has record format {meta['format']!r}; this ftlab reads format {FORMAT}: "
            "evaluate it with the ftlab version that wrote it"
        )
    module = meta.get("module", "classifier")
    if module not in MODULE_KINDS:
        raise FtlabError(
            f"{where} holds module {module!r}, which ftlab does not restore by itself "
            f"(it restores {', '.join(MODULE_KINDS)})"
        )
    classes = meta.get("classes")
    if not isinstance(classes, list) or not all(_is_class(c) for c in classes) or not classes:
        raise FtlabError(f"{where}: ftlab.classes must be a non-empty list of names")
    head = meta.get("head", {"kind": "linear", "dropout": meta.get("head_dropout", 0.0)})
    return ModelRecord(
        backbone=_backbone(meta.get("model" if legacy else "backbone"), where, legacy),
        classes=list(classes),
        head=parse_head(head, where),
        lora=parse_lora(meta.get("lora"), where),
        lora_merged=parse_lora(meta.get("lora_merged"), where, "ftlab.lora_merged"),
        peft=parse_peft(meta.get("peft"), where),
        peft_merged=parse_peft(meta.get("peft_merged"), where, "ftlab.peft_merged"),
        module=module,
        task=parse_task(meta.get("task"), where),
    )


def parse_task(task: Any, where: str, at: str = "ftlab.task") -> dict[str, Any]:
    """The record's task ``{name, options}``: a registered name (ftlab.tasks) and plain
    scalar options; absent (older checkpoints): classification."""
    if task is None:
        return {"name": "classification", "options": {}}
    from ftlab.tasks import TASKS  # the table of names only; nothing is imported from a file

    if not isinstance(task, Mapping):
        raise FtlabError(f"{where}: {at} must be a mapping {{name, options}}")
    _known_keys(task, ("name", "options"), where, at)
    name, options = task.get("name"), task.get("options") or {}
    if name not in TASKS:
        raise FtlabError(f"{where}: {at}.name={name!r} is not a task ftlab knows: {TASKS.names()}")
    if not isinstance(options, Mapping) or not all(
        OPTION_KEY.fullmatch(str(k)) and (v is None or isinstance(v, bool | int | float | str))
        for k, v in options.items()
    ):
        raise FtlabError(f"{where}: {at}.options must map names to plain numbers, flags or words")
    return {"name": name, "options": dict(options)}


def _backbone(model: Any, where: str, legacy: bool) -> BackboneRecord:
    at = "ftlab.model" if legacy else "ftlab.backbone"
    if not isinstance(model, Mapping):
        raise FtlabError(f"{where}: ftlab.model must be a mapping describing the backbone")
    if legacy:  # {_target_: ftlab.backbones.build_backbone, name, source, pretrained, weights, ...}
        plain = {k: v for k, v in model.items() if k != "_target_"}
        name = _text(plain.get("name"), where, f"{at}.name")
        options = {k: v for k, v in plain.items() if k not in BACKBONE_KEYS}
        record = {
            "kind": _legacy_kind(name, plain.get("source", "auto"), where),
            "name": name,
            "pretrained": plain.get("pretrained", True),
            "weights": plain.get("weights"),
            "options": options,
        }
    else:
        _known_keys(model, tuple(BackboneRecord.__dataclass_fields__), where, at)
        record = dict(model)
    kind = record.get("kind")
    if kind not in RESTORERS:
        raise FtlabError(
            f"{where}: {at}.kind={kind!r} is not a backbone ftlab builds ({', '.join(RESTORERS)})"
        )
    pretrained = record.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise FtlabError(f"{where}: {at}.pretrained={pretrained!r} must be true or false")
    weights = record.get("weights")
    if weights is not None:
        weights = _text(weights, where, f"{at}.weights")
    options = record.get("options", {})
    if not isinstance(options, Mapping):
        raise FtlabError(f"{where}: {at}.options must be a mapping of backbone options")
    for key, value in options.items():
        _option(key, value, where, at)
    return BackboneRecord(
        kind=kind,
        name=_text(record.get("name"), where, f"{at}.name"),
        pretrained=pretrained,
        weights=weights,
        options=dict(options),
        weights_id=_text(record.get("weights_id", ""), where, f"{at}.weights_id", empty=True),
    )


def parse_head(head: Any, where: str, at: str = "ftlab.head") -> dict[str, Any]:
    """The new head's shape: ``{kind: linear|mlp, dropout, hidden (mlp)}``, checked."""
    if not isinstance(head, Mapping):
        raise FtlabError(f"{where}: {at} must be a mapping like {{kind: linear, dropout: 0.0}}")
    _known_keys(head, ("kind", "dropout", "hidden"), where, at)
    kind, dropout, hidden = head.get("kind"), head.get("dropout", 0.0), head.get("hidden")
    if kind not in HEAD_KINDS:
        raise FtlabError(f"{where}: {at}.kind={kind!r} must be one of {', '.join(HEAD_KINDS)}")
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise FtlabError(f"{where}: {at}.dropout={dropout!r} must be a number in [0, 1)")
    out: dict[str, Any] = {"kind": kind, "dropout": float(dropout)}
    if kind == "mlp":
        if not (isinstance(hidden, int) and not isinstance(hidden, bool) and 1 <= hidden <= 65536):
            raise FtlabError(f"{where}: {at}.hidden={hidden!r} must be an integer in [1, 65536]")
        out["hidden"] = hidden
    return out


def parse_peft(peft: Any, where: str, at: str = "ftlab.peft") -> dict[str, Any] | None:
    """A peft method's settings from a file, checked against the fixed method table and peft's
    config class (peft is imported only when a record holds them)."""
    if peft is None:
        return None
    from ftlab.adapters.peft_methods import parse_settings

    return parse_settings(peft, where, at)


def _refuse_code(value: Any, where: str, at: str) -> None:
    """Refuse any key Hydra or OmegaConf would act on, at any depth: ``_target_``,
    ``_partial_``, ``_args_``, ``_recursive_``, ``_convert_`` and any other ``_``-key, and any
    ``${...}`` interpolation (a resolver is code too). The one legacy ``_target_`` is allowed."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FtlabError(f"{where}: {at} has a non-text key {key!r}; ftlab refuses it")
            legacy = at == "ftlab.model" and key == "_target_" and item == LEGACY_TARGET
            if key.startswith("_") and not legacy:
                raise FtlabError(
                    f"{where}: {at}.{key} would name code to run, and a file never chooses what "
                    "ftlab runs; give a checkpoint written by ftlab's train.py"
                )
            _refuse_code(item, where, f"{at}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_code(item, where, f"{at}[{i}]")
    elif isinstance(value, str):
        if "${" in value or "\x00" in value:
            raise FtlabError(
                f"{where}: {at}={value[:60]!r} holds an interpolation or control character, "
                "which ftlab never resolves from a file; give a checkpoint written by ftlab"
            )
    elif not (value is None or isinstance(value, bool | int | float)):
        raise FtlabError(
            f"{where}: {at} is a {type(value).__name__}, not a plain value; ftlab refuses it"
        )


def _known_keys(value: Mapping[str, Any], known: tuple[str, ...], where: str, at: str) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise FtlabError(
            f"{where}: {at} has unknown keys {unknown}; ftlab reads only {', '.join(known)}"
        )


def _option(key: Any, value: Any, where: str, at: str) -> None:
    unsafe = not OPTION_KEY.fullmatch(str(key)) or any(w in str(key) for w in UNSAFE_OPTION_WORDS)
    scalar = value is None or isinstance(value, bool | int | float)
    word = isinstance(value, str) and OPTION_WORD.fullmatch(value)
    if unsafe or not (scalar or word):
        raise FtlabError(
            f"{where}: {at}.options.{key}={value!r} is not an architecture setting ftlab "
            "restores from a file (plain numbers, flags and words only; nothing naming files, "
            "hubs or code)"
        )


def _text(value: Any, where: str, at: str, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty) or len(value) > 4096:
        raise FtlabError(f"{where}: {at}={value!r} must be a non-empty text")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_class(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _legacy_kind(name: str, source: Any, where: str) -> str:
    if source in ("timm", "hf"):
        return source
    if source != "auto":
        raise FtlabError(f"{where}: ftlab.model.source={source!r} must be auto, timm or hf")
    from ftlab.backbones.names import resolve_source

    return resolve_source(name, "auto")


# --- restoring ---------------------------------------------------------------------------------


def _restore_timm(record: BackboneRecord) -> Any:
    from ftlab.backbones.timm_backbone import build_timm_backbone

    # No weights file: the checkpoint's state dict overwrites every parameter and buffer.
    return build_timm_backbone(record.name, pretrained=False, weights=None, **record.options)


def _restore_hf(record: BackboneRecord) -> Any:
    from ftlab.backbones.hf_backbone import build_hf_backbone

    # The architecture and tokenizer come from the directory (or hub id); the weights do not.
    return build_hf_backbone(
        record.name, pretrained=False, weights=record.weights, **record.options
    )


RESTORERS: dict[str, Callable[[BackboneRecord], Any]] = {"timm": _restore_timm, "hf": _restore_hf}


def restore_backbone(record: BackboneRecord) -> Any:
    """The record's backbone architecture, through the fixed :data:`RESTORERS` table."""
    backbone = RESTORERS[record.kind](record)
    backbone.weights_id = record.weights_id or backbone.weights_id  # the trained run's start
    backbone.record = replace(record, weights_id=backbone.weights_id)
    return backbone
