"""A search-space key that is no key of the run is refused in one line before the study (or
anything in the sweep directory) is created, so the corrected command starts cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, ROOT

TINY = [o for o in FAST if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", *TINY]
    cmd += ["hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep_dir}", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_bogus_search_key_leaves_no_study_and_the_corrected_command_runs(tmp_path):
    sweep_dir = tmp_path / "study"
    bogus = sweep(sweep_dir, "optimizer.lrr=interval(0.01,0.1)")
    assert bogus.returncode == 2, bogus.stderr[-3000:]
    lines = [x for x in bogus.stderr.splitlines() if x.strip()]
    assert lines == [
        "error: hydra.sweeper.params: optimizer.lrr is not a key of optimizer=adamw: "
        "did you mean optimizer.lr?"
    ], bogus.stderr[-3000:]
    assert not sweep_dir.exists()  # no optuna.db, no multirun.yaml, no trial

    fixed = sweep(sweep_dir, "optimizer.lr=interval(0.01,0.1)")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert (sweep_dir / "optuna.db").is_file() and (sweep_dir / "0" / "metrics.json").is_file()
