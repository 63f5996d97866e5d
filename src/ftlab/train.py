"""``train(cfg)``: one run, top to bottom. Returns the optimized metric for sweepers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict

from ftlab import compose
from ftlab.adapters import save_run_adapter
from ftlab.averaging import build_averaging
from ftlab.checkpoints import check_resume
from ftlab.data.resumable import ExactResume
from ftlab.devices import check_devices
from ftlab.errors import FtlabError
from ftlab.evaluation import RunEvaluation
from ftlab.evaluation.forgetting import Forgetting
from ftlab.faults import AtomicCheckpointIO, FaultGuard, preemptible, recorded
from ftlab.finetuning.features import FeatureCache
from ftlab.finetuning.report import print_plan
from ftlab.loggers import finish, log_artifacts, log_settings
from ftlab.outputs import strip_prefix, write_json
from ftlab.progress import progress_callbacks, quiet_lightning
from ftlab.rundir import RunDir, claim_run_dir, is_global_zero
from ftlab.sweeps.pruning import pruned_status
from ftlab.tuning import check_settings as check_tune
from ftlab.tuning import find_batch_size, find_lr

log = logging.getLogger("ftlab")

# Lightning's own checkpoint loads: plain tensors and values only, never a pickle's code (the
# file was checked by ftlab.checkpoints too; this also holds if it changed since).
SAFE = {"weights_only": True}
BEST = "best/"  # the loggers' names of the best checkpoint's validation after fit


def train(cfg: DictConfig) -> float | None:
    """One run in ``cfg.paths.output_dir``, locked for its lifetime (ftlab.rundir)."""
    identity = {"model": {"name": cfg.model.name}, "seed": cfg.seed}
    if cfg.get("plan"):  # print the plan, write schedule.yaml: no run directory to claim
        return _run(cfg, RunDir(Path(cfg.paths.output_dir).resolve()))
    claimed = claim_run_dir(
        Path(cfg.paths.output_dir),
        resume=bool(cfg.get("resume")),
        ckpt_path=cfg.get("ckpt_path"),
        check=compose.in_multirun(),  # a single run's was checked by the Hydra callback
        overrides=compose.overrides(),
    )
    # A SIGTERM before or between Lightning's loops ends as interrupted too (ftlab.faults).
    with claimed as run, preemptible(run.path, identity):
        return _run(cfg, run)


def _run(cfg: DictConfig, run: RunDir) -> float | None:
    if (cfg.get("task") or {}).get("name") == "causal_lm":  # issue 23, until the task seam
        from ftlab.lm.edge import train_causal_lm

        return train_causal_lm(cfg, run)
    return _train(cfg, run)


def _train(cfg: DictConfig, run: RunDir) -> float | None:
    """Build, fit, validate and test the best checkpoint, then write metrics.json (rank 0)."""
    started = time.perf_counter()
    run_dir = run.path
    _prepare(cfg)
    tuned = _tune(cfg, run_dir) if cfg.get("tune") else None  # sets optimizer.lr or batch_size
    if tuned is not None and not cfg.get("train", True):
        if is_global_zero():
            write_json(run_dir / "metrics.json", {"status": "tuned", "tune": tuned})
        return None
    module, data = compose.model_and_data(cfg)  # built whole: plan, phase callback, record
    module.check_optimized_metric(cfg.get("optimized_metric"))  # before an epoch is spent
    plan = module.plan
    print_plan(plan)
    if cfg.get("plan"):
        return _write_schedule(plan, run_dir)
    # Each of these checks its settings before fit: a bad one costs no epoch.
    evaluation = _run_evaluation(cfg, module, data)
    forgetting = _forgetting(cfg, module, data)
    cache, fit_data = _fit_data(cfg, module, data)
    setup = _fit_setup(cfg, run_dir, plan, cache)
    trainer = setup.trainer
    total = _log_parameters(module, plan)
    check_resume(run.ckpt_path, module)  # one line naming the checkpoint's model
    if run.ckpt_path:
        log.info("resuming from %s", run.ckpt_path)
    identity = {"model": {"name": cfg.model.name}, "seed": cfg.seed}
    with recorded(trainer, run_dir, identity):  # metrics.json says interrupted or failed
        trainer.fit(module, datamodule=fit_data, ckpt_path=run.ckpt_path, **SAFE)
        fitted = _evaluate_best(cfg, run_dir, trainer, module, data)
        fitted.extra = _after_fit(cfg, run_dir, setup, module, data, fitted, evaluation, forgetting)
    val, test = fitted.val_row, fitted.test_row
    log_settings(setup.loggers, setup.settings, metrics={**val, **test})
    finish(setup.loggers)

    metrics = _metrics(cfg, module, data, trainer, cache, fitted, tuned, total, started)
    metrics.update(pruned_status(trainer))  # an Optuna pruner stopped it: status, epoch, value
    value = _optimized(cfg, val, test)
    metrics["optimized_metric"] = {"name": cfg.optimized_metric, "value": value}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        log_artifacts(setup.loggers, run_dir, fitted.best, module.record.to_dict())  # MLflow
        _log_result(cfg, metrics, value, run_dir)
    return value


@dataclass
class _FitSetup:
    """What fit runs with: the trainer, its loggers, the run's settings and the averaging."""

    trainer: L.Trainer
    loggers: list
    settings: dict[str, Any]
    averaging: Any


