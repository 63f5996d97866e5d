"""Many workers on one Optuna study in a real PostgreSQL server: a throwaway cluster (Debian's
``postgresql`` binaries, ``initdb`` + ``pg_ctl`` on a free local port) started once for the
module and stopped after it. Also the live view: optuna-dashboard on that database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import FAST, ROOT
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from ftlab.sweeps.optuna_search import open_storage, open_study, recover

pytestmark = pytest.mark.slow

TINY = [o for o in FAST if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]
SEARCH = ["hparams_search=optuna", *TINY, "hydra.sweeper.heartbeat_s=2"]


def pg_bin() -> Path:
    """Debian's server binaries: /usr/lib/postgresql/<version>/bin (``make install`` puts them)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    assert found, "no PostgreSQL server binaries: run make install (apt-get install postgresql)"
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(*command: str | Path) -> list[str]:
    """initdb refuses root: as root, run the server's commands as the ``postgres`` user."""
    cmd = [str(c) for c in command]
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster with a database ``ftlab``; yields its SQLAlchemy URL."""
    binaries = pg_bin()
    # Not under pytest's tmp dir: /tmp/pytest-of-root is root's alone, the server runs as postgres.
    home = Path(tempfile.mkdtemp(prefix="ftlab-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    quiet = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        as_server_user(binaries / "initdb", "-D", data, "-U", "ftlab", "-A", "trust"), **quiet
    )
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c max_connections=100"
    subprocess.run(
        as_server_user(
            binaries / "pg_ctl", "-D", data, "-o", options, "-l", home / "log", "-w", "start"
        ),
        **quiet,
    )
    try:
        subprocess.run(
            [binaries / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "ftlab", "ftlab"],
            **quiet,
        )
        yield f"postgresql+psycopg://ftlab@127.0.0.1:{port}/ftlab"
    finally:
        subprocess.run(
            as_server_user(binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"),
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)


def worker(sweep: Path, *args: str, log: Path) -> subprocess.Popen:
    """One sweeper process (train.py -m), its output in ``log``."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def metrics_value(job_dir: str | Path) -> float:
    return json.loads((Path(job_dir) / "metrics.json").read_text())["optimized_metric"]["value"]


def test_two_workers_share_one_study_without_duplicates(postgres: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*SEARCH, f"hydra.sweeper.storage={postgres}", "hydra.sweeper.study_name=pair"]
    args.append("hydra.sweeper.n_trials=6")
    procs = [worker(sweep, *args, log=tmp_path / f"w{i}.log") for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=400) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="pair", storage=postgres)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # Trials beyond n_trials that a race asked are given back unrun, marked surplus.
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all("surplus" in t.user_attrs for t in others), others
    assert len(complete) == 6 and len({t.number for t in complete}) == 6
    job_dirs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert job_dirs == sorted(str(t.number) for t in complete)  # one directory per trial
    for trial in complete:
        assert trial.value == pytest.approx(metrics_value(trial.user_attrs["job_dir"]))
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2, f"one worker ran every trial: {workers}"


def test_a_killed_workers_trial_is_rerun_by_the_next_invocation(
    postgres: str, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # A heartbeat too slow to go stale during the test: the next worker on this host must see
    # the dead worker by its pid.
    args = [*SEARCH[:-1], "hydra.sweeper.heartbeat_s=600", "hydra.sweeper.n_trials=3"]
    args += [f"hydra.sweeper.storage={postgres}", "hydra.sweeper.study_name=killed"]
    first = worker(sweep, *args, log=tmp_path / "first.log")
    deadline = time.monotonic() + 300
    while not (sweep / "1" / ".hydra").exists():  # trial 1's job has started
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    study = optuna.load_study(study_name="killed", storage=postgres)
    assert study.trials[1].state == TrialState.RUNNING  # as a dead worker leaves it

    again = worker(sweep, *args, log=tmp_path / "again.log")
    assert again.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()[-3000:]
    study = optuna.load_study(study_name="killed", storage=postgres)
    cut_off = study.trials[1]
    assert cut_off.state == TrialState.FAIL and "error" not in cut_off.user_attrs
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    rerun = [t for t in complete if t.system_attrs.get("failed_trial") == 1]
    assert len(rerun) == 1 and rerun[0].params == cut_off.params  # the same setting, again
    for trial in complete:
        assert trial.value == pytest.approx(metrics_value(trial.user_attrs["job_dir"]))
    assert not (sweep / "1" / "metrics.json").exists()


def test_a_worker_on_another_host_is_dead_once_its_heartbeat_is_stale(
    postgres: str, tmp_path: Path
) -> None:
    storage = open_storage(postgres, heartbeat_s=1)
    study = open_study("beats", storage, "max", {}, [], {"x": FloatDistribution(0, 1)})
    alive, silent = (
        study.ask({"x": FloatDistribution(0, 1)}),
        study.ask({"x": FloatDistribution(0, 1)}),
    )
    for trial in (alive, silent):
        trial.set_user_attr("worker", "node17.cluster:4242")  # not this host: pid unknowable
        storage.record_heartbeat(trial._trial_id)
    assert recover(study, tmp_path, ["val/acc"]) == 0  # both beat within 3 s
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # only one of them goes on beating
        storage.record_heartbeat(alive._trial_id)
        time.sleep(0.2)
    time.sleep(1.0)
    recover(study, tmp_path, ["val/acc"])
    states = {t.number: t.state for t in study.get_trials()}
    assert states[alive.number] == TrialState.RUNNING
    assert states[silent.number] == TrialState.FAIL
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.params == study.trials[silent.number].params


def test_an_unreachable_storage_is_one_line_naming_the_key(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://ftlab:secret@127.0.0.1:{free_port()}/ftlab"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *SEARCH,
            f"hydra.sweeper.storage={url}",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra.sweeper.storage="), lines
    assert "is unreachable" in lines[0] and "scripts/optuna_postgres.sh" in lines[0]
    assert "secret" not in lines[0]  # the password stays out of logs
    assert not list(tmp_path.glob("*/.hydra"))


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_the_study_over_http(postgres: str) -> None:
    study = optuna.create_study(study_name="shown", storage=postgres, load_if_exists=True)
    study.add_trial(optuna.trial.create_trial(value=0.75))
    port = free_port()
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed: make install"
    proc = subprocess.Popen(
        [dashboard, postgres, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None:
            assert proc.poll() is None, "optuna-dashboard exited"
            assert time.monotonic() < deadline, "optuna-dashboard never answered"
            try:
                studies = get_json(port, "/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.3)
        (summary,) = [s for s in studies if s["study_name"] == "shown"]
        detail = get_json(port, f"/api/studies/{summary['study_id']}")
        assert [t["values"] for t in detail["trials"]] == [[0.75]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
