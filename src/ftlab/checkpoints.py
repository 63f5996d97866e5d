"""Checkpoints given as ``ckpt_path``: read without running code, and checked against the run.

Lightning's own resume fails late and deep (a FileNotFoundError from ``torch.load``, or a
``load_state_dict`` size mismatch listing hundreds of keys); these checks fail before training
with one line naming ``ckpt_path`` and the model the checkpoint belongs to.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlab.errors import FtlabError
from ftlab.record import ModelRecord, parse_record
from ftlab.registry import Registry
from ftlab.state_dicts import first_line, needs_code, state_differences


def load_checkpoint(path: str | None, key: str = "ckpt_path") -> dict[str, Any]:
    """Read a Lightning checkpoint written by ftlab without unpickling code.

    Its ``ftlab`` entry comes back parsed as a :class:`~ftlab.record.ModelRecord`: a file that
    names code there (``_target_``, ``_partial_``, interpolations) is refused in one line.
    """
    if not path:
        raise FtlabError(f"{key} is not set: python eval.py {key}=<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FtlabError(
            f"{key}={path}: no such file (give a .ckpt from a run's checkpoints/ folder, "
            f"or drop {key})"
        )
    try:
        ckpt = _load(file)
    except Exception as err:
        code = needs_code(err) if isinstance(err, pickle.UnpicklingError) else None
        if code:
            raise FtlabError(
                f"{key}={path} needs code ({code}) to unpickle, and ftlab refuses to run it: give "
                "a .ckpt written by ftlab's train.py, or re-save its tensors as a state dict"
            ) from None
        raise FtlabError(
            f"{key}={path} is not a loadable checkpoint ({first_line(err)}): give a .ckpt "
            "written by ftlab's train.py"
        ) from None
    if not isinstance(ckpt, dict) or "ftlab" not in ckpt or "state_dict" not in ckpt:
        raise FtlabError(
            f"{key}={path} was not written by ftlab's train.py: give a .ckpt from a run's "
            "checkpoints/ folder"
        )
    ckpt["ftlab"] = parse_record(ckpt["ftlab"], f"{key}={path}")
    return ckpt


# The module kinds ftlab rebuilds from a record by itself (ftlab.record.MODULE_KINDS less
# "custom"): lazy, so this layer names the module class without importing it (torch and
# Lightning load only once a model is restored; ftlab.module sits above this file).
MODULES: Registry[Any] = Registry("module kind", key="ftlab.module")
MODULES.register("classifier", "ftlab.module:Classifier")


def restore_module(ckpt: dict[str, Any], path: str = "?") -> tuple[Any, Any]:
    """The trained module and its backbone, rebuilt from the checkpoint's record.

    ``ckpt`` comes from :func:`~ftlab.checkpoints.load_checkpoint`, which parsed its record; the
    backbone is built by ftlab's own builders (ftlab.record), never by a name in the file.
    ``path`` (the ``ckpt_path`` value) only names the file in errors.
    """
    record: ModelRecord = ckpt["ftlab"]
    if record.module not in MODULES:
        raise FtlabError(
            f"ckpt_path={path} holds a {record.module} module, which eval.py does not rebuild "
            "from a file: load it with your module's class (MyModule.load_from_checkpoint)"
        )
    module = MODULES.get(record.module).from_checkpoint(ckpt, path)
    return module, module.backbone


def _load(file: Path) -> Any:
    # mmap: a check of a multi-GB checkpoint reads only the pages it touches (the keys and
    # shapes), not every tensor; the legacy (non-zip) format cannot be mapped.
    with warnings.catch_warnings():
        # Garbage bytes can look like an unusual pickle protocol; torch warns, then fails.
        warnings.simplefilter("ignore")
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            return torch.load(file, map_location="cpu", weights_only=True)


def check_resume(path: str | None, module: nn.Module, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint to resume from that is missing, unreadable or made for another model.

    Compares the checkpoint's recorded model name, classes and LoRA adapters with ``module``'s
    ``record``, then its state-dict keys and shapes with ``module.state_dict()``.
    """
    if not path:
        return
    ckpt = load_checkpoint(path, key)
    theirs: ModelRecord = ckpt["ftlab"]
    ours: ModelRecord = module.record
    name, wanted = theirs.label, ours.label
    if name != wanted:
        raise FtlabError(
            f"{key}={path} belongs to model {name}, not {wanted}: resume it with the model "
            f"config it was trained with (model.name={name}), or give a {wanted} checkpoint"
        )
    if list(theirs.classes) != list(ours.classes):
        raise FtlabError(
            f"{key}={path} was trained on classes {_few(theirs.classes)}, this run's "
            f"data has {_few(ours.classes)}: resume on the same data, or drop {key} "
            "to start a new run"
        )
    if theirs.lora != ours.lora:
        raise FtlabError(
            f"{key}={path} was trained with freeze.lora={theirs.lora}, this run has "
            f"{ours.lora}: resume with the freeze settings it was trained with"
        )
    if theirs.peft != ours.peft:
        raise FtlabError(
            f"{key}={path} was trained with the peft adapter {theirs.peft}, this run has "
            f"{ours.peft}: resume with the freeze settings it was trained with"
        )
    check_state(ckpt, module, path, key)


def check_state(ckpt: dict[str, Any], module: nn.Module, path: str, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint whose state-dict keys or shapes differ from ``module``'s."""
    differences = state_differences(ckpt["state_dict"], module.state_dict())
    if differences:
        raise FtlabError(
            f"{key}={path} ({ckpt['ftlab'].label}) does not fit this run's model: "
            f"{differences}; resume with the model settings it was trained with "
            "(model.*, module.head)"
        )


def _few(items: list[Any], limit: int = 6) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
