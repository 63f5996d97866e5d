"""What ``train`` evaluates around ``trainer.fit``: OOD sets, WiSE-FT and drift."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ftlab.data.base import ClassificationDataModule
from ftlab.evaluation.drift import linear_cka, merged_state, weight_change
from ftlab.evaluation.loop import evaluate, pooled_features
from ftlab.evaluation.ood import build_ood_sets
from ftlab.evaluation.plots import plot_drift, plot_wise_ft
from ftlab.evaluation.wise_ft import (
    best_alpha,
    best_row,
    check_alphas,
    interpolate,
    loaded,
    snapshot,
    sweep,
    write_csv,
)
from ftlab.finetuning import HEAD, Plan
from ftlab.module import FinetuneModule

log = logging.getLogger("ftlab")

CKA_SAMPLES = 256  # the first validation samples (within limit_val_batches), for the CKA
LINEAR_PROBE_NOTE = (
    "the run began with a linear probe (phase 0 trains only the head): every α uses the "
    "fine-tuned head, as WiSE-FT does for a new head; only the backbone is interpolated"
)


def starts_with_linear_probe(plan: Plan | None) -> bool:
    """Whether phase 0 of the plan trains the head alone (gradual, lp_ft, linear_probe)."""
    return plan is not None and {u.group for u in plan.units if u.phase == 0} == {HEAD}


class RunEvaluation:
    """Built before ``fit``: snapshots the pretrained backbone θ₀ and builds the OOD sets (so a
    bad ``data.ood`` fails before training). ``after_fit`` evaluates the module as the trainer
    left it (the best checkpoint after validate/test) and returns the metrics.json entries."""

    def __init__(self, cfg: DictConfig, module: FinetuneModule, data: ClassificationDataModule):
        self.module, self.data = module, data
        self.pretrained = snapshot(module.backbone)
        wise = cfg.get("wise_ft") or {}
        self.alphas = check_alphas(wise.get("alphas"))
        self.save_best = bool(wise.get("save_best"))
        self.test = bool(cfg.get("test", True))
        ood = cfg.data.get("ood")
        items = OmegaConf.to_container(ood, resolve=True) if OmegaConf.is_config(ood) else ood
        self.ood_sets = build_ood_sets(items, data, module.backbone.input_spec, int(cfg.seed))

    def after_fit(self, trainer: L.Trainer, run_dir: Path) -> dict[str, Any]:
        """OOD metrics, drift and WiSE-FT (rank 0 only); writes the CSV, figures and checkpoint
        into ``run_dir`` and logs the scalars to the trainer's loggers."""
        if not trainer.is_global_zero:
            return {}
        module = self.module.to(trainer.strategy.root_device)
        finetuned = snapshot(module.backbone)
        out: dict[str, Any] = {}
        if self.ood_sets:
            out["ood"] = self._score(trainer, val=False, test=False)["ood"]
        out["drift"] = self._drift(trainer, finetuned)
        plot_drift(out["drift"]["weight_change"], out["drift"]["cka"], run_dir / "drift.png")
        if self.alphas:
            out["wise_ft"] = self._wise_ft(trainer, finetuned, run_dir)
        _log(trainer, out)
        return out

    def _score(self, trainer: L.Trainer, val: bool = True, test: bool = True) -> dict[str, Any]:
        """Metrics of the module as it is now on val, test (when the run tests) and OOD sets."""

        def run(loader: Any, limit: Any) -> dict[str, float]:
            return evaluate(
                self.module, loader, self.data.num_classes, limit, trainer.precision_plugin
            )

        scores: dict[str, Any] = {}
        if val:
            scores["val"] = run(self.data.val_dataloader(), trainer.limit_val_batches)
        if test and self.test:
            scores["test"] = run(self.data.test_dataloader(), trainer.limit_test_batches)
        scores["ood"] = {s.name: run(s.loader, trainer.limit_test_batches) for s in self.ood_sets}
        return scores

    def _drift(self, trainer: L.Trainer, finetuned: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Weight change per layer group and feature CKA, pretrained vs fine-tuned."""
        backbone = self.module.backbone

        def features() -> torch.Tensor:
            loader, limit = self.data.val_dataloader(), trainer.limit_val_batches
            return pooled_features(backbone, loader, CKA_SAMPLES, limit, trainer.precision_plugin)

        weights, tuned = merged_state(backbone), features()
        with loaded(backbone, self.pretrained, finetuned):
            weights0, before = merged_state(backbone), features()
        return {
            "weight_change": weight_change(weights0, weights, backbone.layer_groups()),
            # CKA compares sample similarities: it needs at least two samples.
            "cka": linear_cka(before, tuned) if len(tuned) > 1 else None,
            "cka_samples": len(tuned),
        }

    def _wise_ft(
        self, trainer: L.Trainer, finetuned: dict[str, torch.Tensor], run_dir: Path
    ) -> dict[str, Any]:
        backbone = self.module.backbone
        rows = sweep(
            backbone, self.pretrained, finetuned, self.alphas, lambda: self._score(trainer)
        )
        best = best_alpha(rows)
        result: dict[str, Any] = {
            "alphas": self.alphas,
            "rows": rows,
            "best_alpha": best,
            "best": best_row(rows, best),  # the α picked by val, laid out like the run's metrics
            "head": "fine-tuned",
        }
        if starts_with_linear_probe(self.module.plan):
            result["note"] = LINEAR_PROBE_NOTE
            log.info("WiSE-FT: %s", LINEAR_PROBE_NOTE)
        write_csv(rows, run_dir / "wise_ft.csv")
        plot_wise_ft(rows, run_dir / "wise_ft.png")
        if self.save_best:
            with loaded(backbone, interpolate(self.pretrained, finetuned, best), finetuned):
                state = snapshot(self.module)
            path = run_dir / "wise_ft_best.ckpt"
            # The layout eval.py reads: python eval.py ckpt_path=<run>/wise_ft_best.ckpt
            record = self.module.record.to_dict()
            torch.save({"state_dict": state, "ftlab": record, "wise_ft": {"alpha": best}}, path)
            result["best_checkpoint"] = str(path)
        log.info(
            "WiSE-FT: best α %.3g by val accuracy (table in %s)", best, run_dir / "wise_ft.csv"
        )
        return result


def _log(trainer: L.Trainer, out: dict[str, Any]) -> None:
    """``ood/<name>/<metric>``, ``drift/cka`` and ``wise_ft/best_alpha`` to every logger."""
    scalars = {
        f"ood/{name}/{key}": value
        for name, metrics in out.get("ood", {}).items()
        for key, value in metrics.items()
    }
    scalars["drift/cka"] = out["drift"]["cka"]
    if "wise_ft" in out:
        scalars["wise_ft/best_alpha"] = out["wise_ft"]["best_alpha"]
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=trainer.global_step)
        logger.save()
