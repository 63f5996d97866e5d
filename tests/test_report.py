"""The sweep report over synthetic job directories: rows, statistics, odd jobs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.types import RunMode
from omegaconf import OmegaConf

from ftlab.errors import FtlabError
from ftlab.sweeps import parse_override, sweep_id, wandb_context
from ftlab.sweeps.report import load_sweep, main, plot_sweep, summarize, write_report

FIXED = ["model=test_cnn", "data=digits"]


def make_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    val: dict | None = None,
    test: dict | None = None,
    error: str | None = None,
) -> Path:
    """A job dir as train.py leaves it: .hydra/overrides.yaml plus metrics.json or status.json."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*FIXED, *overrides]))
    if val is not None:
        metrics = {"status": "completed", "val": val, "test": test or {}, "wall_time_s": 2.0}
        metrics |= {"seed": 0, "world_size": 1, "optimized_metric": {"name": "val/acc"}}
        metrics |= {"ood": {"blur": {"acc": 0.3}}, "drift": {"cka": {"stem": 0.9}}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        status = {"status": "failed", "error": error, "overrides": [*FIXED, *overrides]}
        (job / "status.json").write_text(json.dumps(status))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """lr x seed: lr=0.1 has 3 seeds, lr=0.01 has 2 completed + 1 failed, plus a missing job."""
    accs = {("0.1", 0): 0.8, ("0.1", 1): 0.9, ("0.1", 2): 1.0, ("0.01", 0): 0.5, ("0.01", 1): 0.7}
    num = 0
    for lr in ("0.1", "0.01"):
        for seed in range(3):
            overrides = [f"optimizer.lr={lr}", f"seed={seed}"]
            if (lr, seed) in accs:
                test = {"acc": 0.6} if lr == "0.1" else None  # a metric only some jobs have
                make_job(
                    tmp_path, num, overrides, val={"acc": accs[lr, seed], "loss": 1.0}, test=test
                )
            else:
                make_job(tmp_path, num, overrides, error="optimizer.lr diverged\nsecond line")
            num += 1
    make_job(tmp_path, num, ["optimizer.lr=0.001", "seed=0"])  # killed: neither file
    (tmp_path / "multirun.yaml").write_text("optimized_metric: val/acc\noptimized_mode: max\n")
    return tmp_path


def test_load_sweep_one_row_per_job(sweep: Path) -> None:
    jobs = load_sweep(sweep)
    assert list(jobs["job"]) == [str(n) for n in range(7)]
    assert list(jobs["status"]).count("completed") == 5
    assert jobs.loc[5, "status"] == "failed" and "diverged" in jobs.loc[5, "error"]
    assert jobs.loc[6, "status"] == "missing"
    assert jobs.attrs["overrides"] == ["model", "data", "optimizer.lr", "seed"]
    names = set(jobs.attrs["metrics"])
    assert {"val/acc", "val/loss", "test/acc", "ood/blur/acc", "wall_time_s"} <= names
    # Numbers that describe the job, and diagnostics, are not sweep metrics.
    assert not {"seed", "world_size", "optimized_metric/value", "drift/cka/stem"} & names
    assert jobs.loc[3, "optimizer.lr"] == "0.01"  # values as typed


def test_summary_mean_std_over_seeds_and_counts(sweep: Path) -> None:
    summary = summarize(load_sweep(sweep))
    assert summary.attrs["settings"] == ["optimizer.lr"]  # model/data are fixed, seed replicates
    assert summary.attrs["fixed"] == {"model": "test_cnn", "data": "digits"}
    rows = summary.set_index("optimizer.lr")
    assert rows.loc["0.1", "val/acc_mean"] == pytest.approx(0.9)
    assert rows.loc["0.1", "val/acc_std"] == pytest.approx(0.1)  # sample std over 3 seeds
    assert rows.loc["0.01", "val/acc_mean"] == pytest.approx(0.6)
    assert rows.loc["0.01", ["jobs", "completed", "failed", "missing"]].tolist() == [3, 2, 1, 0]
    assert rows.loc["0.001", ["jobs", "missing"]].tolist() == [1, 1]
    assert pd.isna(rows.loc["0.001", "val/acc_mean"])
    # Mixed metric sets: test/acc exists only for lr=0.1.
    assert rows.loc["0.1", "test/acc_mean"] == pytest.approx(0.6)
    assert pd.isna(rows.loc["0.01", "test/acc_mean"])
    assert list(summary.columns[:8]) == [
        "optimizer.lr",
        "jobs",
        "completed",
        "pruned",
        "failed",
        "interrupted",
        "missing",
        "seeds",
    ]
    assert summary.columns[8] == "val/acc_mean"  # the main metric first


def test_write_report_files(sweep: Path) -> None:
    write_report(sweep)
    csv = pd.read_csv(sweep / "report.csv")
    assert len(csv) == 3 and csv["failed"].sum() == 1 and csv["missing"].sum() == 1
    md = (sweep / "report.md").read_text()
    assert "7 jobs: 5 completed, 1 failed, 1 missing" in md
    assert "| 0.1 | 3 | 0 | 0 | 0.9 ± 0.1 |" in md
    assert "Best: optimizer.lr=0.1: val/acc 0.9 ± 0.1" in md
    assert "- job 5 (optimizer.lr=0.01 seed=2): second line" in md  # the error's last line
    assert "- job 6 (optimizer.lr=0.001 seed=0): no metrics.json or status.json" in md
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_metric_and_mode_choice(sweep: Path) -> None:
    summary = summarize(load_sweep(sweep), metric="val/loss")
    assert summary.attrs["mode"] == "min" and summary.columns[8] == "val/loss_mean"
    with pytest.raises(FtlabError, match=r"metric=val/nope .* use one of val/acc, val/loss"):
        summarize(load_sweep(sweep), metric="val/nope")


def test_metrics_json_wins_over_an_earlier_attempts_status(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, ["seed=0"], error="preempted")
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "val": {"acc": 0.5}}))
    assert load_sweep(tmp_path).loc[0, "status"] == "completed"


