"""``train(cfg)``: one run, top to bottom. Returns the optimized metric for sweepers."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ftlab.adapters import add_lora, save_run_adapter
from ftlab.checkpoints import check_resume
from ftlab.data import build_data
from ftlab.data.resumable import ExactResume
from ftlab.devices import check_devices
from ftlab.errors import FtlabError
from ftlab.evaluation import RunEvaluation
from ftlab.faults import AtomicCheckpointIO, FaultGuard, preemptible, recorded
from ftlab.finetuning import Plan, build_plan
from ftlab.finetuning.callback import PhaseCallback
from ftlab.finetuning.features import FeatureCache
from ftlab.finetuning.freezing import bn_params
from ftlab.finetuning.report import print_plan
from ftlab.loggers import build_loggers, finish, log_settings
from ftlab.module import FinetuneModule, make_head
from ftlab.outputs import strip_prefix, write_json
from ftlab.progress import progress_callbacks, quiet_lightning
from ftlab.record import BackboneRecord, ModelRecord
from ftlab.rundir import RunDir, claim_run_dir

log = logging.getLogger("ftlab")

# ftlab's own keys inside the optimizer and scheduler configs; torch never sees them.
OPTIMIZER_KEYS = ("layer_decay", "lr_range")
SCHEDULER_KEYS = ("interval", "monitor")
# Lightning's own checkpoint loads: plain tensors and values only, never a pickle's code (the
# file was checked by ftlab.checkpoints too; this also holds if it changed since).
SAFE = {"weights_only": True}


def split_keys(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[dict, dict]:
    """``(config without keys, the keys' values)`` from a config node."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    own = {k: plain.pop(k) for k in keys if k in plain}
    return plain, own


def build_model(cfg: DictConfig):
    """Backbone, data and head, with the plan over their parameters."""
    backbone = instantiate(cfg.model)
    freeze = OmegaConf.to_container(cfg.freeze, resolve=True)
    lora = add_lora(backbone, freeze)  # before the plan, so the adapters get their layer group
    data = build_data(cfg.data, backbone.input_spec)
    data.prepare_data()
    data.setup("fit")
    head = make_head(backbone.num_features, data.num_classes, cfg.get("head_dropout", 0.0))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    record = ModelRecord(  # plain values: eval.py rebuilds the model from them, never from code
        backbone=BackboneRecord.from_config(model, backbone.weights_id),
        classes=list(data.classes),
        head_dropout=float(cfg.get("head_dropout", 0.0)),
        lora=lora,  # eval.py re-injects the same adapters before loading the weights
    )
    module = FinetuneModule(backbone, head, data.num_classes, record=record)
    named = dict(module.named_parameters())
    optimizer_cfg, _ = split_keys(cfg.optimizer, ())
    module.plan = build_plan(
        freeze,
        module.layer_groups(),
        named,
        optimizer_cfg,
        module.no_weight_decay(),
        bn_params(module),
    )
    return module, data


def attach_optimization(module: FinetuneModule, cfg: DictConfig) -> None:
    """Partials for the optimizer and scheduler, built later from the plan's param groups."""
    optimizer_cfg, _ = split_keys(cfg.optimizer, OPTIMIZER_KEYS)
    module.optimizer_factory = instantiate(optimizer_cfg)
    scheduler_cfg, options = split_keys(cfg.scheduler, SCHEDULER_KEYS)
    module.scheduler_options = options
    module.scheduler_factory = instantiate(scheduler_cfg) if scheduler_cfg.get("_target_") else None


def build_callbacks(cfg: Mapping[str, Any] | None, logging: bool = True) -> list[L.Callback]:
    """The ``callbacks`` group's entries. Without a logger (``logger=none``) the lr monitor is
    left out: Lightning refuses a LearningRateMonitor that has nowhere to log."""
    callbacks = [
        instantiate(conf)
        for conf in (cfg or {}).values()
        if isinstance(conf, Mapping) and conf.get("_target_")
    ]
    if not logging:
        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        if dropped:
            log.info("logger=none: the lr monitor is off (it logs to a logger)")
        callbacks = [c for c in callbacks if c not in dropped]
    return callbacks


def run_settings(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    """What the loggers record about the run: the resolved config (paths left out), the config
    group chosen for each of model, data, freeze, strategy, ... and the plan's phase starts."""
    from hydra.core.hydra_config import HydraConfig

    settings: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for machine_specific in ("paths", "hydra"):
        settings.pop(machine_specific, None)
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        settings["choice"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    settings["schedule"] = {"phases": len(plan.phases), "starts": [p.epoch for p in plan.phases]}
    return settings


def train(cfg: DictConfig) -> float | None:
    """One run in ``cfg.paths.output_dir``, locked for its lifetime (ftlab.rundir)."""
    identity = {"model": {"name": cfg.model.name}, "seed": cfg.seed}
    # A SIGTERM before or between Lightning's loops ends as interrupted too (ftlab.faults).
    with claim_run_dir(cfg) as run, preemptible(run.path, identity):
        return _train(cfg, run)


def _train(cfg: DictConfig, run: RunDir) -> float | None:
    started = time.perf_counter()
    run_dir = run.path
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_devices(cfg.trainer)  # before building anything: a wrong device count fails at once

    module, data = build_model(cfg)
    plan = module.plan
    print_plan(plan)
    if cfg.get("plan"):
        path = run_dir / "schedule.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(plan.to_schedule(), sort_keys=False))
        log.info(
            "plan only; schedule written to %s (use freeze=schedule freeze.phases=%s)", path, path
        )
        return None
    attach_optimization(module, cfg)
    evaluation = RunEvaluation(cfg, module, data)  # θ₀ snapshot; data.ood checked before fit

    phases = PhaseCallback(plan)
    cache = FeatureCache.from_config(cfg, plan, data)  # head-only epochs train on cached features
    show_bar, progress = progress_callbacks()
    # SIGTERM saves last.ckpt; a nan/inf loss stops the run (both decided every N steps)
    guard = FaultGuard(run_dir, plan, check_every=cfg.faults.check_every)
    loggers = build_loggers(cfg.get("logger"))
    settings = run_settings(cfg, plan)
    log_settings(loggers, settings)  # filter and compare runs by them in W&B and TensorBoard
    own = build_callbacks(cfg.get("callbacks"), logging=bool(loggers))
    # ExactResume: a mid-epoch checkpoint resumes exactly (ftlab.data.resumable)
    callbacks = [*own, phases, guard, *cache.callbacks, *progress, ExactResume()]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=show_bar,
        plugins=[AtomicCheckpointIO()],  # a checkpoint is whole or absent, never torn
        **cache.trainer_kwargs,
    )
    total = sum(p.numel() for p in module.parameters())
    log.info(
        "parameters: %s total, %s trainable at phase 0 (%.2f%%)",
        f"{total:,}",
        f"{plan.trainable_numel(0):,}",
        100 * plan.trainable_numel(0) / total,
    )

    check_resume(run.ckpt_path, module)  # one line naming the checkpoint's model
    if run.ckpt_path:
        log.info("resuming from %s", run.ckpt_path)
    identity = {"model": {"name": cfg.model.name}, "seed": cfg.seed}
    with recorded(trainer, run_dir, identity):  # metrics.json says interrupted or failed
        trainer.fit(module, datamodule=cache.datamodule, ckpt_path=run.ckpt_path, **SAFE)
        # Read the phase record before validate/test reload the best checkpoint.
        history, checksums, last_phase = list(phases.history), phases.rank_checksums, phases.active
        best = _best_checkpoint(trainer)
        val = trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
        test = (
            trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
            if cfg.test
            else []
        )
        lora = None
        if module.record.lora and trainer.is_global_zero:  # the best weights' adapter, peft format
            lora = save_run_adapter(module, plan.trainable(last_phase or 0), run_dir / "adapter")
        extra = evaluation.after_fit(trainer, run_dir)  # OOD sets, WiSE-FT, drift (best weights)
    trainable = plan.trainable_numel(last_phase or 0)
    log_settings(
        loggers, settings, metrics={**(val[0] if val else {}), **(test[0] if test else {})}
    )
    finish(loggers)

    metrics = {
        "status": "completed",
        "val": strip_prefix(val[0] if val else {}, "val"),
        "test": strip_prefix(test[0] if test else {}, "test"),
        "best_checkpoint": best,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "lora": lora,
        "feature_cache": cache.report(),
        "model": {"name": cfg.model.name, "weights_id": getattr(module.backbone, "weights_id", "")},
        "data": {"target": cfg.data._target_, "num_classes": data.num_classes, **data.summary()},
        "seed": cfg.seed,
        "phases": history,
        "rank_checksums": checksums,
        "world_size": trainer.world_size,
        **extra,  # ood, wise_ft, drift (ftlab.evaluation)
    }
    value = _optimized(cfg, val[0] if val else {}, test[0] if test else {})
    metrics["optimized_metric"] = {"name": cfg.optimized_metric, "value": value}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        log.info(
            "test accuracy %.4f, val accuracy %.4f; run directory: %s",
            metrics["test"].get("acc", float("nan")),
            metrics["val"].get("acc", float("nan")),
            run_dir,
        )
    return value


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """The monitored checkpoint's best file, else the latest file any checkpoint wrote."""
    ckpts = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    for ckpt in sorted(ckpts, key=lambda c: c.monitor is None):
        if ckpt.best_model_path:
            return ckpt.best_model_path
    return None


def _optimized(cfg: DictConfig, val: dict, test: dict) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    merged = {**val, **test}
    if name not in merged:
        raise FtlabError(
            f"optimized_metric={name} was not logged: use one of {', '.join(sorted(merged))}"
        )
    return float(merged[name])
