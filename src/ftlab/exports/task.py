"""The task behind ``export=<layout>``: restore the checkpoint, merge adapters, run the layout's
writer (a :data:`LAYOUTS` entry) and write the model card."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ftlab.adapters import merge_lora
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.errors import FtlabError
from ftlab.exports.card import model_card
from ftlab.exports.job import Export, predict, sample_inputs
from ftlab.record import ModelRecord
from ftlab.registry import Registry
from ftlab.runinfo import RunInfo

log = logging.getLogger("ftlab")

EXPORTS = {
    "merged": "ftlab's own layout (library model weights, head, record)",
    "hf": "Hugging Face: transformers classifier or sentence-transformers",
    "timm": "timm's Hub layout",
    "onnx": "ONNX, for onnxruntime and serving runtimes",
}
KIND_OF = {"hf": "hf", "timm": "timm"}  # layouts that need one backbone kind

# One writer per layout: ``writer(job)`` fills ``job.out`` and checks it with its own loader.
LAYOUTS: Registry[Callable[[Export], None]] = Registry("export layout", key="export")
LAYOUTS.register("merged", "ftlab.exports.merged:write_merged")
LAYOUTS.register("hf", "ftlab.exports.hf:write_hf")
LAYOUTS.register("timm", "ftlab.exports.timm_hub:write_timm")
LAYOUTS.register("onnx", "ftlab.exports.onnx_file:write_onnx")


def export(cfg: DictConfig) -> Path:
    """The task behind ``export=<layout>`` (``eval.py``, ``ftlab-export``)."""
    layout = str(cfg.export)
    if layout not in EXPORTS:
        raise FtlabError(
            f"export={layout} is unknown: use one of {', '.join(f'export={k}' for k in EXPORTS)}"
        )
    ckpt_path = cfg.get("ckpt_path")
    # Into the run that trained the checkpoint (<run>/<layout>/), not eval.py's own folder.
    return export_checkpoint(ckpt_path, layout, None, _command(layout, ckpt_path))


def _command(layout: str, ckpt_path: Any) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return " ".join(["python eval.py", *HydraConfig.get().overrides.task])
    return f"python eval.py export={layout} ckpt_path={ckpt_path}"


def export_checkpoint(
    ckpt_path: str | None, layout: str, out: Path | None = None, command: str = ""
) -> Path:
    """Write ``ckpt_path`` in ``layout`` (see the package docstring) to ``out``, by default
    ``<run>/<layout>/`` of the run that wrote the checkpoint; return where it went.

    The files are written to a hidden folder beside ``out`` and renamed into place once the
    export reproduced ftlab's logits, so a refused export leaves an earlier one as it was."""
    ckpt = load_checkpoint(ckpt_path)
    record: ModelRecord = ckpt["ftlab"]
    _check_kind(layout, record, str(ckpt_path))
    run = RunInfo.beside(str(ckpt_path))
    out = Path(out) if out is not None else run.export_dir(layout)
    module, backbone = restore_module(ckpt, str(ckpt_path))
    module.eval()
    staging = out.parent / f".{out.name}.{os.getpid()}.partial"
    job = Export(layout, Path(str(ckpt_path)), staging, module, backbone, record, run, dest=out)
    job.inputs = sample_inputs(backbone, job.run)
    with torch.no_grad():
        job.expected = predict(module, backbone, job.inputs)  # adapters not merged yet
    merge_lora(backbone.model)  # every layout holds the merged weights
    from ftlab.backbones.hf_backbone import _no_progress_bar  # transformers' bar per save/load

    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with torch.no_grad(), _no_progress_bar():
            LAYOUTS.get(layout)(job)
        (staging / "README.md").write_text(model_card(job, command))
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "export=%s (%s) written to %s; max |logit - ftlab's| on a batch of %d: %.3g",
        layout, job.written, out, job.expected.shape[0], job.max_diff,
    )  # fmt: skip
    return out


def _replace(staging: Path, out: Path) -> None:
    """Put the finished export at ``out``, in place of an earlier one."""
    if out.exists():
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _check_kind(layout: str, record: ModelRecord, where: str) -> None:
    kind = record.backbone.kind
    needed = KIND_OF.get(layout)
    if needed and kind != needed:
        other = next(k for k, v in KIND_OF.items() if v == kind)
        raise FtlabError(
            f"export={layout} needs a {'Hugging Face' if needed == 'hf' else 'timm'} backbone, "
            f"but ckpt_path={where} holds the {kind} model {record.backbone.name}: use "
            f"export={other} (or export=onnx, export=merged)"
        )
