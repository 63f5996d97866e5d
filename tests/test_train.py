"""End-to-end runs through ``train``/``evaluate`` and the CLI, with real models and data."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import FAST, read_metrics, run_cli
from PIL import Image

from ftlab.train import train

REQUIRED_KEYS = {
    "status",
    "val",
    "test",
    "best_checkpoint",
    "wall_time_s",
    "trainable_params",
    "total_params",
}


def check_metrics(run_dir: Path) -> dict:
    metrics = read_metrics(run_dir)
    assert metrics.keys() >= REQUIRED_KEYS
    assert metrics["status"] == "completed"
    assert {"acc", "f1", "loss"} <= metrics["val"].keys() and {"acc", "f1"} <= metrics[
        "test"
    ].keys()
    assert 0 <= metrics["test"]["acc"] <= 1 and metrics["wall_time_s"] > 0
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert Path(metrics["best_checkpoint"]).is_file()
    return metrics


def test_train_writes_metrics_checkpoints_and_logs(make_cfg, tmp_path):
    value = train(make_cfg(*FAST, "freeze=gradual"))
    metrics = check_metrics(tmp_path)
    assert value == metrics["val"]["acc"] == metrics["optimized_metric"]["value"]
    assert [p["unfrozen"] for p in metrics["phases"]] == [["head"], ["layer4.0"]]
    assert metrics["phases"][1]["trainable_params"] > metrics["phases"][0]["trainable_params"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {
        "val/acc",
        "val/f1",
        "train/loss_epoch",
        "ftlab/phase",
        "ftlab/trainable_params",
    } <= logged


def test_optimized_metric_is_configurable(make_cfg, tmp_path):
    value = train(make_cfg(*FAST, "optimized_metric=val/loss", "optimized_mode=min"))
    assert value == pytest.approx(read_metrics(tmp_path)["val"]["loss"])


@pytest.mark.slow  # EfficientNet-Lite0, 20 steps at 64 px
def test_real_pretrained_backbone_fine_tunes(make_cfg, tmp_path):
    """EfficientNet-Lite0 with its packaged ImageNet weights on real MNIST, a few batches."""
    cfg = make_cfg(
        "model=efficientnet_lite0",
        "data=mnist",
        "data.image_size=64",
        "freeze=linear_probe",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=5",
        "trainer.limit_test_batches=5",
        "optimizer.lr=3e-3",
    )
    train(cfg)
    metrics = check_metrics(tmp_path)
    # 20 steps of a linear probe on ImageNet features already separate digits well above chance.
    assert metrics["val"]["acc"] > 0.5
    assert metrics["trainable_params"] == 1280 * 10 + 10


def make_image_tree(root: Path, classes=("cat", "dog", "fox"), n=12) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 60, (24, 24, 3)) + 60 * k  # classes differ in brightness
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.jpg")
    return root


def test_image_folder_run(make_cfg, tmp_path):
    root = make_image_tree(tmp_path / "images")
    overrides = [o for o in FAST if not o.startswith("data")]
    train(
        make_cfg(
            *overrides,
            "data=image_folder",
            f"data.root={root}",
            "data.image_size=32",
            "data.batch_size=8",
            "data.val_fraction=0.25",
            "data.test_fraction=0.25",
        )
    )
    metrics = check_metrics(tmp_path)
    assert metrics["data"]["num_classes"] == 3


@pytest.mark.slow  # MiniLM
def test_text_csv_run(make_cfg, tmp_path):
    path = tmp_path / "reviews.csv"
    words = {"pos": "great lovely superb fine", "neg": "awful bad terrible poor"}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(40):
            label = "pos" if i % 2 else "neg"
            writer.writerow([f"{words[label]} movie number {i}", label])
    train(
        make_cfg(
            *[o for o in FAST if not o.startswith(("data", "model"))],
            "model=minilm",
            "data=text_csv",
            f"data.path={path}",
            "data.text_column=review",
            "data.label_column=sentiment",
            "data.max_length=16",
            "data.batch_size=8",
            "freeze=linear_probe",
        )
    )
    metrics = check_metrics(tmp_path)
    assert metrics["data"]["num_classes"] == 2


class AutocastProbe(L.Callback):
    """Records the precision the Trainer ran with and, at every forward of the module, whether
    CPU autocast was on, its dtype and the logits' dtype (training and evaluation apart)."""

    runs: ClassVar[list[AutocastProbe]] = []

    def __init__(self) -> None:
        self.precision: str | None = None
        self.forwards: set[tuple[str, bool, torch.dtype, torch.dtype]] = set()
        AutocastProbe.runs.append(self)

    def on_fit_start(self, trainer, pl_module):
        self.precision = trainer.precision
        pl_module.register_forward_hook(self._record)  # stays on for validate and test after fit

    def _record(self, module, args, logits):
        stage = "train" if module.training else "eval"
        dtype = torch.get_autocast_dtype("cpu")
        self.forwards.add((stage, torch.is_autocast_enabled("cpu"), dtype, logits.dtype))