@dataclass
class _Fitted:
    """What fit and the best checkpoint's validation and test left for metrics.json."""

    best: str | None
    val: list[dict]
    test: list[dict]
    history: list
    checksums: Any
    last_phase: int | None
    rgn: dict
    lora: Any = None
    peft: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def val_row(self) -> dict:
        """The best checkpoint's validation metrics (``val/*``), or none."""
        return self.val[0] if self.val else {}

    @property
    def test_row(self) -> dict:
        """The best checkpoint's test metrics (``test/*``), or none."""
        return self.test[0] if self.test else {}


def _prepare(cfg: DictConfig) -> None:
    """Quiet Lightning, seed everything and check the device count before building anything."""
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_devices(cfg.trainer)  # before building anything: a wrong device count fails at once


def _write_schedule(plan: Any, run_dir: Path) -> None:
    """``plan=true``: write the plan's schedule.yaml and say how to use it; no run."""
    path = run_dir / "schedule.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.to_schedule(), sort_keys=False))
    log.info("plan only; schedule written to %s (use freeze=schedule freeze.phases=%s)", path, path)


def _run_evaluation(cfg: DictConfig, module: Any, data: Any) -> RunEvaluation:
    """The after-fit evaluations (OOD sets, WiSE-FT, drift); takes the θ₀ snapshot now."""
    wise = cfg.get("wise_ft") or {}
    return RunEvaluation(  # θ₀ snapshot; data.ood checked before fit
        module,
        data,
        ood=compose.plain(cfg.data.get("ood")),
        alphas=compose.plain(wise.get("alphas")),
        save_best=bool(wise.get("save_best")),
        test=bool(cfg.get("test", True)),
        seed=int(cfg.seed),
    )


def _forgetting(cfg: DictConfig, module: Any, data: Any) -> Forgetting | None:
    """``eval.forgetting=<data option>``: the source task's test set, checked before fit."""
    return Forgetting.build(
        (cfg.get("eval") or {}).get("forgetting"), cfg.model.get("init_from"), module, data
    )


def _fit_data(cfg: DictConfig, module: Any, data: Any) -> tuple[FeatureCache, Any]:
    """The feature cache of head-only epochs and the data fit reads (the module may wrap it)."""
    # Head-only epochs train on cached features (ftlab.finetuning.features).
    cache = FeatureCache.for_module(
        module, data, compose.plain(cfg.trainer), cfg.paths.get("cache_dir")
    )
    # The module may wrap what fit reads (ftlab.distillation: the teacher's cached logits).
    fit_data = module.fit_data(
        cache.datamodule, data, compose.plain(cfg.trainer), cfg.paths.get("cache_dir")
    )
    return cache, fit_data


