"""What ``train`` evaluates around ``trainer.fit``: OOD sets, WiSE-FT and drift.

Each of the three shows its progress as training does (:class:`ftlab.progress.Progress`): a bar
over its batches in a terminal, a line every ``LOG_EVERY_S`` seconds elsewhere, and in both one
log line per finished part (an OOD set, the drift, an α) with its result and duration.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ftlab.data.base import ClassificationDataModule
from ftlab.errors import FtlabError
from ftlab.evaluation.drift import linear_cka, merged_state, weight_change
from ftlab.evaluation.loop import Limit, batch_limit, evaluate, feature_batches, pooled_features
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
from ftlab.module import Classifier, FinetuneModule
from ftlab.progress import Progress

log = logging.getLogger("ftlab")

EvalSet = tuple[str, str, Any, Limit]  # (section: val | test | ood, name, loader, limit)
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

    def __init__(
        self,
        module: FinetuneModule,
        data: ClassificationDataModule,
        ood: list[Any] | None = None,
        alphas: list[float] | None = None,
        save_best: bool = False,
        test: bool = True,
        seed: int = 0,
    ) -> None:
        """``ood``: the ``data.ood`` items (ftlab.evaluation.ood); ``alphas``: WiSE-FT's
        (``wise_ft.alphas``, None: off), ``save_best`` writes the best α's checkpoint; ``test``:
        whether the run tests; ``seed``: of the shifted OOD sets."""
        self.module, self.data = module, data
        self.pretrained = snapshot(module.backbone)
        self.alphas = check_alphas(alphas)
        self.save_best = bool(save_best)
        self.test = bool(test)
        if ood:  # accuracy on shifted sets: the task says whether it means anything
            module.task.require("ood", "data.ood")
        if self.alphas:
            module.task.require("wise_ft", "wise_ft.alphas")
        if (ood or self.alphas) and not isinstance(module, Classifier):
            raise FtlabError(
                "data.ood and wise_ft.alphas score single-label classifiers; "
                f"{type(module).__name__} is not one (ftlab.module.Classifier): drop them for it"
            )
        self.ood_sets = build_ood_sets(ood, data, module.backbone.input_spec, int(seed))

    def after_fit(self, trainer: L.Trainer, run_dir: Path) -> dict[str, Any]:
        """OOD metrics, drift and WiSE-FT (rank 0 only); writes the CSV, figures and checkpoint
        into ``run_dir`` and logs the scalars to the trainer's loggers."""
        if not trainer.is_global_zero:
            return {}
        module = self.module.to(trainer.strategy.root_device)
        finetuned = snapshot(module.backbone)
        out: dict[str, Any] = {}
        if self.ood_sets:
            out["ood"] = self._ood(trainer)
        out["drift"] = self._drift(trainer, finetuned)
        plot_drift(out["drift"]["weight_change"], out["drift"]["cka"], run_dir / "drift.png")
        if self.alphas:
            out["wise_ft"] = self._wise_ft(trainer, finetuned, run_dir)
        _log(trainer, out)
        return out

    def _sets(self, trainer: L.Trainer, val_test: bool = True) -> list[EvalSet]:
        """What a score evaluates: val and test (when the run tests), then every OOD set."""
        sets: list[EvalSet] = []
        if val_test:
            sets.append(("val", "val", self.data.val_dataloader(), trainer.limit_val_batches))
            if self.test:
                test = self.data.test_dataloader()
                sets.append(("test", "test", test, trainer.limit_test_batches))
        sets += [("ood", s.name, s.loader, trainer.limit_test_batches) for s in self.ood_sets]
        return sets

    def _score(
        self, trainer: L.Trainer, sets: list[EvalSet], progress: Progress, label: str = ""
    ) -> dict[str, Any]:
        """Metrics of the module as it is now on ``sets``: ``{val, test, ood: {name: ...}}``."""
        scores: dict[str, Any] = {"ood": {}}
        for section, name, loader, limit in sets:
            progress.step(f"{label}{name}")
            metrics = evaluate(
                self.module,
                loader,
                self.data.num_classes,
                limit,
                trainer.precision_plugin,
                on_batch=progress.advance,
            )
            if section == "ood":
                scores["ood"][name] = metrics
            else:
                scores[section] = metrics
        return scores

    def _ood(self, trainer: L.Trainer) -> dict[str, dict[str, float]]:
        """Accuracy, F1 and loss on each OOD set, one log line per set."""
        sets = self._sets(trainer, val_test=False)
        scores: dict[str, dict[str, float]] = {}
        with Progress("OOD sets", total=_batches(sets)) as progress:
            for index, one in enumerate(sets, start=1):
                started = time.perf_counter()
                name = one[1]
                scores[name] = self._score(trainer, [one], progress)["ood"][name]
                log.info(
                    "OOD set %d/%d %s: acc %.4f, f1 %.4f, loss %.4f (%.1f s)",
                    index,
                    len(sets),
                    name,
                    scores[name]["acc"],
                    scores[name]["f1"],
                    scores[name]["loss"],
                    time.perf_counter() - started,
                )
        return scores

    def _drift(self, trainer: L.Trainer, finetuned: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Weight change per layer group and feature CKA, pretrained vs fine-tuned."""
        backbone = self.module.backbone
        loader, limit = self.data.val_dataloader(), trainer.limit_val_batches
        started = time.perf_counter()

        def features(progress: Progress, which: str) -> torch.Tensor:
            progress.step(f"{which} features")
            return pooled_features(
                backbone,
                loader,
                CKA_SAMPLES,
                limit,
                trainer.precision_plugin,
                on_batch=progress.advance,
            )

        with Progress("drift", total=2 * feature_batches(loader, CKA_SAMPLES, limit)) as progress:
            weights, tuned = merged_state(backbone), features(progress, "fine-tuned")
            with loaded(backbone, self.pretrained, finetuned):
                weights0, before = merged_state(backbone), features(progress, "pretrained")
        drift = {
            "weight_change": weight_change(weights0, weights, backbone.layer_groups()),
            # CKA compares sample similarities: it needs at least two samples.
            "cka": linear_cka(before, tuned) if len(tuned) > 1 else None,
            "cka_samples": len(tuned),
        }
        cka = "n/a" if drift["cka"] is None else f"{drift['cka']:.4f}"
        log.info(
            "drift: CKA %s over %d val samples, weight change of %d layer groups (%.1f s)",
            cka,
            len(tuned),
            len(drift["weight_change"]),
            time.perf_counter() - started,
        )
        return drift

    def _wise_ft(
        self, trainer: L.Trainer, finetuned: dict[str, torch.Tensor], run_dir: Path
    ) -> dict[str, Any]:
        backbone = self.module.backbone
        sets, count, index = self._sets(trainer), len(self.alphas), itertools.count(1)
        with Progress("WiSE-FT", total=count * _batches(sets)) as progress:

            def score(alpha: float) -> dict[str, Any]:
                started = time.perf_counter()
                result = self._score(trainer, sets, progress, label=f"α={alpha:g} ")
                log.info(
                    "WiSE-FT α=%g (%d/%d): %s (%.1f s)",
                    alpha,
                    next(index),
                    count,
                    _accuracies(result),
                    time.perf_counter() - started,
                )
                return result

            rows = sweep(backbone, self.pretrained, finetuned, self.alphas, score)
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


def _batches(sets: list[EvalSet]) -> int:
    """The batches a score over ``sets`` reads (within the trainer's limits)."""
    return sum(batch_limit(limit, len(loader)) for _, _, loader, limit in sets)


def _accuracies(scores: dict[str, Any]) -> str:
    """``val acc 0.91, test acc 0.90, gaussian_noise_3 acc 0.42`` from a score."""
    named = [(key, scores[key]) for key in ("val", "test") if key in scores]
    named += list(scores["ood"].items())
    return ", ".join(f"{name} acc {metrics['acc']:.4f}" for name, metrics in named)


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
