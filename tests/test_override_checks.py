"""A misspelled option or key in any config group: one line naming the closest valid name,
exit 2, nothing written; valid overrides (also ones only Hydra knows) pass. Through the real
train.py, before torch is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT
from warm_cli import run_cli_warm

# override -> the one line
TYPOS = {
    "model=test_cn": "model=test_cn is not a model option: did you mean model=test_cnn?",
    "freeze=gradul": "freeze=gradul is not a freeze option: did you mean freeze=gradual?",
    "logger=[csv,tensorbord]": "logger=tensorbord is not a logger option: did you mean "
    "logger=tensorboard?",
    "data.batchsize=8": "data.batchsize is not a key of data=mnist: did you mean data.batch_size?",
    "data.batch_sise=8": "data.batch_sise is not a key of data=mnist: did you mean "
    "data.batch_size?",
    "optimizer.lrr=0.1": "optimizer.lrr is not a key of optimizer=adamw: did you mean "
    "optimizer.lr?",
    "module.head.dropot=0.1": "module.head.dropot is not a key of module.head: did you mean "
    "module.head.dropout?",
    "faults.check_evry=3": "faults.check_evry is not a key of faults: did you mean "
    "faults.check_every?",
    "sed=1": "sed is not a key of the config: did you mean seed?",
}


@pytest.mark.parametrize("override, line", TYPOS.items(), ids=TYPOS)
def test_a_typo_gets_one_line_with_the_closest_name(tmp_path, override, line):
    done = run_cli_warm("train.py", override, run_dir=tmp_path / "run")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert lines == [f"error: {line}"], done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


VALID = ["model=test_cnn", "data.batch_size=8", "data=digits", "+data.ood=[mnist]", "seed=3"]


def test_valid_overrides_pass():
    cmd = [sys.executable, str(ROOT / "train.py"), *VALID, "--cfg", "job"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batch_size: 8" in done.stdout
