"""A refused resume changes no file of the run; a resume must match the run's start; a
completed run is read-only for resume; a resumed run appends to its CSV log. Real train.py runs."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from conftest import FAST, read_metrics, run_cli

from ftlab.errors import FtlabError
from ftlab.run_record import check_resume_matches, start_record, write_record


def snapshot(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def csv_steps(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [float(row["step"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A run killed after its last checkpoint: checkpoints and logs, no metrics.json."""
    run_dir = tmp_path_factory.mktemp("killed")
    done = run_cli("train.py", *FAST, run_dir=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir / "metrics.json").unlink()
    return run_dir


# (overrides of the refused resume, what the one line names)
REFUSED = {
    "another model": (["model=test_vit"], "model=test_cnn, not test_vit"),
    "other data": (["data=mnist"], "data=digits, not mnist"),
    "another batch size and lr": (
        ["data.batch_size=8", "optimizer.lr=0.1"],
        "data.batch_size=16, not 8; optimizer.lr=0.0003, not 0.1",
    ),
    "another schedule": (["freeze=linear_probe"], "freeze=gradual, not linear_probe"),
    "another module": (["module.label_smoothing=0.3"], "module.label_smoothing=0.0, not 0.3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, names", REFUSED.values(), ids=REFUSED)
def test_a_refused_resume_changes_no_file_and_names_what_differs(killed_run, overrides, names):
    before = snapshot(killed_run)
    done = run_cli("train.py", *FAST, *overrides, "resume=true", run_dir=killed_run)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: resume=true: hydra.run.dir={killed_run} was started with")
    assert names in lines[0], lines[0]
    assert snapshot(killed_run) == before  # .hydra/, csv/, checkpoints, .lock: all as they were


@pytest.mark.slow
def test_a_resume_appends_to_the_csv_log_and_a_completed_run_is_read_only(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli("train.py", *FAST, run_dir=run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir / "metrics.json").unlink()  # killed after its last save
    steps = csv_steps(run_dir)
    longer = run_cli("train.py", *FAST, "trainer.max_epochs=3", "resume=true", run_dir=run_dir)
    assert longer.returncode == 0, longer.stderr[-3000:]  # max_epochs may change on resume
    assert "will be deleted" not in (run_dir / "train.log").read_text()
    after = csv_steps(run_dir)
    assert after[: len(steps)] == steps and max(after) > max(steps)  # old rows kept, new added
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"

    before = snapshot(run_dir)
    again = run_cli("train.py", *FAST, "trainer.max_epochs=3", "resume=true", run_dir=run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, again.stderr
    assert lines[0].startswith(f"resume=true: the run in {run_dir} has completed (val/acc ")
    assert snapshot(run_dir) == before  # its metrics, logs and .hydra/ untouched


def test_resume_match_rules(tmp_path):
    started = start_record(
        {"seed": 0, "data": {"batch_size": 16}, "trainer": {"max_epochs": 2, "devices": 1}},
        {"model": "test_cnn", "logger": "csv", "hydra/launcher": "basic"},
    )
    write_record(tmp_path, started)
    same = start_record(
        {"seed": 0, "data": {"batch_size": 16}, "trainer": {"max_epochs": 5, "devices": 1}},
        {"model": "test_cnn", "logger": "tensorboard", "hydra/launcher": "slurm"},
    )
    check_resume_matches(tmp_path, same)  # longer, another logger and launcher: accepted
    other = start_record(
        {"seed": 1, "data": {"batch_size": 16}, "trainer": {"max_epochs": 2, "devices": 2}},
        {"model": "test_cnn"},
    )
    with pytest.raises(FtlabError, match=r"seed=0, not 1; trainer\.devices=1, not 2"):
        check_resume_matches(tmp_path, other)
