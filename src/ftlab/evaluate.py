"""``evaluate(cfg)``: a checkpoint written by ``train`` on any data config."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ftlab import compose
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.devices import check_devices
from ftlab.errors import FtlabError
from ftlab.loggers import finish
from ftlab.outputs import strip_prefix, write_json
from ftlab.progress import progress_callbacks, quiet_lightning

log = logging.getLogger("ftlab")


def evaluate(cfg: DictConfig) -> float | None:
    if cfg.get("export"):
        from ftlab.exports import export  # the layouts other tools load (ftlab.exports)

        export(cfg)
        return None
    started = time.perf_counter()
    quiet_lightning()
    check_devices(cfg.trainer)
    ckpt = load_checkpoint(cfg.get("ckpt_path"))
    module, backbone = restore_module(ckpt, cfg.ckpt_path)
    data = compose.data(cfg, backbone.input_spec, module.task)  # the checkpoint's task splits
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
    loggers = compose.loggers(cfg)
    trainer = compose.trainer(
        cfg, callbacks=progress, logger=loggers or False, enable_progress_bar=show_bar
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
    name = module.task.metric.partition("/")[2]  # the task's main metric: acc, map, mae
    value = metrics["test"].get(name, float("nan"))
    if trainer.is_global_zero:
        out = write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        if name == "acc":
            log.info("test accuracy %.4f; metrics: %s", value, out)
        else:
            log.info("test %s %.4f; metrics: %s", name, value, out)
    return value
