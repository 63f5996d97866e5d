"""Optuna pruning from inside the jobs: a real search where bad learning rates are stopped
before their last epoch and good ones finish, and a DDP job whose ranks stop together."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import run_cli
from optuna.trial import TrialState

from ftlab.cli import conf_dir
from ftlab.sweeps.optuna_search import search_space
from ftlab.sweeps.report import write_report

pytestmark = pytest.mark.slow

# freeze=none at lr 1e-2 reaches ~0.3 val accuracy after its second epoch, lr 1e-7 stays at
# chance (~0.1): n_warmup_steps=1 judges from the second epoch on, where they are far apart.
EPOCHS = 3
RUN = [
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=32",
    "freeze=none",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.limit_train_batches=12",
    "trainer.limit_val_batches=4",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
]
GOOD, BAD = 1e-2, 1e-7
LR_SPACE = "optimizer.lr=tag(log,interval(1e-8,1e-1))"

SEARCH_CONFIG = Path(conf_dir()) / "hparams_search" / "optuna.yaml"


def queue(storage: str, study_name: str, lrs: list[float]) -> None:
    """Create the study with these learning rates queued in order (the other parameters of
    conf/hparams_search/optuna.yaml at their lowest value), so the test knows which runs when."""
    params = yaml.safe_load(SEARCH_CONFIG.read_text())
    space = search_space(params["hydra"]["sweeper"]["params"], [LR_SPACE])
    base = {
        k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in space.distributions.items()
    }
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    for lr in lrs:
        study.enqueue_trial({**base, "optimizer.lr": lr})


def test_bad_learning_rates_are_pruned_before_their_last_epoch(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    queue(storage, "prune", [GOOD, GOOD, BAD, BAD])
    proc = run_cli(
        "train.py",
        "-m",
        "hparams_search=optuna",
        *RUN,
        LR_SPACE,
        "hydra.sweeper.study_name=prune",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=median",
        "+hydra.sweeper.pruner_options.n_startup_trials=2",
        "+hydra.sweeper.pruner_options.n_warmup_steps=1",
        f"hydra.sweep.dir={tmp_path}",
        run_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="prune", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2

    for trial in study.trials:
        metrics = json.loads((tmp_path / str(trial.number) / "metrics.json").read_text())
        if trial.state == TrialState.COMPLETE:
            assert metrics["status"] == "completed" and "pruned" not in metrics
            assert sorted(trial.intermediate_values) == list(range(EPOCHS))
        else:
            assert metrics["status"] == "pruned"
            epoch = metrics["pruned"]["epoch"]
            assert epoch < EPOCHS - 1  # stopped before its last epoch
            assert sorted(trial.intermediate_values) == list(range(epoch + 1))
            assert metrics["pruned"]["value"] == pytest.approx(trial.intermediate_values[epoch])
            assert metrics["phases"] is not None
        # The best checkpoint is kept, pruned or not.
        assert list((tmp_path / str(trial.number) / "checkpoints").glob("best-*.ckpt"))

    # The search wrote the report itself, beside study.md (as ftlab-report would).
    report = (tmp_path / "report.md").read_text()
    assert "4 jobs: 2 completed, 0 failed, 2 pruned, 0 missing" in report
    command = json.loads((tmp_path / "provenance.json").read_text())["command"]
    assert command.startswith(f"ftlab-report {tmp_path} --metric ")
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "report.png").is_file()
    summary = write_report(tmp_path)
    # One row per learning rate: the jobs' links to their trials are not settings.
    assert summary.attrs["settings"] == ["optimizer.lr"] and len(summary) == 2
    assert summary[["pruned", "failed", "completed"]].sum().tolist() == [2, 0, 2]
    report = (tmp_path / "report.md").read_text()
    assert "4 jobs: 2 completed, 0 failed, 2 pruned, 0 missing" in report
    assert "## Pruned jobs" in report and "pruned after epoch 1" in report
    study_md = (tmp_path / "study.md").read_text()
    assert "4 trials: 2 complete, 2 pruned, 0 failed" in study_md


@pytest.mark.ddp
def test_ddp_ranks_stop_together_when_pruned(tmp_path: Path) -> None:
    """Rank 0 asks the study and broadcasts: both ranks stop after the same validation (a rank
    that went on alone would hang in its next all-reduce, and the job would time out)."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="ddp", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(value=1.0, intermediate_values={e: 1.0 for e in range(EPOCHS)})
    )
    trial = study.ask()  # the job's trial: any accuracy below 1.0 is below the median
    node = "++callbacks.optuna_trial"
    proc = run_cli(
        "train.py",
        *RUN,
        "trainer=ddp_cpu",
        f"{node}._target_=ftlab.sweeps.pruning.OptunaPruning",
        f"{node}.storage='{storage}'",
        f"{node}.study_name=ddp",
        f"{node}.trial={trial.number}",
        f"{node}.monitor=val/acc",
        f"{node}.pruner=median",
        f"{node}.pruner_options={{n_startup_trials:1}}",
        run_dir=tmp_path / "job",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["status"] == "pruned" and metrics["pruned"]["epoch"] == 0
    checksums = metrics["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    frozen = optuna.load_study(study_name="ddp", storage=storage).trials[trial.number]
    assert list(frozen.intermediate_values) == [0]  # reported once, by rank 0
