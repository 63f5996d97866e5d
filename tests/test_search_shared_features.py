"""Frozen features shared across a parallel sweep: two sweeper processes on one study, linear-probe
jobs with one feature cache, and exactly one job computes each split's features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

# The whole train and val splits (a partial split is never cached): 1,797 8x8 digits, tiny CNN.
PROBE = [
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=64",
    "freeze=linear_probe",
    "trainer.max_epochs=1",
    "trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
    "logger=none",
]


def test_parallel_sweep_jobs_compute_the_features_once(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", *PROBE]
    command += ["hydra.sweeper.n_trials=4", "hydra.sweeper.seeds=[0]"]
    command += [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]

    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(jobs) == 4
    caches = [json.loads(p.read_text())["feature_cache"] for p in jobs]
    assert all(c["used"] for c in caches), caches[0]["reason"]
    for split in ("train", "val"):
        sources = sorted(c["sources"][split] for c in caches)
        assert sources == ["computed", "disk", "disk", "disk"], (split, sources)
    # Both processes ran jobs: the features were shared across processes, not within one.
    study = optuna.load_study(
        study_name="test_cnn_digits", storage=f"sqlite:///{tmp_path}/sweep/optuna.db"
    )
    assert len({t.user_attrs["worker"] for t in study.trials if t.user_attrs.get("job_dirs")}) == 2
