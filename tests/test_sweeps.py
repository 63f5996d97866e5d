"""Real multiruns of train.py: grid sweeps, a failing job, Optuna resume, submitit, SLURM
requeue, wandb runs per job, the experiment files and the analysis notebook."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import FAST, ROOT, read_metrics, run_cli
from hydra.utils import instantiate
from submitit.core.utils import FailedJobError

from ftlab.errors import FtlabError
from ftlab.sweeps import sweep_id
from ftlab.sweeps.optuna_search import finished, open_study, recover, search_space
from ftlab.sweeps.report import load_sweep, write_report

pytestmark = pytest.mark.slow

# One epoch of two train batches: a job takes a few seconds after the first import.
TINY = [o for o in FAST if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]


def multirun(sweep: Path, *overrides: str, env: dict | None = None, timeout: int = 300):
    return run_cli(
        "train.py",
        "-m",
        *overrides,
        f"hydra.sweep.dir={sweep}",
        run_dir=sweep,
        env=env,
        timeout=timeout,
    )


def job_numbers(sweep: Path, name: str = "metrics.json") -> list[int]:
    return sorted(int(p.parent.name) for p in sweep.glob(f"*/{name}"))


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """train.py in the background, for the tests that interrupt it."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``path`` exists; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"train.py ended (status {proc.returncode}) before {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 x 2 sweep (lr x seed), every job also logging to wandb offline."""
    sweep = tmp_path_factory.mktemp("grid") / "2026-01-01" / "10-00-00"
    proc = multirun(
        sweep,
        *TINY,
        "optimizer.lr=0.001,0.01",
        "seed=0,1",
        "logger=[csv,wandb]",
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_grid_sweep_job_dirs_and_report(grid: Path) -> None:
    assert job_numbers(grid) == [0, 1, 2, 3]
    assert yaml.safe_load((grid / "3" / ".hydra" / "overrides.yaml").read_text())[-3:] == [
        "optimizer.lr=0.01",
        "seed=1",
        "logger=[csv,wandb]",
    ]
    summary = write_report(grid)
    assert summary.attrs["settings"] == ["optimizer.lr"]
    assert summary["optimizer.lr"].tolist() == ["0.001", "0.01"]
    assert summary[["jobs", "completed", "failed"]].values.tolist() == [[2, 2, 0], [2, 2, 0]]
    assert summary["seeds"].tolist() == ["0 1", "0 1"]
    accs = [read_metrics(grid / str(n))["val"]["acc"] for n in (0, 1)]
    assert summary.loc[0, "val/acc_mean"] == pytest.approx(sum(accs) / 2)
    assert summary["val/acc_std"].notna().all()
    assert all(
        (grid / name).stat().st_size > 0 for name in ("report.csv", "report.md", "report.png")
    )


def test_each_job_is_its_own_offline_wandb_run_in_the_sweeps_group(grid: Path) -> None:
    runs = [list((grid / str(n) / "wandb").glob("offline-run-*")) for n in range(4)]
    assert [len(r) for r in runs] == [1, 1, 1, 1]
    assert len({r[0].name for r in runs}) == 4
    group = sweep_id(grid)
    for n, (run,) in enumerate(runs):
        # The run's protobuf log holds group, name and tags as plain strings.
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert group.encode() in record and f"{group}/{n}".encode() in record


def test_failed_job_leaves_status_and_the_sweep_goes_on(tmp_path: Path) -> None:
    proc = multirun(tmp_path, *TINY, "optimizer.lr=-1,0.001")
    # Hydra's basic launcher runs every job, then re-raises the first failure: exit status 1.
    assert proc.returncode == 1
    status = json.loads((tmp_path / "0" / "status.json").read_text())
    assert status["status"] == "failed" and "optimizer.lr=-1" in status["error"]
    assert job_numbers(tmp_path) == [1]
    summary = write_report(tmp_path)
    assert summary[["optimizer.lr", "failed", "completed"]].values.tolist() == [
        ["-1", 1, 0],
        ["0.001", 0, 1],
    ]
    assert "optimizer.lr=-1 must be a number > 0" in (tmp_path / "report.md").read_text()


def test_optuna_search_interrupted_then_resumed_runs_up_to_n_trials(tmp_path: Path) -> None:
    args = ["hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=3"]
    first = start("-m", *args, f"hydra.sweep.dir={tmp_path}")
    # Two trials done and the third's job started: its worker is named on the trial by then
    # (a kill inside study.ask, before that, leaves a trial that waits out the grace period).
    wait_for(tmp_path / "2" / ".hydra" / "config.yaml", first)
    first.send_signal(signal.SIGKILL)  # a preempted or killed sweep: no chance to clean up
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the search ended before it could be interrupted"

    proc = multirun(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(
        study_name="test_cnn_digits", storage=f"sqlite:///{tmp_path}/optuna.db"
    )
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    trials = [(t.number, t.state.name, t.user_attrs) for t in study.get_trials()]
    assert len(complete) == 3, trials  # the total, not 3 more
    assert sorted(int(Path(t.user_attrs["job_dir"]).name) for t in complete) == job_numbers(
        tmp_path
    )
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["finished"] == 3 and set(results["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "module.head.dropout",
    }
    assert len(load_sweep(tmp_path)) >= 3  # trial job dirs read as a sweep


def test_optuna_search_space_and_resume_bookkeeping(tmp_path: Path) -> None:
    space = search_space(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
            "module.head.dropout": "choice(0.0, 0.3)",
        },
        ["model=test_cnn", "++data.batch_size=range(8,33,8)", "module.head.dropout=0.1"],
    )
    assert space.fixed == ["model=test_cnn", "module.head.dropout=0.1"]  # the command line wins
    assert set(space.distributions) == {"optimizer.lr", "data.batch_size"}
    assert space.distributions["optimizer.lr"].log
    assert space.overrides({"optimizer.lr": 1e-3, "data.batch_size": 16}) == [
        "model=test_cnn",
        "module.head.dropout=0.1",
        "optimizer.lr=0.001",
        "++data.batch_size=16",
    ]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = open_study("s", storage, "max", {"seed": 0}, space.fixed)
    done, failed, cut_off = (study.ask(space.distributions) for _ in range(3))
    study.tell(done, 1.0)
    failed.set_user_attr("error", "boom")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    # cut_off stays RUNNING, as after a kill; the next session marks it, does not count it, and
    # queues its setting again.
    cut_off.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    study = open_study("s", storage, "max", {"seed": 0}, space.fixed)
    assert recover(study, tmp_path, ["val/acc"]) == 1 and finished(study) == 2
    assert study.trials[cut_off.number].state == optuna.trial.TrialState.FAIL
    (rerun,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert rerun.params == cut_off.params
    with pytest.raises(
        FtlabError, match="with model=test_cnn where this command has model=test_vit"
    ):
        open_study("s", storage, "max", {}, ["model=test_vit", "module.head.dropout=0.1"])


def dead_pid() -> int:
    """The pid of a process that has ended: a killed sweeper's."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_killed_after_its_job_finished_keeps_its_value(tmp_path: Path) -> None:
    """The kill can land between the job's metrics.json and the study's record of it."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = open_study("s", storage, "max", {}, [])
    finished_job, cut_off = study.ask(), study.ask()
    (tmp_path / str(finished_job.number)).mkdir()
    metrics = {"status": "completed", "optimized_metric": {"name": "val/acc", "value": 0.75}}
    (tmp_path / str(finished_job.number) / "metrics.json").write_text(json.dumps(metrics))
    for trial in (finished_job, cut_off):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    study = open_study("s", storage, "max", {}, [])
    assert recover(study, tmp_path, ["val/acc"]) == 1 and finished(study) == 1
    kept = study.trials[finished_job.number]
    assert kept.state == optuna.trial.TrialState.COMPLETE and kept.value == 0.75
    assert kept.user_attrs["job_dir"] == str(tmp_path / "0")
    assert study.trials[cut_off.number].state == optuna.trial.TrialState.FAIL


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path: Path) -> None:
    proc = multirun(tmp_path, "hydra/launcher=submitit_local", *TINY, "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_numbers(tmp_path) == [0, 1]
    results = list((tmp_path / ".submitit").glob("*/*_result.pkl"))
    assert len({p.parent for p in results}) == 2  # one submitit job (process) each
    assert write_report(tmp_path)["completed"].sum() == 2


def fake_slurm_bin(path: Path, **scripts: str) -> dict[str, str]:
    """Executables named after the keyword arguments on a PATH that comes first."""
    path.mkdir()
    for name, body in scripts.items():
        (path / name).write_text(f"#!/bin/sh\n{body}\n")
        (path / name).chmod(0o755)
    return {"PATH": f"{path}{os.pathsep}{os.environ['PATH']}"}


def test_slurm_launcher_sbatch_requests_the_trainers_resources(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "job.sbatch"
    env = fake_slurm_bin(tmp_path / "bin", srun="exit 0", sbatch=f'cp "$1" {copy}; exit 1')
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("SLURM_ACCOUNT", "lab")
    cfg = make_cfg(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(FailedJobError):  # the fake sbatch refuses, after keeping the script
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    sbatch = copy.read_text()
    for line in (
        "--partition=gpu-long",
        "--account=lab",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--time=240",
        "--array=0-1%2",
        "--signal=USR1@120",
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in sbatch


def test_slurm_requeue_signal_checkpoints_and_the_rerun_resumes(tmp_path: Path) -> None:
    """What hydra/launcher=slurm relies on: USR1 makes Lightning save hpc_ckpt_1.ckpt in the run
    dir and call `scontrol requeue`; the same job started again resumes from it."""
    run_dir, marker = tmp_path / "run", tmp_path / "scontrol.args"
    # The fake scontrol kills its caller, as SLURM kills the job it requeues.
    env = fake_slurm_bin(tmp_path / "bin", scontrol=f'echo "$@" > {marker}; kill -9 $PPID')
    env |= {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    args = [*TINY, "trainer.max_epochs=2"]
    first = start(*args, f"hydra.run.dir={run_dir}", env=env)
    wait_for(run_dir / "checkpoints" / "last.ckpt", first)  # fit runs: the handlers are set
    first.send_signal(signal.SIGUSR1)
    first.wait(timeout=60)
    assert marker.read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").exists() and not (run_dir / "metrics.json").exists()

    proc = run_cli("train.py", *args, run_dir=run_dir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {run_dir}/hpc_ckpt_1.ckpt" in log
    assert read_metrics(run_dir)["status"] == "completed"


def test_every_experiment_file_runs(tmp_path: Path) -> None:
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    proc = multirun(
        tmp_path,
        "experiment=glob(*)",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.batch_size=4",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = load_sweep(tmp_path)
    assert sorted(jobs["experiment"]) == experiments
    assert (jobs["status"] == "completed").all()


def test_analysis_notebook_runs_against_a_sweep(
    grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FTLAB_SWEEP_DIR", str(grid))  # the kernel inherits the environment
    notebook = nbformat.read(ROOT / "notebooks" / "sweep_analysis.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
