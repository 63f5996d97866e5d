"""Faults, through real ``train.py`` subprocesses and real signals: SIGTERM (a preemption) and
SIGKILL resume to the metrics of an uninterrupted run, a diverging loss stops with a status,
two runs never share a directory, and a checkpoint that needs code to unpickle is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli

TESTS = str(Path(__file__).parent)
ENV = {"PYTHONPATH": TESTS}  # train.py imports test_faults.PauseAt from here

# Two epochs of four steps; freeze=gradual unfreezes layer4.0 at epoch 1 (global step 4).
COMMON = [
    *FAST,
    "trainer.limit_train_batches=4",
    "freeze=gradual",
    "deterministic=true",
]


class PauseAt(L.Callback):
    """Test hook: after global step ``step`` write ``marker`` and wait there until a SIGTERM
    arrives or the test deletes the marker (at most ``timeout`` seconds)."""

    def __init__(self, step: int, marker: str, timeout: float = 90.0) -> None:
        self.step, self.marker, self.timeout = step, Path(marker), timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.marker.exists():
            if trainer.received_sigterm:
                return
            time.sleep(0.02)


def pause(step: int, marker: Path) -> list[str]:
    return [
        "+callbacks.pause._target_=test_faults.PauseAt",
        f"+callbacks.pause.step={step}",
        f"+callbacks.pause.marker={marker}",
    ]


def start(*overrides: str, run_dir: Path) -> subprocess.Popen:
    """``train.py`` in the background, the way a scheduler starts it."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | ENV
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before {path.name}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.05)


def assert_same_results(run: dict, reference: dict) -> None:
    assert run["status"] == "completed"
    for stage in ("val", "test"):
        for key in ("acc", "f1", "loss"):
            assert run[stage][key] == pytest.approx(reference[stage][key], rel=1e-5, abs=1e-6), (
                stage,
                key,
            )
    assert [p["unfrozen"] for p in run["phases"]] == [p["unfrozen"] for p in reference["phases"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run the resumed ones must match."""
    run_dir = tmp_path_factory.mktemp("reference")
    done = run_cli("train.py", *COMMON, run_dir=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_metrics(run_dir)


def test_sigterm_saves_exits_cleanly_and_resume_matches(tmp_path, reference):
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    proc = start(*COMMON, *pause(6, marker), run_dir=run_dir)  # epoch 1, phase 1, mid-epoch
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM at global step 6"), err
    command = lines[0].split("continue with: ", 1)[1]
    assert command.endswith(f"resume=true hydra.run.dir={run_dir.resolve()}")
    assert "freeze=gradual" in command and "+callbacks.pause" in command
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and stopped["global_step"] == 6
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 1
    assert ckpt["callbacks"]["ftlab.PhaseCallback"]["applied"] == 1  # same phase on resume
    assert ckpt["optimizer_states"][0]["state"]  # the optimizer's moments, not a fresh one

    # The same command again is refused (the directory holds a run) ...
    again = run_cli("train.py", *COMMON, run_dir=run_dir, env=ENV)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert read_metrics(run_dir)["status"] == "interrupted"
    # ... and with resume=true continues it to the uninterrupted run's results.
    resumed = run_cli("train.py", *COMMON, "resume=true", run_dir=run_dir, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (run_dir / "train.log").read_text()
    assert_same_results(read_metrics(run_dir), reference)


def test_sigkill_resumes_from_the_last_periodic_checkpoint(tmp_path, reference):
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    every = ["callbacks.last_checkpoint.every_n_train_steps=3"]
    proc = start(*COMMON, *every, *pause(7, marker), run_dir=run_dir)
    wait_for(marker, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # steps 3 and 6 were saved; only step 7 is lost

    resumed = run_cli("train.py", *COMMON, *every, "resume=true", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_results(read_metrics(run_dir), reference)


def test_nan_loss_stops_with_step_and_phase_and_keeps_the_last_good_checkpoint(tmp_path):
    done = run_cli(
        "train.py",
        *COMMON,
        "optimizer.lr=1e30",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        run_dir=tmp_path,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: loss is "), lines[0]
    assert "at global step" in lines[0] and "phase 0: head unfrozen" in lines[0]
    assert "optimizer.lr" in lines[0]
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["error"] in lines[0]
    step = metrics["global_step"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] <= step  # saved before the non-finite loss, never after
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_a_second_run_in_a_live_run_directory_is_refused_and_touches_nothing(tmp_path):
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    first = start(*COMMON, "trainer.max_epochs=1", *pause(1, marker), run_dir=run_dir)
    wait_for(marker, first)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    second = run_cli("train.py", *FAST, "seed=1", run_dir=run_dir)
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert f"hydra.run.dir={run_dir.resolve()} is in use by a live run (pid {first.pid}" in lines[0]
    assert "give this run another hydra.run.dir" in lines[0]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    marker.unlink()  # let the first run finish
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert read_metrics(run_dir)["status"] == "completed"
    assert "seed: 1" not in (run_dir / ".hydra" / "config.yaml").read_text()

    finished = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    third = run_cli("train.py", *FAST, run_dir=run_dir)  # a finished run: refused too
    assert third.returncode == 2
    assert "already holds a run (metrics.json" in third.stderr and "resume=true" in third.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == finished


class Payload:
    """Unpickling this runs code: it creates the file named in its state."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_that_needs_code_to_unpickle_is_refused(tmp_path):
    ran = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "ftlab": {"model": Payload(str(ran))}}, evil)
    done = run_cli("train.py", *FAST, f"ckpt_path={evil}", run_dir=tmp_path / "run")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"ckpt_path={evil} is not a loadable checkpoint" in lines[0]
    assert not ran.exists()  # nothing in the file was executed
    assert not (tmp_path / "run" / "metrics.json").exists()