def test_interrupted_and_diverged_jobs_are_counted_not_averaged(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["seed=0"], val={"acc": 0.5})
    for num, status, why in [(1, "interrupted", "SIGTERM at step 6"), (2, "failed", "loss is nan")]:
        job = make_job(tmp_path, num, [f"seed={num}"], val={"acc": 0.9})
        metrics = json.loads((job / "metrics.json").read_text()) | {"status": status, "error": why}
        (job / "metrics.json").write_text(json.dumps(metrics))
    summary = write_report(tmp_path)
    row = summary.iloc[0]
    assert (row["completed"], row["failed"], row["interrupted"]) == (1, 1, 1)
    assert row["val/acc_mean"] == 0.5  # only the completed job's number
    md = (tmp_path / "report.md").read_text()
    assert "3 jobs: 1 completed, 1 failed, 1 interrupted, 0 missing." in md
    assert "| jobs | failed | interrupted | missing |" in md
    assert "- job 1 (seed=1): SIGTERM at step 6" in md and "- job 2 (seed=2): loss is nan" in md


def test_failed_job_without_hydra_dir_keeps_its_overrides(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, ["seed=3"], error="boom")
    (job / ".hydra" / "overrides.yaml").unlink()
    (job / ".hydra").rmdir()
    assert load_sweep(tmp_path).loc[0, "seed"] == "3"


def test_two_swept_keys_plot_one_line_per_value(tmp_path: Path) -> None:
    num = 0
    for lr in ("0.1", "0.01", "0.001"):
        for freeze in ("none", "gradual"):
            make_job(tmp_path, num, [f"optimizer.lr={lr}", f"freeze={freeze}"], val={"acc": 0.5})
            num += 1
    summary = summarize(load_sweep(tmp_path))
    ax = plot_sweep(summary)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["freeze=none", "freeze=gradual"]
    assert ax.get_xscale() == "log"  # lr spans 100x
    assert len(ax.containers) == 2


def test_all_jobs_failed_still_reports(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["seed=0"], error="boom")
    summary = write_report(tmp_path)
    assert summary.loc[0, "failed"] == 1
    assert "1 jobs: 0 completed, 1 failed" in (tmp_path / "report.md").read_text()


