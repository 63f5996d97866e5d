"""The task seam (ftlab.tasks): multilabel and regression runs next to classification, their
splits, records, metrics and after-fit refusals, with real tiny models and the digits."""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, read_metrics, run_cli

from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.data.splits import Fractions, label_set_split, quantile_split
from ftlab.errors import FtlabError
from ftlab.tasks import TASKS, build_task
from ftlab.train import train

FRACTIONS = Fractions(0.15, 0.15)


def test_the_multilabel_split_keeps_every_label_in_every_part_or_says_why(caplog) -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(np.float32)
    targets[:, 3] = 0
    targets[[5, 17, 40], 3] = 1  # three positives: one per part, moved there if need be
    parts, missing = label_set_split(targets, FRACTIONS, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(200))
    for name, idx in parts.items():
        assert targets[idx].any(axis=0).all(), name
    assert missing == []
    targets[[17, 40], 3] = 0  # one positive cannot be in three parts: one line says so
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        build_task("multilabel").split(targets, FRACTIONS, 0)
    assert "label 3 has 1 positive samples: none in val" in caplog.text


def test_the_regression_split_spans_the_range_of_values() -> None:
    values = np.arange(1000, dtype=np.float32)
    parts = quantile_split(values, FRACTIONS, seed=0)
    for idx in parts.values():  # every decile in every part
        assert len(np.unique((values[idx] // 100).astype(int))) == 10


def test_tasks_refuse_bad_options_and_other_targets_in_one_line() -> None:
    assert TASKS.names() == ["causal_lm", "classification", "multilabel", "regression"]
    with pytest.raises(FtlabError, match="did you mean task=regression"):
        build_task("regresion")
    with pytest.raises(FtlabError, match=r"task\.loss=l1 is not a regression loss"):
        build_task({"name": "regression", "loss": "l1"})
    with pytest.raises(FtlabError, match="task=multilabel takes a float multi-hot vector"):
        build_task("multilabel").check_targets(torch.tensor(3), 3, "data=DigitsDataModule")
    with pytest.raises(FtlabError, match="for multi-hot labels use task=multilabel"):
        build_task("classification").split(np.zeros((9, 3)), FRACTIONS, 0)  # the newcomer's crash
    with pytest.raises(FtlabError, match=r"data\.ood: ood is not defined for task=regression"):
        build_task("regression").require("ood", "data.ood")


def test_a_multilabel_run_trains_checkpoints_and_evaluates(make_cfg, tmp_path) -> None:
    value = train(make_cfg(*FAST, "task=multilabel", "data=digits_multilabel", "task.pos_weight=2"))
    assert read_metrics(tmp_path)["data"]["target"].endswith("DigitsMultilabelDataModule")
    metrics = read_metrics(tmp_path)
    assert set(metrics["val"]) == {"loss", "f1", "map", "auroc"}
    assert metrics["optimized_metric"] == {"name": "val/map", "value": value}
    assert 0 < metrics["val"]["map"] <= 1 and 0 <= metrics["test"]["auroc"] <= 1
    # The best checkpoint's validation after fit logs as best/val/*, not as a third epoch.
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len([r for r in rows if r.get("val/map")]) == 2  # trainer.max_epochs=2
    (best,) = [r for r in rows if r.get("best/val/map")]
    assert float(best["best/val/map"]) == pytest.approx(value)
    ckpt = load_checkpoint(metrics["best_checkpoint"])
    record = ckpt["ftlab"]
    assert record.classes == ["even", "gt4", "prime"]
    assert record.task == {"name": "multilabel", "options": {"pos_weight": 2.0, "threshold": 0.5}}
    module, _ = restore_module(ckpt, metrics["best_checkpoint"])
    assert module.task.pos_weight == 2.0  # the loss it was trained with comes back
    outputs = module(torch.zeros(2, 3, 32, 32))
    assert outputs.shape == (2, 3)


@pytest.mark.slow
def test_a_regression_run_fits_its_head_by_lbfgs_on_cached_features_and_evals(tmp_path) -> None:
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py", "task=regression", "data=digits_value", "model=test_cnn",
        "data.image_size=32", "freeze.until=1", "trainer.max_epochs=2", "trainer=cpu",
        "trainer.limit_test_batches=2", f"paths.cache_dir={tmp_path}/cache",
        run_dir=run_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert set(metrics["val"]) == {"loss", "mae", "r2"}
    assert metrics["optimized_metric"]["name"] == "val/mae"
    # The checkpoint kept the lowest val/mae (mode min), and eval.py rebuilds the regressor.
    solver = metrics["feature_cache"]["head_solver"]
    assert solver["loss_after"] < 0.5 * solver["loss_before"], solver
    assert metrics["val"]["mae"] < 2.5  # a constant 4.5 is off by 2.5
    evaluated = run_cli(
        "eval.py", f"ckpt_path={metrics['best_checkpoint']}", "data=digits_value",
        "data.image_size=32", "trainer.limit_test_batches=2", run_dir=tmp_path / "eval",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert read_metrics(tmp_path / "eval")["test"]["mae"] == pytest.approx(
        metrics["test"]["mae"], abs=1e-5
    )
    refused = run_cli(
        "train.py", "task=regression", "data=digits_value", "model=test_cnn",
        "data.ood=[blur:2]", run_dir=tmp_path / "ood",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "data.ood: ood is not defined for task=regression" in refused.stderr


def _docs_module() -> str:
    """The module docs/tasks.md shows under "Your own module", as written there."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    section = page[page.index("## Your own module") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_docs_own_module_trains_saves_its_hyperparameters_and_loads_back(tmp_path) -> None:
    """The newcomer's multi-label BCE digits module, exactly as the docs show it: a plain
    save_hyperparameters() in it, load_from_checkpoint gives the saved pos_weight back (a value
    passed wins), and a metric it never logs is refused before training."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(_docs_module())
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = [
        "module=custom", "module._target_=mypkg.EvenBigPrime", "+module.pos_weight=2.0",
        *FAST, "data=digits_multilabel", "task=multilabel", "trainer.max_epochs=1",
    ]  # fmt: skip
    refused = run_cli("train.py", *run, run_dir=tmp_path / "refused", env=env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert (
        "optimized_metric=val/map is not among this module's metrics val/loss, val/f1: "
        "set optimized_metric=val/f1" in refused.stderr
    )
    assert not (tmp_path / "refused" / "checkpoints").exists()  # refused before training
    done = run_cli("train.py", *run, "optimized_metric=val/f1", run_dir=tmp_path / "run", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert set(metrics["val"]) == {"loss", "f1"}
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved == {"pos_weight": 2.0, "num_classes": 3, "classes": ["even", "gt4", "prime"]}

    sys.path.insert(0, str(tmp_path))
    try:
        from mypkg import EvenBigPrime

        loaded = EvenBigPrime.load_from_checkpoint(ckpt_path)
        assert loaded.hparams.pos_weight == 2.0 and loaded.task.name == "multilabel"
        assert (
            EvenBigPrime.load_from_checkpoint(ckpt_path, pos_weight=3.0).hparams.pos_weight == 3.0
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mypkg", None)
