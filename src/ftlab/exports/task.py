"""The task behind ``export=<layout>``: restore the checkpoint, merge adapters, run the layout's
writer (a :data:`LAYOUTS` entry) and write the model card."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ftlab.adapters import merge_lora
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.errors import FtlabError
from ftlab.exports.card import model_card
from ftlab.exports.job import Export, RunInfo, predict, sample_inputs
from ftlab.record import ModelRecord
from ftlab.registry import Registry

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
    out = Path(cfg.paths.output_dir) / layout
    return export_checkpoint(ckpt_path, layout, out, _command(layout, ckpt_path))


def _command(layout: str, ckpt_path: Any) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return " ".join(["python eval.py", *HydraConfig.get().overrides.task])
    return f"python eval.py export={layout} ckpt_path={ckpt_path}"


def export_checkpoint(ckpt_path: str | None, layout: str, out: Path, command: str = "") -> Path:
    """Write ``ckpt_path`` to ``out`` in ``layout`` (see the module docstring); return ``out``."""
    ckpt = load_checkpoint(ckpt_path)
    record: ModelRecord = ckpt["ftlab"]
    _check_kind(layout, record, str(ckpt_path))
    module, backbone = restore_module(ckpt, str(ckpt_path))
    module.eval()
    job = Export(layout, Path(str(ckpt_path)), out, module, backbone, record, RunInfo())
    job.run = RunInfo.beside(job.ckpt_path)
    job.inputs = sample_inputs(backbone, job.run)
    with torch.no_grad():
        job.expected = predict(module, backbone, job.inputs)  # adapters not merged yet
    merge_lora(backbone.model)  # every layout holds the merged weights
    out.mkdir(parents=True, exist_ok=True)
    from ftlab.backbones.hf_backbone import _no_progress_bar  # transformers' bar per save/load

    with torch.no_grad(), _no_progress_bar():
        LAYOUTS.get(layout)(job)
    (out / "README.md").write_text(model_card(job, command))
    log.info(
        "export=%s (%s) written to %s; max |logit - ftlab's| on a batch of %d: %.3g",
        layout, job.written, out, job.expected.shape[0], job.max_diff,
    )  # fmt: skip
    return out


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