def test_not_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FtlabError, match="no such sweep directory"):
        load_sweep(tmp_path / "nope")
    with pytest.raises(FtlabError, match="is not a sweep directory"):
        load_sweep(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FtlabError, match="single run's directory"):
        load_sweep(tmp_path)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_prints_the_report(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--metric", "val/loss"]) == 0
    out = capsys.readouterr().out
    assert "Main metric: val/loss (min)" in out and "wrote " in out


def test_parse_override_and_sweep_id() -> None:
    assert parse_override("++optimizer.lr=1e-3") == ("optimizer.lr", "1e-3")
    assert parse_override("logger=[csv,wandb]") == ("logger", "[csv,wandb]")
    assert sweep_id("outputs/multirun/2024-05-01/12-30-00") == "2024-05-01_12-30-00"


def test_wandb_context_groups_jobs_by_sweep() -> None:
    hydra = OmegaConf.create(
        {
            "mode": RunMode.MULTIRUN,
            "sweep": {"dir": "outputs/multirun/2024-05-01/12-30-00"},
            "job": {"num": 3},
            "overrides": {"task": ["optimizer.lr=0.1", "seed=1", "x=" + "y" * 100]},
        }
    )
    context = wandb_context(hydra)
    assert context["group"] == "2024-05-01_12-30-00"
    assert context["name"] == "2024-05-01_12-30-00/3"
    assert context["tags"][:2] == ["optimizer.lr=0.1", "seed=1"]
    assert len(context["tags"][2]) == 64  # wandb's limit
    hydra.mode = RunMode.RUN
    assert wandb_context(hydra) == {}
    assert wandb_context() == {}  # outside Hydra


def test_wise_ft_rows_and_column_choice(tmp_path: Path) -> None:
    """--wise-ft adds one row per setting with WiSE-FT, read at its best α under the run's names;
    --columns narrows report.md to the chosen metrics (globs allowed)."""
    for seed, (acc, wise) in enumerate([(0.80, 0.84), (0.82, 0.88)]):
        job = make_job(
            tmp_path, seed, ["strategy=full", f"seed={seed}"], val={"acc": 0.9}, test={"acc": acc}
        )
        metrics = json.loads((job / "metrics.json").read_text())
        metrics["trainable_params"] = 1000
        metrics["wise_ft"] = {
            "best_alpha": 0.5,
            "rows": [{"alpha": 0.5, "val_acc": 0.95}],
            "best": {"alpha": 0.5, "val": {"acc": 0.95}, "test": {"acc": wise}, "ood": {}},
        }
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "wise_ft.csv").write_text(f"alpha,val_acc,ood_blur_acc\n0,0.5,0.4\n1,{acc},0.6\n")
    make_job(tmp_path, 2, ["strategy=linear_probe", "seed=0"], val={"acc": 0.7}, test={"acc": 0.7})

    jobs = load_sweep(tmp_path, wise_ft=True)
    assert list(jobs["job"]) == ["0", "1", "2", "0+wise_ft", "1+wise_ft"]
    summary = summarize(jobs)
    assert summary.attrs["settings"] == ["strategy", "wise_ft"]
    row = summary[summary["wise_ft"] == "best α"].iloc[0]
    assert row["strategy"] == "full" and row["jobs"] == 2
    assert row["test/acc_mean"] == pytest.approx(0.86) and row["trainable_params_mean"] == 1000
    plain = summary[(summary["strategy"] == "full") & (summary["wise_ft"] == "")].iloc[0]
    assert plain["test/acc_mean"] == pytest.approx(0.81)

    write_report(tmp_path, columns=["test/acc", "ood/*/acc"], wise_ft=True)
    md = (tmp_path / "report.md").read_text()
    assert "3 jobs: 3 completed" in md  # derived rows are not jobs
    assert (
        "| strategy | wise_ft | jobs | failed | missing | val/acc | test/acc | ood/blur/acc |" in md
    )
    assert "| full | best α | 2 | 0 | 0 | 0.95 ± 0 | 0.86 ± 0.028 | — |" in md
    assert "wall_time_s" not in md
    # The α curve, averaged over the two seeds: 0.8 and 0.82 at α=1.
    assert "| strategy | α | val_acc | ood_blur_acc |" in md
    assert "| full | 0 | 0.5 ± 0 | 0.4 ± 0 |" in md
    assert "| full | 1 | 0.81 ± 0.014 | 0.6 ± 0 |" in md