def _fit_setup(cfg: DictConfig, run_dir: Path, plan: Any, cache: FeatureCache) -> _FitSetup:
    """Loggers (settings logged), callbacks, averaging and the trainer that fits the run."""
    show_bar, progress = progress_callbacks()
    # SIGTERM saves last.ckpt; a nan/inf loss stops the run (both decided every N steps)
    guard = FaultGuard(run_dir, plan, check_every=cfg.faults.check_every)
    loggers = compose.loggers(cfg)
    settings = compose.run_settings(cfg, plan)
    log_settings(loggers, settings)  # filter and compare runs by them in W&B and TensorBoard
    own = compose.callbacks(cfg, logging=bool(loggers))
    # The module adds its own PhaseCallback (configure_callbacks). ExactResume: a mid-epoch
    # checkpoint resumes exactly (ftlab.data.resumable).
    callbacks = [*own, guard, *cache.callbacks, *progress, ExactResume()]
    # averaging=ema|swa: the average is validated, checkpointed and tested (ftlab.averaging)
    averaging = build_averaging(
        compose.plain(cfg.get("averaging")), plan, cfg.trainer.get("max_epochs")
    )
    if averaging is not None:  # first: a checkpoint saved at a step's end (SIGTERM) holds
        callbacks.insert(0, averaging)  # the average with that step in it
    trainer = compose.trainer(
        cfg,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=show_bar,
        plugins=[AtomicCheckpointIO()],  # a checkpoint is whole or absent, never torn
        **cache.trainer_kwargs,
    )
    return _FitSetup(trainer, loggers, settings, averaging)


def _log_parameters(module: Any, plan: Any) -> int:
    """Log the total and phase-0 trainable parameter counts; return the total."""
    total = sum(p.numel() for p in module.parameters())
    log.info(
        "parameters: %s total, %s trainable at phase 0 (%.2f%%)",
        f"{total:,}",
        f"{plan.trainable_numel(0):,}",
        100 * plan.trainable_numel(0) / total,
    )
    return total


def _evaluate_best(
    cfg: DictConfig, run_dir: Path, trainer: L.Trainer, module: Any, data: Any
) -> _Fitted:
    """Read the phase record, then validate (as ``best/val/*``) and test the best checkpoint."""
    # Read the phase record before validate/test reload the best checkpoint.
    phases = module.phases
    history, checksums, last_phase = list(phases.history), phases.rank_checksums, phases.active
    rgn = module.auto_rgn.report() if module.auto_rgn else {}  # freeze=auto_rgn's factors
    if module.auto_rgn and trainer.is_global_zero:
        module.auto_rgn.plot(run_dir / "auto_rgn.png")
    best = _best_checkpoint(trainer)
    module.log_prefix = BEST  # logged as best/val/*: not one more epoch's row of val/*
    try:
        val = trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
    finally:
        module.log_prefix = ""
    val = [strip_prefix(v, "best", keep=True) for v in val]  # val/* again, from here on
    test = (
        trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
        if cfg.test
        else []
    )
    return _Fitted(best, val, test, history, checksums, last_phase, rgn)


def _after_fit(
    cfg: DictConfig,
    run_dir: Path,
    setup: _FitSetup,
    module: Any,
    data: Any,
    fitted: _Fitted,
    evaluation: RunEvaluation,
    forgetting: Forgetting | None,
) -> dict[str, Any]:
    """Save the adapter (rank 0), then the OOD/WiSE-FT/drift, forgetting and averaging reports."""
    trainer = setup.trainer
    if (module.record.lora or module.record.peft) and trainer.is_global_zero:
        # the best weights' adapter, in peft's format
        adapter = save_run_adapter(
            module, module.plan.trainable(fitted.last_phase or 0), run_dir / "adapter"
        )
        fitted.lora, fitted.peft = (None, adapter) if module.record.peft else (adapter, None)
    extra = evaluation.after_fit(trainer, run_dir)  # OOD sets, WiSE-FT, drift (best weights)
    if forgetting is not None and trainer.is_global_zero:
        extra["forgetting"] = forgetting.measure(trainer, module)
    if setup.averaging is not None:  # every rank: the raw weights' val and test, for comparison
        extra["averaging"] = setup.averaging.report(
            trainer, module, data, fitted.best, bool(cfg.test)
        )
    return extra


