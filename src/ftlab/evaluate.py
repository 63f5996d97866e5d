"""``evaluate(cfg)``: a checkpoint written by ``train`` on any data config."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from safetensors.torch import save_file

from ftlab.adapters import inject_lora, merge_lora
from ftlab.adapters.lora import cpu_state
from ftlab.checkpoints import check_state, load_checkpoint
from ftlab.data import build_data
from ftlab.devices import check_devices
from ftlab.errors import FtlabError
from ftlab.loggers import build_loggers, finish
from ftlab.module import FinetuneModule, make_head
from ftlab.outputs import strip_prefix, write_json
from ftlab.progress import progress_callbacks, quiet_lightning
from ftlab.record import ModelRecord, restore_backbone

log = logging.getLogger("ftlab")


def restore_module(ckpt: dict[str, Any], path: str = "?") -> tuple[FinetuneModule, Any]:
    """The trained module and its backbone, rebuilt from the checkpoint's record.

    ``ckpt`` comes from :func:`~ftlab.checkpoints.load_checkpoint`, which parsed its record; the
    backbone is built by ftlab's own builders (ftlab.record), never by a name in the file.
    ``path`` (the ``ckpt_path`` value) only names the file in errors.
    """
    record: ModelRecord = ckpt["ftlab"]
    backbone = restore_backbone(record.backbone)
    if record.lora:  # the same adapters as in training, so that the state dict fits
        inject_lora(backbone, record.lora)
    classes = record.classes
    head = make_head(backbone.num_features, len(classes), record.head_dropout)
    module = FinetuneModule(backbone, head, len(classes), record=record)
    check_state(ckpt, module, path)  # e.g. saved by another timm version that renamed layers
    module.load_state_dict(ckpt["state_dict"])
    return module, backbone


EXPORTS = ("merged",)


def export(cfg: DictConfig) -> Path:
    """``export=merged``: the checkpoint as a plain model, LoRA adapters folded into their layers.

    Writes ``<output_dir>/merged/``: ``model.safetensors`` (the library model's own parameter
    names: ``timm.create_model(name, num_classes=0)`` or the Hugging Face model load it without
    peft), ``head.safetensors`` and ``ftlab.json`` (the plain model record, ftlab.record).
    """
    if cfg.export not in EXPORTS:
        raise FtlabError(f"export={cfg.export} is unknown: use export=merged")
    module, backbone = restore_module(load_checkpoint(cfg.get("ckpt_path")), cfg.get("ckpt_path"))
    model = merge_lora(backbone.model)
    out = Path(cfg.paths.output_dir) / "merged"
    out.mkdir(parents=True, exist_ok=True)
    save_file(cpu_state(model.state_dict()), out / "model.safetensors", metadata={"format": "pt"})
    save_file(cpu_state(module.head.state_dict()), out / "head.safetensors")
    # The checkpoint's plain record, its adapters now folded into the weights.
    record = replace(module.record, lora=None, lora_merged=module.record.lora)
    (out / "ftlab.json").write_text(json.dumps(record.to_dict()))
    log.info("merged model written to %s", out)
    return out


def evaluate(cfg: DictConfig) -> float | None:
    if cfg.get("export"):
        export(cfg)
        return None
    started = time.perf_counter()
    quiet_lightning()
    check_devices(cfg.trainer)
    ckpt = load_checkpoint(cfg.get("ckpt_path"))
    module, backbone = restore_module(ckpt, cfg.ckpt_path)
    data = build_data(cfg.data, backbone.input_spec)
    data.prepare_data()
    data.setup("test")
    trained_on = module.record.classes
    if list(data.classes) != list(trained_on):
        raise FtlabError(
            f"data={cfg.data._target_.rsplit('.', 1)[-1]} has classes {list(data.classes)[:10]} "
            f"but the checkpoint was trained on {trained_on[:10]}: evaluate on data with the "
            "same classes"
        )
    show_bar, progress = progress_callbacks()
    loggers = build_loggers(cfg.get("logger"))
    trainer = instantiate(
        cfg.trainer, callbacks=progress, logger=loggers or False, enable_progress_bar=show_bar
    )
    val = trainer.validate(module, datamodule=data, verbose=False)
    test = trainer.test(module, datamodule=data, verbose=False)
    finish(loggers)
    metrics = {
        "status": "completed",
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "data": cfg.data._target_,
        "data_summary": data.summary(),  # e.g. skipped_corrupt under data.skip_corrupt=true
        "val": strip_prefix(val[0], "val"),
        "test": strip_prefix(test[0], "test"),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    if trainer.is_global_zero:
        out = write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        log.info("test accuracy %.4f; metrics: %s", metrics["test"].get("acc", float("nan")), out)
    return metrics["test"].get("acc", float("nan"))
