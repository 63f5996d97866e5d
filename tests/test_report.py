"""The sweep report over synthetic job directories: rows, statistics, odd jobs, bad input."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.types import RunMode
from matplotlib.container import BarContainer, ErrorbarContainer
from omegaconf import OmegaConf

from ftlab.errors import FtlabError
from ftlab.sweeps import parse_override, provenance, sweep_id, wandb_context
from ftlab.sweeps.report import load_sweep, main, plot_sweep, summarize, write_report
from ftlab.sweeps.robustness import effective_robustness, plot_effective_robustness

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


# A strategies sweep with two OOD sets: (test, rotation, noise) accuracy per strategy and seed,
# and full fine-tuning's WiSE-FT rows per seed: {alpha: (test, rotation, noise)}.
STRATEGY_ACCS = {
    "linear_probe": [(0.90, 0.76, 0.67), (0.91, 0.77, 0.68), (0.92, 0.78, 0.66)],
    "full": [(0.96, 0.74, 0.10), (0.95, 0.72, 0.11), (0.97, 0.76, 0.10)],
    "lp_ft": [(0.89, 0.75, 0.67), (0.90, 0.76, 0.68), (0.91, 0.74, 0.69)],
}
WISE_FT_ROWS = {
    0: {0.0: (0.20, 0.15, 0.18), 0.5: (0.50, 0.40, 0.30), 1.0: (0.96, 0.74, 0.10)},
    1: {0.0: (0.18, 0.17, 0.20), 0.5: (0.46, 0.42, 0.34), 1.0: (0.95, 0.72, 0.11)},
    2: {0.0: (0.22, 0.16, 0.19), 0.5: (0.48, 0.41, 0.32), 1.0: (0.97, 0.76, 0.10)},
}
SOUP = {"soup": {"test": {"acc": 0.965}, "ood": {"rotation": {"acc": 0.78}, "noise": {"acc": 0.2}}}}


@pytest.fixture
def strategies(tmp_path: Path) -> Path:
    """3 strategies x 3 seeds with OOD sets rotation and noise; full ran WiSE-FT."""
    sweep = tmp_path / "sweep"
    num = 0
    for strategy, per_seed in STRATEGY_ACCS.items():
        for seed, (test, rotation, noise) in enumerate(per_seed):
            job = make_job(sweep, num, [f"strategy={strategy}", f"seed={seed}"], val={"acc": test})
            metrics = json.loads((job / "metrics.json").read_text())
            metrics["test"] = {"acc": test}
            metrics["ood"] = {"rotation": {"acc": rotation}, "noise": {"acc": noise}}
            if strategy == "full":
                rows = [
                    {"alpha": a, "val_acc": t, "test_acc": t, "ood": {"rotation": r, "noise": n}}
                    for a, (t, r, n) in WISE_FT_ROWS[seed].items()
                ]
                best = {"alpha": 1.0, "val": {"acc": test}, "test": {"acc": test}}
                best["ood"] = metrics["ood"]
                metrics["wise_ft"] = {"best_alpha": 1.0, "rows": rows, "best": best}
            (job / "metrics.json").write_text(json.dumps(metrics))
            num += 1
    return sweep


def column(strategy: str, index: int) -> list[float]:
    return [accs[index] for accs in STRATEGY_ACCS[strategy]]


def test_effective_robustness_numbers(strategies: Path) -> None:
    """One point per (strategy, OOD set) at mean ± sample std over seeds in both axes; the
    WiSE-FT curve averaged over seeds per α; no soup without soup.json."""
    result = effective_robustness(summarize(load_sweep(strategies)), strategies)
    assert result is not None and result.id_metric == "test/acc"
    assert result.ood_sets == ["rotation", "noise"]
    points = result.points.set_index(["label", "ood_set"])
    assert len(points) == 3 * 2
    for strategy in STRATEGY_ACCS:
        for index, name in ((1, "rotation"), (2, "noise")):
            point = points.loc[(strategy, name)]
            assert point["id"] == pytest.approx(statistics.mean(column(strategy, 0)))
            assert point["id_std"] == pytest.approx(statistics.stdev(column(strategy, 0)))
            assert point["ood"] == pytest.approx(statistics.mean(column(strategy, index)))
            assert point["ood_std"] == pytest.approx(statistics.stdev(column(strategy, index)))
    curve = result.curves.set_index(["label", "alpha", "ood_set"])
    assert sorted(set(result.curves["label"])) == ["full"]  # only full ran WiSE-FT
    assert curve.loc[("full", 0.5, "noise"), "ood"] == pytest.approx(0.32)
    assert curve.loc[("full", 0.5, "noise"), "id"] == pytest.approx(0.48)
    assert curve.loc[("full", 0.0, "rotation"), "ood_std"] == pytest.approx(0.01)
    assert result.soups == [] and result.note == ""


def test_a_tuned_comparison_labels_each_point_by_its_strategy(tmp_path: Path) -> None:
    """Each strategy at its own chosen lr: the legend names the strategy, not every key; when
    a strategy has two settings, the lr is needed to tell them apart and stays."""
    sweep = tmp_path / "tuned"
    chosen = {"linear_probe": "0.01", "full": "0.001", "lp_ft": "0.003"}
    for num, (strategy, lr) in enumerate(chosen.items()):
        job = make_job(sweep, num, [f"strategy={strategy}", f"optimizer.lr={lr}", "seed=1"])
        metrics = {"status": "completed", "val": {"acc": 0.9}, "test": {"acc": 0.9}}
        (job / "metrics.json").write_text(json.dumps(metrics | {"ood": {"noise": {"acc": 0.5}}}))
    result = effective_robustness(summarize(load_sweep(sweep)), sweep)
    assert sorted(result.points["label"]) == ["full", "linear_probe", "lp_ft"]
    job = make_job(sweep, 3, ["strategy=full", "optimizer.lr=0.1", "seed=1"])
    (job / "metrics.json").write_text(json.dumps(metrics | {"ood": {"noise": {"acc": 0.5}}}))
    result = effective_robustness(summarize(load_sweep(sweep)), sweep)
    assert "full · optimizer.lr=0.1" in set(result.points["label"])


def test_effective_robustness_plot_draws_points_curve_soup_and_diagonal(
    strategies: Path,
) -> None:
    (strategies / "soup.json").write_text(json.dumps(SOUP))
    # ftlab-soup's own layout: the OOD sets beside val and test, not under "ood".
    greedy = {"recipe": "greedy", "soup": {"val": {"acc": 0.97}, "test": {"acc": 0.962}}}
    greedy["soup"] |= {"rotation": {"acc": 0.75, "f1": 0.7}, "noise": {"acc": 0.15}}
    (strategies / "soup_greedy.json").write_text(json.dumps(greedy))
    summary = write_report(strategies, wise_ft=True)
    png = strategies / "effective_robustness.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000  # not blank
    assert "effective_robustness.png" in summary.attrs["files"]
    md = (strategies / "report.md").read_text()
    assert "![effective robustness](effective_robustness.png)" in md
    assert "the soup, greedy soup (black)" in md

    result = effective_robustness(summary, strategies)
    fig = plot_effective_robustness(result)
    rotation, noise = fig.axes[:2]
    assert rotation.get_title() == "OOD: rotation" and noise.get_title() == "OOD: noise"
    # Every errorbar point sits at its (ID mean, OOD mean), in both panels, with both bars.
    for ax, name in ((rotation, "rotation"), (noise, "noise")):
        drawn = {}
        for container in ax.containers:
            assert isinstance(container, ErrorbarContainer)
            assert container.has_xerr and container.has_yerr
            x, y = container.lines[0].get_data()
            drawn[container.get_label()] = (float(x[0]), float(y[0]))
        expected = result.points[result.points["ood_set"] == name].set_index("label")
        assert set(drawn) == {"linear_probe", "full", "lp_ft", "full · WiSE-FT best α"}
        for label, (x, y) in drawn.items():
            assert (x, y) == pytest.approx(tuple(expected.loc[label, ["id", "ood"]]))
    lines = {line.get_gid(): line for line in noise.get_lines() if line.get_gid()}
    wise_x, wise_y = lines["wise_ft"].get_data()
    assert list(wise_x) == pytest.approx([0.20, 0.48, 0.96])  # α = 0, 0.5, 1: test acc
    assert list(wise_y) == pytest.approx([0.19, 0.32, 0.10 + 0.01 / 3])
    assert lines["soup"].get_data() == ([0.965], [0.2])
    assert lines["greedy soup"].get_data() == ([0.962], [0.15])
    diag_x, diag_y = lines["diagonal"].get_data()
    assert list(diag_x) == list(diag_y)  # y = x across the whole panel
    assert diag_x[0] <= 0.1 and diag_x[1] >= 0.97

    table = pd.read_csv(strategies / "effective_robustness.csv")
    soup = table[table["kind"] == "soup"].set_index(["label", "ood_set"])
    assert soup.loc[("soup", "rotation"), ["id", "ood"]].tolist() == [0.965, 0.78]
    assert soup.loc[("greedy soup", "rotation"), ["id", "ood"]].tolist() == [0.962, 0.75]
    assert sorted(table["kind"].unique()) == ["setting", "soup", "wise_ft"]


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (None, "no soup (no `soup.json` or `soup_*.json` in the sweep directory)"),
        ('{"greedy": {}}', "soup.json ignored (expected soup.test.acc and soup.ood): KeyError"),
        ("{not json", "soup.json ignored (expected soup.test.acc and soup.ood): JSONDecode"),
    ],
)
def test_missing_or_unreadable_soup_is_skipped_and_said(
    strategies: Path, content: str | None, note: str
) -> None:
    if content is not None:
        (strategies / "soup.json").write_text(content)
    write_report(strategies)
    assert note in (strategies / "report.md").read_text()
    assert "soup" not in set(pd.read_csv(strategies / "effective_robustness.csv")["kind"])


def test_no_ood_sets_no_robustness_plot(tmp_path: Path) -> None:
    (tmp_path / "effective_robustness.png").write_bytes(b"stale")  # from an earlier sweep
    for seed in range(2):
        job = make_job(tmp_path, seed, [f"seed={seed}"], val={"acc": 0.5}, test={"acc": 0.5})
        metrics = json.loads((job / "metrics.json").read_text())
        del metrics["ood"]
        (job / "metrics.json").write_text(json.dumps(metrics))
    summary = write_report(tmp_path)
    assert not (tmp_path / "effective_robustness.png").exists()
    assert "Effective robustness" not in (tmp_path / "report.md").read_text()
    assert "effective_robustness.png" not in summary.attrs["files"]


def test_categorical_settings_plot_grouped_bars_not_a_line(strategies: Path) -> None:
    """Strategies are categories: one group of bars per strategy, ID and each OOD set side by
    side, ± std over seeds; no line joins one strategy to the next."""
    summary = summarize(load_sweep(strategies))
    ax = plot_sweep(summary)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == [
        "ID test/acc",
        "OOD rotation",
        "OOD noise",
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(STRATEGY_ACCS)
    for container, index in zip(bars, (0, 1, 2), strict=True):
        heights = [bar.get_height() for bar in container]
        assert heights == pytest.approx([statistics.mean(column(s, index)) for s in STRATEGY_ACCS])
        assert container.errorbar is not None  # the seeds' std
    # (The error bars' caps are Line2D markers without a line style.)
    joined = [line for line in ax.get_lines() if line.get_linestyle() not in ("None", "")]
    assert not joined


def test_provenance_records_command_commit_date_machine(
    strategies: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "committed"
    argv = [str(strategies), "--wise-ft", "--columns", "test/acc,ood/*/acc", "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out / 'report.csv'}" in capsys.readouterr().out
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] == (
        f"ftlab-report {strategies} --wise-ft --columns 'test/acc,ood/*/acc' --out {out}"
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
    ).stdout.strip()
    assert record["ftlab_commit"] == head and len(head) == 40
    assert isinstance(record["uncommitted_changes"], bool)
    assert record["date"][:10] == pd.Timestamp.now().strftime("%Y-%m-%d")
    machine = record["machine"]
    assert machine["cores"] == os.cpu_count() and machine["cpu"]
    assert machine["torch"] == metadata.version("torch")
    assert len(record["sweep"]["metrics_written"]) == 2
    md = (out / "report.md").read_text()
    assert f"- command: `{record['command']}`" in md
    assert f"- ftlab commit: {head}" in md
    assert f"{machine['cores']} cores" in md and f"torch {machine['torch']}" in md
    # Out of a git checkout (an installed wheel) the commit is unknown, said, not invented.
    monkeypatch.setattr(provenance, "git", lambda *args: None)
    write_report(strategies, out=out)
    assert json.loads((out / "provenance.json").read_text())["ftlab_commit"] is None
    assert "- ftlab commit: unknown (not a git checkout" in (out / "report.md").read_text()