def _metrics(
    cfg: DictConfig,
    module: Any,
    data: Any,
    trainer: L.Trainer,
    cache: FeatureCache,
    fitted: _Fitted,
    tuned: dict[str, Any] | None,
    total: int,
    started: float,
) -> dict[str, Any]:
    """metrics.json of a completed run (before the pruner's status and the optimized metric)."""
    trainable = module.plan.trainable_numel(fitted.last_phase or 0)
    return {
        "status": "completed",
        "val": strip_prefix(fitted.val_row, "val"),
        "test": strip_prefix(fitted.test_row, "test"),
        "best_checkpoint": fitted.best,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "lora": fitted.lora,
        "peft": fitted.peft,  # freeze=peft (or freeze.peft): method, modules, adapter params, bytes
        "feature_cache": cache.report(),
        "model": {"name": cfg.model.name, "weights_id": getattr(module.backbone, "weights_id", "")},
        "data": {
            "target": cfg.data._target_,
            "num_classes": data.num_classes,
            "batch_size": data.batch_size,
            **data.summary(),
        },
        "module": {"target": cfg.module._target_, **module.report()},
        "seed": cfg.seed,
        "tune": tuned,  # tune=lr_find | batch_size: what the finder suggested (and the run used)
        "phases": fitted.history,
        "rank_checksums": fitted.checksums,
        "world_size": trainer.world_size,
        "init_from": module.started_from,  # model.init_from: the source, head loaded or new
        **fitted.rgn,
        **fitted.extra,  # ood, wise_ft, drift (ftlab.evaluation)
    }


def _log_result(
    cfg: DictConfig, metrics: dict[str, Any], value: float | None, run_dir: Path
) -> None:
    """The run's closing line: test and val accuracy, else the optimized metric."""
    if "acc" in metrics["val"]:
        log.info(
            "test accuracy %.4f, val accuracy %.4f; run directory: %s",
            metrics["test"].get("acc", float("nan")),
            metrics["val"]["acc"],
            run_dir,
        )
    else:  # a module of one's own, with its own metrics
        log.info("%s %s; run directory: %s", cfg.optimized_metric, value, run_dir)


def _tune(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``tune=lr_find | batch_size``: Lightning's finder on the run's module and data, on one
    device, without loggers or checkpoints (ftlab.tuning). The run then uses the value found
    (``optimizer.lr``, with ``optimizer.lr_range`` scaled alike, or ``data.batch_size``) and
    starts again from the same seed."""
    settings = compose.plain(cfg.tune)
    kind = check_tune(settings)
    module, data = compose.model_and_data(cfg)

    def trainer(callbacks: list[L.Callback]) -> L.Trainer:
        return compose.trainer(
            cfg,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            default_root_dir=str(run_dir),  # lr_find saves and removes a checkpoint there
            devices=1,
            num_nodes=1,
            strategy="auto",
        )

    with open_dict(cfg):
        if kind == "lr_find":
            found = find_lr(module, data, trainer, settings, run_dir)
            lr = found["suggestion"]
            if lr is None:
                raise FtlabError(
                    "tune=lr_find: the loss curve gave no suggestion (too few points, or no "
                    "descent): widen tune.min_lr..tune.max_lr or raise tune.num_training"
                )
            if cfg.optimizer.get("lr_range"):  # the range moves with its top, the head's lr
                low, high = cfg.optimizer.lr_range
                cfg.optimizer.lr_range = [low * lr / high, lr]
            cfg.optimizer.lr = lr
            log.info("tune=lr_find: optimizer.lr=%g (configured %g)", lr, found["configured_lr"])
        else:
            found = find_batch_size(module, data, trainer, settings)
            cfg.data.batch_size = found["suggestion"]
            log.info(
                "tune=batch_size: data.batch_size=%d (configured %d)",
                found["suggestion"],
                found["configured_batch_size"],
            )
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the run starts as it would have
    return found


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
