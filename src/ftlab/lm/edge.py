"""The Hydra edge of ``task=causal_lm``: a composed run config turned into a causal-LM run.

``ftlab.train`` hands a run here when ``task.name`` is ``causal_lm``: the same steps as the
classifier's run (claimed run dir, seed, backbone, data, the module built whole, loggers,
checkpoints, SIGTERM and divergence guard, fit, validate and test the best checkpoint,
metrics.json), with the language model's data, module and evaluations: perplexity, greedy
generations, forgetting perplexity on held-out text of another domain, and the adapter in
peft's format with ``task_type=CAUSAL_LM``. This file reads the config (an edge module, as
``compose``); everything it calls takes plain values. The integrator folds it into the task
seam (issue 22).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from ftlab import compose
from ftlab.data.resumable import ExactResume
from ftlab.devices import check_devices
from ftlab.errors import FtlabError
from ftlab.faults import AtomicCheckpointIO, FaultGuard, recorded
from ftlab.finetuning.report import print_plan
from ftlab.finetuning.spec import FreezeSpec
from ftlab.lm.adalora import AdaLoRAAllocation
from ftlab.lm.data import LMDataModule
from ftlab.lm.exports import save_lm_adapter
from ftlab.lm.formats import encode_text, format_of
from ftlab.lm.module import CausalLM
from ftlab.lm.packing import Collate
from ftlab.lm.sources import held_out_text
from ftlab.lm.task import CausalLMTask
from ftlab.loggers import finish, log_settings
from ftlab.outputs import strip_prefix, write_json
from ftlab.progress import progress_callbacks, quiet_lightning
from ftlab.rundir import RunDir

log = logging.getLogger("ftlab")
SAFE = {"weights_only": True}


def task_settings(cfg: DictConfig) -> CausalLMTask:
    """The ``task`` group through the task registry (its options checked there)."""
    return compose.task(cfg)  # type: ignore[return-value]


def build(cfg: DictConfig) -> tuple[CausalLM, LMDataModule]:
    """The backbone, the LM data and the module, built whole (plan included)."""
    task = task_settings(cfg)
    backbone = compose.backbone(cfg)
    if getattr(backbone, "family", "") != "hf_causal":
        raise FtlabError(
            f"task=causal_lm needs a causal LM: model={cfg.model.name} is not one (use "
            "model=smollm2, or model._target_=ftlab.backbones.hf_causal.build_causal_backbone)"
        )
    options = {k: v for k, v in compose.plain(cfg.data).items() if k not in ("_target_", "ood")}
    if cfg.data.get("_target_") != "ftlab.lm.data.LMDataModule":
        raise FtlabError(
            f"task=causal_lm reads text examples: data={cfg.data.get('_target_')} is a "
            "classification option; use data=chatterbot, data=bbc_topic or data=lm_jsonl"
        )
    try:
        data = LMDataModule(
            tokenizer=backbone.tokenizer,
            loss_on=task.loss_on,
            chat=task.chat,
            **options,
        )
    except TypeError as err:
        raise FtlabError(f"data: {err}".replace("__init__() ", "")) from None
    data.setup("fit")
    evaluation = (compose.plain(cfg.get("eval")) or {}).get("generate") or {}
    module = CausalLM(
        backbone,
        freeze=FreezeSpec.parse(compose.plain(cfg.freeze)),
        optimization=compose.optimization(cfg),
        generate=evaluation,
        chat=task.chat,
    )
    if module.prompt_learning and data.packing:
        raise FtlabError(
            f"data.packing=true with freeze.method={module.prompt_learning['method']}: peft's "
            "virtual tokens go before each row, not each packed example; set data.packing=false"
        )
    module.generation_examples = [e for e in data.raw["val"] if format_of(e) != "text"]
    return module, data


def _forgetting_loader(cfg: DictConfig, data: LMDataModule) -> Any:
    """The held-out text of another domain (``eval.forgetting_text``), or None."""
    name = (compose.plain(cfg.get("eval")) or {}).get("forgetting_text")
    if not name:
        return None
    from torch.utils.data import DataLoader

    limit = int((compose.plain(cfg.eval) or {}).get("forgetting_samples") or 64)
    texts = held_out_text(str(name))[:limit]
    examples = [encode_text(data.tokenizer, e["text"], data.max_length) for e in texts]
    return DataLoader(
        examples, batch_size=data.batch_size, collate_fn=Collate(data.tokenizer.pad_token_id)
    )  # type: ignore[arg-type]


def train_causal_lm(cfg: DictConfig, run: RunDir) -> float | None:
    """One causal-LM run in ``run`` (already claimed); returns the optimized metric."""
    started = time.perf_counter()
    run_dir = run.path
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_devices(cfg.trainer)
    module, data = build(cfg)
    plan = module.plan
    print_plan(plan)
    if cfg.get("plan"):
        return None
    held_out = _forgetting_loader(cfg, data)
    before = module.perplexity(held_out) if held_out is not None else None
    guard = FaultGuard(run_dir, plan, check_every=cfg.faults.check_every)
    show_bar, progress = progress_callbacks()
    loggers = compose.loggers(cfg)
    settings = compose.run_settings(cfg, plan)
    log_settings(loggers, settings)
    # ExactResume: a resume mid-epoch continues at the saved batch, with the saved RNGs.
    callbacks = [*compose.callbacks(cfg, logging=bool(loggers)), guard, *progress, ExactResume()]
    adalora = AdaLoRAAllocation.for_module(module)
    if adalora is not None:
        callbacks.append(adalora)
    trainer = compose.trainer(
        cfg,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=show_bar,
        plugins=[AtomicCheckpointIO()],
    )
    total = sum(p.numel() for p in module.parameters())
    identity = {"model": {"name": cfg.model.name}, "seed": cfg.seed}
    with recorded(trainer, run_dir, identity):
        trainer.fit(module, datamodule=data, ckpt_path=run.ckpt_path, **SAFE)
        phases = module.phases
        history, checksums, last_phase = list(phases.history), phases.rank_checksums, phases.active
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks
                     if getattr(c, "monitor", None) and c.best_model_path), None)  # fmt: skip
        val = trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
        test = (
            trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, **SAFE)
            if cfg.test and data.tokenized["test"]
            else []
        )
        adapter = None
        tuned = module.record.lora or module.record.peft or module.prompt_learning
        if tuned and trainer.is_global_zero:
            trained = plan.trainable(last_phase or 0)
            adapter = save_lm_adapter(module, run_dir / "adapter", trained)
        after = module.perplexity(held_out) if held_out is not None else None
    finish(loggers)
    trainable = plan.trainable_numel(last_phase or 0)
    metrics = {
        "status": "completed",
        "task": "causal_lm",
        "val": strip_prefix(val[0] if val else {}, "val"),
        "test": strip_prefix(test[0] if test else {}, "test"),
        "best_checkpoint": best,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "adapter": adapter,
        "adalora": adalora.report() if adalora is not None else None,
        "forgetting": None
        if before is None
        else {"text": str(cfg.eval.forgetting_text), "ppl_before": before, "ppl_after": after},
        "model": {"name": cfg.model.name, "weights_id": module.backbone.weights_id},
        "data": data.summary(),
        "generations": module.generations,
        "seed": cfg.seed,
        "phases": history,
        "rank_checksums": checksums,
        "world_size": trainer.world_size,
    }
    name = cfg.get("optimized_metric")
    merged = {**(val[0] if val else {}), **(test[0] if test else {})}
    if name and name not in merged:
        raise FtlabError(
            f"optimized_metric={name} was not logged: use one of {', '.join(sorted(merged))}"
        )
    value = float(merged[name]) if name else None
    metrics["optimized_metric"] = {"name": name, "value": value}
    if trainer.is_global_zero:
        write_json(Path(run_dir) / "metrics.json", metrics)
        log.info("%s %s; run directory: %s", name, value, run_dir)
    return value
