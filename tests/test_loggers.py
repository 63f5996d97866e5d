"""The offline wandb note names a command that uploads the run; logger=mlflow records a sweep's
runs (settings, step metrics, files) in a real sqlite store that ``mlflow server`` serves."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FAST, run_cli

from ftlab.loggers import logger_kwargs
from ftlab.sweeps import sweep_id

WANDB = Path(sys.executable).with_name("wandb")


@pytest.mark.skipif(not WANDB.exists(), reason="the wandb command is not installed")
def test_the_offline_note_names_a_sync_command_that_finds_the_run(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials either
    conf = {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger="ftlab"):
        logger_kwargs(conf, {})  # what compose.loggers adds to the logger's own config
    (note,) = [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
    command = re.search(r"`(wandb sync [^`]+)`", note).group(1)

    # Where wandb puts an offline run (tests/test_train.py makes a real one there).
    run = tmp_path / "wandb" / "offline-run-20250101_000000-abc123"
    run.mkdir(parents=True)
    (run / "run-abc123.wandb").write_bytes(b"")
    paths = [str(p) for p in tmp_path.glob(command.split()[-1].removeprefix(f"{tmp_path}/"))]

    def dry_run(*targets: str) -> str:
        command = [str(WANDB), "sync", "--dry-run", *targets]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr

    assert "Would sync 1 run(s)" in dry_run(*paths), note
    assert "No runs to sync" in dry_run(str(tmp_path))  # what the note used to say


# --- logger=mlflow: a real two-job sweep into a sqlite store, read back with MlflowClient -----

TINY = [o for o in FAST if not o.startswith("trainer.max_epochs")] + [
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
]
LRS = ("0.001", "0.002")


@pytest.fixture(scope="module")
def mlflow_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """A grid sweep of two jobs logging to ``<tmp>/store/mlflow.db``: (sweep dir, store)."""
    root = tmp_path_factory.mktemp("mlflow")
    sweep, store = root / "sweep", root / "store"
    proc = run_cli(
        "train.py",
        "-m",
        *TINY,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
        f"optimizer.lr={','.join(LRS)}",
        f"hydra.sweep.dir={sweep}",
        run_dir=sweep,
        env={"MLFLOW_TRACKING_URI": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep, store


@pytest.mark.slow  # two real tiny runs
def test_mlflow_gets_settings_step_metrics_and_the_runs_files(mlflow_sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep, store = mlflow_sweep
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    # one experiment for the sweep, named as wandb's group; nothing in the single-run one
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiment.name == sweep_id(sweep)
    assert experiment.artifact_location == str(store / "mlartifacts")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.run_name"])
    assert [r.info.run_name for r in runs] == [f"{sweep_id(sweep)}/{n}" for n in (0, 1)]
    for job, run in enumerate(runs):
        run_dir = sweep / str(job)
        assert run.info.status == "FINISHED"
        assert run.data.tags["run_dir"] == str(run_dir)
        assert run.data.tags["sweep"] == sweep_id(sweep)
        assert f"optimizer.lr={LRS[job]}" in run.data.tags["overrides"]
        # params: the run's settings, flattened as the other loggers get them
        params = run.data.params
        assert float(params["optimizer.lr"]) == float(LRS[job])
        assert params["choice.model"] == "test_cnn" and params["choice.logger"] == "mlflow"
        assert params["data.batch_size"] == "16" and params["schedule.phases"] == "6"
        assert len(params) > 100
        # metrics per step: three train steps, each its own point
        steps = client.get_metric_history(run.info.run_id, "train/loss_step")
        assert [m.step for m in steps] == [0, 1, 2]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test"]["acc"])
        # artifacts: metrics.json as written, the plots, the checkpoint record
        names = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        assert names == ["checkpoint.json", "drift.png", "metrics.json"]
        got = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
        assert json.loads(got.read_text()) == metrics
        got = Path(client.download_artifacts(run.info.run_id, "checkpoint.json", str(tmp_path)))
        record = json.loads(got.read_text())
        assert record["path"] == metrics["best_checkpoint"]
        assert record["record"]["backbone"]["name"] == "test_resnet"
        assert record["record"]["classes"] == [str(d) for d in range(10)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts mlflow server
def test_mlflow_server_serves_the_sweeps_runs(mlflow_sweep, tmp_path):
    sweep, store = mlflow_sweep
    log = (tmp_path / "server.log").open("w")  # a pipe nobody reads would stall the server
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn workers stop with it
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> bytes:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.read()

    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine starts it slowly
        while True:
            try:
                get("/health")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not answer in 300 s"
                time.sleep(1)
        found = json.loads(get("/api/2.0/mlflow/experiments/search?max_results=10"))
        (experiment,) = [e for e in found["experiments"] if e["name"] == sweep_id(sweep)]
        request = urllib.request.Request(
            base + "/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        assert len(runs) == 2
        run_id = runs[0]["info"]["run_id"]
        run = json.loads(get(f"/api/2.0/mlflow/runs/get?run_id={run_id}"))["run"]
        assert {p["key"] for p in run["data"]["params"]} >= {"optimizer.lr", "choice.model"}
        listed = json.loads(get(f"/api/2.0/mlflow/artifacts/list?run_id={run_id}"))
        assert {f["path"] for f in listed["files"]} == {
            "checkpoint.json",
            "drift.png",
            "metrics.json",
        }
        page = get(f"/#/experiments/{experiment['experiment_id']}/runs/{run_id}").decode()
        assert "<title>MLflow</title>" in page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