def test_bf16_mixed_precision_on_cpu(make_cfg, tmp_path):
    AutocastProbe.runs.clear()
    probe = "+callbacks.autocast._target_=test_train.AutocastProbe"
    train(make_cfg(*FAST, "trainer.precision=bf16-mixed", "freeze=none", probe))
    check_metrics(tmp_path)
    (run,) = AutocastProbe.runs
    assert run.precision == "bf16-mixed"
    # Every forward, training and evaluation, ran under CPU autocast to bfloat16.
    bf16 = torch.bfloat16
    assert run.forwards == {("train", True, bf16, bf16), ("eval", True, bf16, bf16)}
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["trainer.precision"] == "bf16-mixed"  # what the loggers recorded


@pytest.mark.slow  # wandb starts its service process
def test_wandb_logs_offline_without_an_api_key(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials either
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(make_cfg(*FAST, "logger=[csv,wandb]"))
    check_metrics(tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_every_logger_records_the_run_settings(make_cfg, tmp_path, monkeypatch):
    """W&B's config and TensorBoard's and the CSV logger's hparams hold the resolved settings
    (flat keys, the chosen config groups, the schedule); TensorBoard's HPARAMS also the final
    metrics. Each was {} before."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(
        make_cfg(*FAST, "logger=[csv,tensorboard,wandb]", "strategy=gradual", "optimizer.lr=0.002")
    )
    metrics = check_metrics(tmp_path)
    expected = {
        "optimizer.lr": 0.002,
        "freeze.name": "gradual",
        "choice.strategy": "gradual",
        "choice.model": "test_cnn",
        "data.batch_size": 16,
    }
    for logger in ("csv", "tensorboard"):
        hparams = yaml.safe_load((tmp_path / logger / "hparams.yaml").read_text())
        assert hparams.items() >= expected.items(), (logger, hparams)
        assert hparams["schedule.phases"] >= 2
    # wandb 0.31 keeps an offline run's config only in its .wandb record log, as protobuf
    # ConfigItems: the key, then its value as JSON, a tag and a length byte or three apart.
    (log,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    blob = log.read_bytes()
    for key, value in expected.items():
        item = re.escape(key.encode()) + rb".{1,4}" + re.escape(json.dumps(value).encode())
        assert re.search(item, blob, re.S), key

    board = EventAccumulator(str(tmp_path / "tensorboard"))  # every event file in it
    board.Reload()
    assert board.PluginTagToContent("hparams")  # the HPARAMS tab's experiment and session
    # The hparams metrics are logged at step 0 (Lightning's TensorBoardLogger), beside test's own.
    (final,) = [e for e in board.Scalars("test/acc") if e.step == 0]
    assert final.value == pytest.approx(metrics["test"]["acc"])

    # Every scalar the CSV logger got, TensorBoard got too, at the same step, and nothing else
    # but those hparams metrics: metrics.json's final val and test numbers at step 0.
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    expected_scalars: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in row.items():
            if value and tag != "step":
                expected_scalars.setdefault(tag, []).append((int(row["step"]), float(value)))
    for stage in ("val", "test"):
        for key, value in metrics[stage].items():
            expected_scalars[f"{stage}/{key}"].append((0, value))
    assert {"train/loss_epoch", "val/acc", "ftlab/phase"} <= expected_scalars.keys()
    assert set(board.Tags()["scalars"]) == expected_scalars.keys()
    for tag, expected_events in expected_scalars.items():
        events = sorted((e.step, e.value) for e in board.Scalars(tag))
        expected_events.sort()
        assert [s for s, _ in events] == [s for s, _ in expected_events], tag
        assert [v for _, v in events] == pytest.approx([v for _, v in expected_events]), tag


@pytest.mark.slow  # two runs
def test_seed_makes_runs_repeatable(make_cfg, tmp_path):
    first = train(make_cfg(*FAST, "seed=3", "freeze=none"))
    loss = read_metrics(tmp_path)["val"]["loss"]
    again = train(make_cfg(*FAST, "seed=3", "freeze=none"))
    assert first == again and read_metrics(tmp_path)["val"]["loss"] == loss


def test_plan_only_prints_and_writes_a_schedule(make_cfg, tmp_path):
    assert train(make_cfg(*FAST, "plan=true", "freeze=lp_ft")) is None
    schedule = (tmp_path / "schedule.yaml").read_text()
    assert "lr_scale: 0.1" in schedule and not (tmp_path / "metrics.json").exists()
    train(make_cfg(*FAST, "freeze=schedule", f"freeze.phases={tmp_path / 'schedule.yaml'}"))
    assert [p["unfrozen"][0] for p in read_metrics(tmp_path)["phases"]] == ["head", "stem"]


# --- through the command line ------------------------------------------------------------------

FAST_CLI = [*FAST, "trainer.max_epochs=1"]


@pytest.mark.slow  # two fresh interpreters (train.py, then eval.py)
def test_eval_from_checkpoint_on_another_data_config(tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    done = run_cli("train.py", *FAST_CLI, run_dir=train_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = read_metrics(train_dir)["best_checkpoint"]
    done = run_cli(
        "eval.py",
        f"ckpt_path={ckpt}",
        "data=mnist",
        "data.image_size=32",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        run_dir=eval_dir,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = read_metrics(eval_dir)
    assert metrics["status"] == "completed" and metrics["data"].endswith("MNISTDataModule")
    assert 0 <= metrics["test"]["acc"] <= 1


@pytest.mark.ddp
def test_ddp_cpu_gradual_keeps_ranks_identical(tmp_path):
    done = run_cli(
        "train.py",
        *FAST,
        "trainer=ddp_cpu",
        "freeze=gradual",
        "trainer.max_epochs=3",
        run_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["world_size"] == 2
    assert len(metrics["rank_checksums"]) == 2
    assert len(set(metrics["rank_checksums"])) == 1
    assert len(metrics["phases"]) == 3
    for phase in metrics["phases"]:
        assert len(phase["rank_checksums"]) == 2 and len(set(phase["rank_checksums"])) == 1


class FreezeBeforeWrap(L.Callback):
    """The anti-pattern of Lightning's BaseFinetuning: freeze before DDP wraps the model."""

    def setup(self, trainer, pl_module, stage):
        for name, p in pl_module.named_parameters():
            p.requires_grad_(name.startswith("head."))


@pytest.mark.ddp
def test_ddp_divergence_is_detected_when_parameters_are_frozen_before_wrapping(tmp_path):
    """With the broken design, layers unfrozen later are never all-reduced: the check raises."""
    done = run_cli(
        "train.py",
        *FAST,
        "trainer=ddp_cpu",
        "freeze=gradual",
        "trainer.max_epochs=3",
        "+callbacks.prefreeze._target_=test_train.FreezeBeforeWrap",
        run_dir=tmp_path,
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    assert done.returncode != 0
    assert "DDP ranks hold different trainable parameters entering phase 2" in done.stderr
    assert not (tmp_path / "metrics.json").exists()


# The bad-input catalogue and its CLI checks: tests/test_errors.py.


def test_compose_only_does_not_import_torch():
    probe = (
        "import sys, runpy; sys.argv=['train.py','--cfg','job'];\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert out.stdout.strip().endswith("NO_TORCH"), out.stdout[-500:] + out.stderr[-500:]
    assert "freeze:" in out.stdout and "_target_: ftlab.backbones.build_backbone" in out.stdout


def test_metrics_json_is_never_half_written(tmp_path):
    """The file is only ever renamed into place, never written where it lies: a writer that
    truncates it there (``Path.write_text``) lets a reader see it empty or half written, and a
    crash leave it so. Python's audit hooks see every open (``open``, ``Path.write_text``,
    ``os.open``) and every ``os.replace``/``os.rename``."""
    from ftlab.outputs import write_json

    path = tmp_path / "metrics.json"
    events: list[tuple[str, str]] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            mode, flags = args[1] or "", args[2] or 0
            writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            if writes and os.path.abspath(os.fsdecode(args[0])) == str(path):
                events.append(("opened for writing", str(path)))
        elif event == "os.rename" and os.path.abspath(os.fsdecode(args[1])) == str(path):
            events.append(("renamed onto", os.fsdecode(args[0])))

    old, new = {"status": "running"}, {"status": "completed", "rows": list(range(50_000))}
    write_json(path, old)
    sys.addaudithook(audit)  # it cannot be removed; it only ever matches this test's path
    with open(path) as reader:  # a reader that opened the file before the update
        write_json(path, new)
        assert json.loads(reader.read()) == old  # an in-place write shows it the new bytes
    assert json.loads(path.read_text()) == new
    ((what, source),) = events
    assert what == "renamed onto" and Path(source).parent == tmp_path, events
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.slow  # a fresh interpreter, then 2 s of training
def test_unbounded_epochs_with_a_schedule_that_needs_no_length(tmp_path):
    """``trainer.max_epochs=-1``, stopped by ``max_time``: warmup_step gets no ``total_steps``
    (Lightning's step estimate is inf, and used to reach ``int()``); cosine is refused at
    composition (tests/test_numeric_keys.py)."""
    overrides = [o for o in FAST if not o.startswith("trainer.max_epochs")]
    done = run_cli(
        "train.py",
        *overrides,
        "freeze=none",
        "scheduler=warmup_step",
        "scheduler.interval=step",
        "trainer.max_epochs=-1",
        "trainer.max_time='00:00:00:02'",
        run_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(tmp_path)["status"] == "completed"


@pytest.mark.slow  # a fresh interpreter
def test_logger_none_with_the_default_callbacks(tmp_path):
    """Lightning refuses a LearningRateMonitor without a logger; logger=none drops it."""
    done = run_cli("train.py", *FAST, "trainer.max_epochs=1", "logger=none", run_dir=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(tmp_path)["status"] == "completed"
    assert "the lr monitor is off" in (tmp_path / "train.log").read_text()
