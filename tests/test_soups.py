"""``ftlab-soup`` on a real three-job multirun of train.py: the uniform soup is the jobs' mean,
the greedy soup keeps only what does not lower val accuracy, eval.py reads the soup checkpoint,
failed jobs are skipped and counted, and a job of another model is named and refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli

from ftlab.checkpoints import load_checkpoint
from ftlab.sweeps.soups import main

pytestmark = pytest.mark.slow

JOB = [*FAST, "freeze=none", "data.ood=[gaussian_noise:3]"]
LRS = "optimizer.lr=3e-3,1e-2,3e-2"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Three jobs that differ in lr only, plus a failed job's directory."""
    root = tmp_path_factory.mktemp("sweep")
    done = run_cli("train.py", "-m", *JOB, LRS, f"hydra.sweep.dir={root}", run_dir=root)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = root / "3"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    return root


def _weights(job: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(read_metrics(job)["best_checkpoint"])["state_dict"]


def _val_acc(job: Path) -> float:
    return read_metrics(job)["val"]["acc"]


def test_uniform_soup_is_the_mean_of_the_jobs_and_eval_reads_it(sweep, capsys):
    assert main([str(sweep), "--recipe", "uniform"]) == 0
    result = json.loads((sweep / "soup_uniform.json").read_text())
    jobs = sorted(["0", "1", "2"], key=lambda j: -_val_acc(sweep / j))  # stable: sweep order
    assert result["ingredients"] == jobs
    assert result["skipped"] == {"3": "failed"}
    soup = load_checkpoint(result["checkpoint"])
    states = [_weights(sweep / j) for j in jobs]
    for key, value in soup["state_dict"].items():
        if value.is_floating_point():
            mean = torch.stack([s[key].double() for s in states]).mean(0).float()
            torch.testing.assert_close(value, mean, rtol=1e-6, atol=1e-7)
    assert soup["soup"] == {"recipe": "uniform", "jobs": jobs}
    # The best job, rescored on the same batches, gives its own metrics.json numbers.
    best = read_metrics(sweep / jobs[0])
    assert result["best_job"]["job"] == jobs[0]
    for stage in ("val", "test"):
        assert result["best_job"][stage]["acc"] == pytest.approx(best[stage]["acc"], abs=1e-6)
    assert result["best_job"]["gaussian_noise_3"]["acc"] == pytest.approx(
        best["ood"]["gaussian_noise_3"]["acc"], abs=1e-6
    )
    assert set(result["soup"]) == {"val", "test", "gaussian_noise_3"}
    assert result["gain"]["test"] == pytest.approx(
        result["soup"]["test"]["acc"] - result["best_job"]["test"]["acc"]
    )
    assert "| soup − best |" in (sweep / "soup_uniform.md").read_text()

    # eval.py reads the soup checkpoint and scores the same test batches.
    run = sweep.parent / "eval_soup"
    data = [o for o in FAST if o.startswith(("data.", "trainer.limit", "trainer.acc"))]
    done = run_cli(
        "eval.py", f"ckpt_path={result['checkpoint']}", "data=digits", *data, run_dir=run
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(run)["test"]["acc"] == pytest.approx(result["soup"]["test"]["acc"])


def test_greedy_soup_keeps_only_what_does_not_lower_val_accuracy(sweep):
    assert main([str(sweep), "--recipe", "greedy"]) == 0
    result = json.loads((sweep / "soup_greedy.json").read_text())
    order = sorted(["0", "1", "2"], key=lambda j: -_val_acc(sweep / j))
    assert result["ingredients"][0] == order[0]
    assert [s["job"] for s in result["greedy"]] == order[1:]
    soup_val = result["best_job"]["val"]["acc"]
    for step in result["greedy"]:
        assert step["kept"] == (step["soup_val_acc"] >= soup_val)
        soup_val = step["soup_val_acc"] if step["kept"] else soup_val
    kept = [order[0]] + [s["job"] for s in result["greedy"] if s["kept"]]
    assert result["ingredients"] == kept
    assert result["soup"]["val"]["acc"] == pytest.approx(soup_val)
    assert result["soup"]["val"]["acc"] >= result["best_job"]["val"]["acc"]
    soup = load_checkpoint(result["checkpoint"])["state_dict"]
    states = [_weights(sweep / j) for j in kept]
    key = next(k for k, v in soup.items() if v.is_floating_point() and k.startswith("head"))
    mean = torch.stack([s[key].double() for s in states]).mean(0).float()
    torch.testing.assert_close(soup[key], mean, rtol=1e-6, atol=1e-7)


def test_a_job_of_another_model_is_named_and_refused(sweep, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed, ignore=shutil.ignore_patterns("soup_*"))
    other = run_cli("train.py", *JOB, "model=test_vit", run_dir=mixed / "4")
    assert other.returncode == 0, other.stderr[-3000:]
    done = subprocess.run(
        [sys.executable, "-m", "ftlab.sweeps.soups", str(mixed), "--recipe", "uniform"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: job 4 differs from job ")
    assert "in model (timm:test_vit vs timm:test_resnet)" in lines[0]
    assert not list(mixed.glob("soup_*"))
