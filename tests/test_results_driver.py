"""benchmarks/results.py, the README results' driver, on a tiny plan of real runs: every
strategy's grid at the tuning seed, the best val/acc rerun at fresh seeds, the report's tuning
table, budget check, soup and findings; resuming; and the two-stage (surgical) path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow

TINY = [
    "model=test_cnn",
    "data.image_size=32",
    "data.batch_size=16",
    "data.max_train_samples=48",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
]


def drive(plan: dict, tmp_path: Path, name: str = "tiny") -> subprocess.CompletedProcess:
    plan_file = tmp_path / f"{name}.yaml"
    plan_file.write_text(yaml.safe_dump(plan, sort_keys=False))
    command = [sys.executable, "benchmarks/results.py", str(plan_file)]
    command += ["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def overrides(job: Path) -> dict[str, str]:
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in items)


def test_each_strategy_is_tuned_on_val_then_rerun_at_fresh_seeds(tmp_path: Path) -> None:
    plan = {
        "epochs": 2,
        "overrides": [*TINY, "data=digits", "data.ood=[gaussian_noise:3]"],
        "tune_seeds": [0],
        "final_seeds": [1, 2],
        "tune_overrides": ["wise_ft.alphas=null"],
        "columns": ["test/acc", "ood/*/acc"],
        "wise_ft": True,
        "plateau": "full",
        "soup": "full",
        "strategies": {
            "linear_probe": {"grid": {"optimizer.lr": [1e-3, 1e-1]}},
            "full": {"grid": {"optimizer.lr": [1e-4, 1e-2]}},
            "lp_ft": {"grid": {"optimizer.lr": [1e-3], "freeze.ft_lr_scale": [0.1, 1.0]}},
        },
    }
    done = drive(plan, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs, report = tmp_path / "runs", tmp_path / "report"
    tuning = pd.read_csv(report / "tuning.csv").set_index("strategy")
    for name, spec in plan["strategies"].items():
        tuned = [d for d in (runs / "tune" / name).iterdir() if (d / "metrics.json").exists()]
        tuned.sort(key=lambda d: int(d.name))  # grid order: a tie goes to the first
        keys = list(spec["grid"])
        assert len(tuned) == len(pd.MultiIndex.from_product(spec["grid"].values()))
        # The choice is the tuning job with the best val/acc, read here from its own files.
        best = max(tuned, key=lambda d: metrics(d)["val"]["acc"])
        chosen = {k: overrides(best)[k] for k in keys}
        assert tuning.loc[name, "chosen"] == " ".join(f"{k}={v}" for k, v in chosen.items())
        assert tuning.loc[name, "tune_jobs"] == len(tuned)
        wall = sum(metrics(d)["wall_time_s"] for d in tuned) / 3600
        assert tuning.loc[name, "tune_cpu_h"] == pytest.approx(wall, abs=1e-3)
        finals = sorted((runs / "final").glob(f"{name}_*"))
        assert sorted(overrides(d)["seed"] for d in finals) == ["1", "2"]  # fresh seeds only
        for job in finals:
            assert {k: overrides(job)[k] for k in keys} == chosen
            assert metrics(job)["status"] == "completed"
            assert not (job / "checkpoints").exists()  # dropped: ~70 jobs would fill a disk
    text = (report / "report.md").read_text()
    assert "## Tuning: the grid, the choice and the search's cost" in text
    assert "## Budget check: does the chosen full fine-tuning plateau?" in text
    assert "(4 instead of 2" in text  # twice the epochs
    assert "epoch 4/4" in (runs / "plateau" / "0" / "train.log").read_text()
    assert "## Greedy soup of the `full` tuning sweep" in text
    assert "## Provenance" in text and "benchmarks/results.py" in text
    verdicts = {f["name"]: f["verdict"] for f in json.loads((report / "findings.json").read_text())}
    assert set(verdicts) == {"lp_ft", "wise_ft", "soups"}
    assert all(v != "not run" for v in verdicts.values())
    assert (report / "effective_robustness.png").stat().st_size > 10_000
    assert (runs / "final" / "soup_greedy_full.json").exists()  # the plot's soup point
    # Only the soups' tuning sweeps keep their checkpoints.
    assert list((runs / "tune" / "full").glob("*/checkpoints/*.ckpt"))
    assert not list((runs / "tune" / "linear_probe").glob("*/checkpoints"))

    # Rerun into the same folder: every step is done, so no job runs again.
    stamps = {p: p.stat().st_mtime for p in runs.rglob("metrics.json")}
    again = drive(plan, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in runs.rglob("metrics.json")} == stamps


def test_two_stage_plan_adapts_the_source_model_per_target(tmp_path: Path) -> None:
    plan = {
        "epochs": 2,
        "overrides": [*TINY, "data=mnist_target"],
        "source": [*TINY, "data=mnist", "freeze=none", "seed=0"],
        "targets": {"permuted_labels": ["data.permute_labels=true"]},
        "tune_seeds": [0],
        "final_seeds": [1, 2],
        "columns": ["test/acc"],
        "strategies": {
            "head": {"strategy": "linear_probe", "grid": {"optimizer.lr": [1e-2]}},
            "last_block": {
                "strategy": "surgical",
                "overrides": ["freeze.blocks=[last]"],
                "grid": {"optimizer.lr": [1e-3, 1e-2]},
            },
        },
    }
    done = drive(plan, tmp_path, "two_stage")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs, report = tmp_path / "runs", tmp_path / "report"
    source = runs / "source" / "0" / "checkpoints"
    for job in (runs / "permuted_labels" / "final").glob("*_[0-9]"):
        init_from = overrides(job)["model.init_from"]
        assert Path(init_from).parent == source
        assert overrides(job)["data.permute_labels"].lower() == "true"
    text = (report / "report.md").read_text()
    assert "| permuted_labels | output |" in text
    finding = json.loads((report / "findings.json").read_text())[0]
    assert finding["name"] == "surgical" and finding["verdict"] != "not run"
    assert (report / "permuted_labels" / "report.md").exists()
