"""Faults, through real ``train.py`` subprocesses and real signals: SIGTERM (a preemption) and
SIGKILL resume to the metrics of an uninterrupted run, a diverging loss stops with a status,
two runs never share a directory, and a checkpoint that needs code to unpickle is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli

from ftlab.errors import FtlabError
from ftlab.rundir import is_global_zero, is_whole, resolve, resume_command

TESTS = str(Path(__file__).parent)
# train.py imports test_faults.PauseAt from here (and ftlab from where this test's ftlab is)
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)}

# Two epochs of four steps; freeze=gradual unfreezes layer4.0 at epoch 1 (global step 4).
COMMON = [
    *FAST,
    "trainer.limit_train_batches=4",
    "freeze=gradual",
    "deterministic=true",
]


class PauseAt(L.Callback):
    """Test hook: after global step ``step`` (at a training batch's end, or at the first batch of
    the validation that follows it) write ``marker`` and wait there until a SIGTERM arrives or
    the test deletes the marker (at most ``timeout`` seconds)."""

    def __init__(self, step: int, marker: str, stage: str = "train", timeout: float = 90) -> None:
        self.step, self.marker, self.stage, self.timeout = step, Path(marker), stage, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stage == "train" and trainer.global_step == self.step:
            self._wait(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.stage == "val" and fitting and trainer.global_step == self.step and batch_idx == 0:
            self._wait(trainer)

    def _wait(self, trainer) -> None:
        self.marker.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.marker.exists():
            if signalled(trainer):
                return
            time.sleep(0.02)


def signalled(trainer) -> bool:
    """Whether a SIGTERM reached this process: ftlab's handler sets ``preempted``
    (ftlab.faults.Signals), Lightning's own sets ``received_sigterm``."""
    connector = trainer._signal_connector
    return bool(getattr(connector, "preempted", False) or trainer.received_sigterm)


def pause(step: int, marker: Path, stage: str = "train") -> list[str]:
    return [
        "+callbacks.pause._target_=test_faults.PauseAt",
        f"+callbacks.pause.step={step}",
        f"+callbacks.pause.marker={marker}",
        f"+callbacks.pause.stage={stage}",
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


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """The same metrics as the reference run and, bit for bit, the same final state.

    The metrics are the best checkpoint's, which may predate an interruption; the final weights
    and BatchNorm statistics (``last.ckpt``, written at the end of training) cannot.
    """
    run, reference = read_metrics(run_dir), read_metrics(reference_dir)
    assert run["status"] == "completed"
    for stage in ("val", "test"):
        for key in ("acc", "f1", "loss"):
            assert run[stage][key] == pytest.approx(reference[stage][key], rel=1e-5, abs=1e-6), (
                stage,
                key,
            )
    assert [p["unfrozen"] for p in run["phases"]] == [p["unfrozen"] for p in reference["phases"]]
    assert Path(run["best_checkpoint"]).name == Path(reference["best_checkpoint"]).name
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(reference_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"]
    differ = [
        k for k, v in expected["state_dict"].items() if not torch.equal(final["state_dict"][k], v)
    ]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run's: {differ[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The directory of the uninterrupted run the resumed ones must match."""
    run_dir = tmp_path_factory.mktemp("reference")
    done = run_cli("train.py", *COMMON, run_dir=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


# (where the signal lands, after which global step; the step whose end saves and stops)
SIGTERM_CASES = {
    "mid-epoch": ("train", 6, 6),  # epoch 1, phase 1, batch 2 of 4
    "during validation": ("val", 4, 5),  # held to the end of epoch 1's first batch
    "during the last validation": ("val", 8, 8),  # held to the end of training
}


@pytest.mark.slow
@pytest.mark.parametrize("stage, step, saved", SIGTERM_CASES.values(), ids=SIGTERM_CASES)
def test_sigterm_saves_exits_cleanly_and_resume_matches(tmp_path, reference, stage, step, saved):
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    proc = start(*COMMON, *pause(step, marker, stage), run_dir=run_dir)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted: SIGTERM at global step {saved} "), lines[0]
    command = lines[0].split("continue with: ", 1)[1]
    assert command.endswith(f"resume=true hydra.run.dir={run_dir.resolve()}")
    assert "freeze=gradual" in command and "+callbacks.pause.step" in command
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and stopped["global_step"] == saved
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == saved
    assert ckpt["callbacks"]["ftlab.PhaseCallback"]["applied"] == 1  # same phase on resume
    assert ckpt["optimizer_states"][0]["state"]  # the optimizer's moments, not a fresh one

    # The same command again is refused (the directory holds a run) ...
    again = run_cli("train.py", *COMMON, run_dir=run_dir, env=ENV)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert read_metrics(run_dir)["status"] == "interrupted"
    # ... and with resume=true continues it to the uninterrupted run's results.
    resumed = run_cli("train.py", *COMMON, "resume=true", run_dir=run_dir, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    restored = (
        f"Restoring states from the checkpoint path at {run_dir.resolve()}/checkpoints/last.ckpt"
    )
    assert restored in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_ctrl_c_saves_records_interrupted_and_prints_the_resume_command(tmp_path):
    """SIGINT (Ctrl-C) ends like SIGTERM, not as Lightning's bare KeyboardInterrupt."""
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    proc = start(*COMMON, *pause(6, marker), run_dir=run_dir)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("interrupted: SIGINT at global step 6 "), lines[0]
    assert lines[0].endswith(f"resume=true hydra.run.dir={run_dir.resolve()}")
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and stopped["reason"] == "SIGINT"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_periodic_checkpoint(tmp_path, reference):
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    every = ["callbacks.last_checkpoint.every_n_train_steps=2"]
    proc = start(*COMMON, *every, *pause(7, marker), run_dir=run_dir)
    wait_for(marker, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # steps 2, 4 (at the epoch's end), 6; only step 7 is lost

    resumed = run_cli("train.py", *COMMON, *every, "resume=true", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    restored = (
        f"Restoring states from the checkpoint path at {run_dir.resolve()}/checkpoints/last.ckpt"
    )
    assert restored in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, reference)


# lr=1e30: the first update sends the weights to ~1e30, the next overflows them to inf, and the
# loss after that is nan. Saving every step, the save of the overflowed weights is what stops.
DIVERGING = {
    "saving every step": (["callbacks.last_checkpoint.every_n_train_steps=1"], r"weight \S+"),
    "no checkpoint yet": ([], "loss"),
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, what", DIVERGING.values(), ids=DIVERGING)
def test_nan_or_inf_stops_with_step_and_phase_and_keeps_the_last_good_checkpoint(
    tmp_path, overrides, what
):
    done = run_cli("train.py", *COMMON, "optimizer.lr=1e30", *overrides, run_dir=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.match(rf"error: {what} is (nan|inf) at global step \d+ ", lines[0]), lines[0]
    assert "(epoch 0, phase 0: head unfrozen): training stopped" in lines[0]
    assert "lower optimizer.lr" in lines[0]
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["error"] in lines[0]
    last = tmp_path / "checkpoints" / "last.ckpt"
    if not overrides:
        assert "no checkpoint was saved before it" in lines[0] and not last.exists()
        return
    ckpt = torch.load(last, weights_only=True)
    assert f"{last} (global step {ckpt['global_step']}) is the last saved state" in lines[0]
    assert ckpt["global_step"] < metrics["global_step"]
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)


class PoisonBuffer(L.Callback):
    """Test hook: after global step ``step`` a BatchNorm's running_var becomes inf (as an
    overflowed update leaves it) while the training loss, on batch statistics, stays finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            bn = next(m for m in pl_module.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


class PoisonValidation(L.Callback):
    """Test hook: the inputs of the first validation during fit become nan."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            batch[0].fill_(float("nan"))


POISONED = {
    "BatchNorm running_var": (
        ["+callbacks.poison._target_=test_faults.PoisonBuffer", "+callbacks.poison.step=2"],
        r"error: buffer \S*running_var is inf at global step \d+ ",
    ),
    "validation loss": (
        ["+callbacks.poison._target_=test_faults.PoisonValidation"],
        r"error: validation loss is nan at global step 4 \(epoch 0, ",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, line", POISONED.values(), ids=POISONED)
def test_a_poisoned_state_is_never_saved_nor_pointed_at(tmp_path, overrides, line):
    every = ["callbacks.last_checkpoint.every_n_train_steps=1", "freeze=none"]
    done = run_cli("train.py", *COMMON, *every, *overrides, run_dir=tmp_path, env=ENV)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.match(line, lines[0]), lines[0]
    assert read_metrics(tmp_path)["status"] == "failed"
    saved = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    for path in saved:  # whatever was saved, and what the line points at, is finite
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    assert not any(p.name.startswith("best") for p in saved)  # no validation was finite


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_checkpoint_that_needs_code_to_unpickle_is_refused(tmp_path):
    ran = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "ftlab": {"model": Payload(str(ran))}}, evil)
    done = run_cli("train.py", *FAST, f"ckpt_path={evil}", run_dir=tmp_path / "run")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert re.search(
        rf"ckpt_path={evil} needs code \(\S+\) to unpickle, and ftlab refuses", lines[0]
    ), lines[0]
    assert "\x1b" not in lines[0]  # torch's bold text, stripped for a plain line
    assert not ran.exists()  # nothing in the file was executed
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- the run-directory rules, without a run ------------------------------------------------


def holding(run_dir: Path, *files: str) -> Path:
    """``run_dir`` with these files; a ``.ckpt`` is a whole (tiny) torch archive."""
    for name in files:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".ckpt"):
            torch.save({"global_step": 1}, run_dir / name)
        else:
            (run_dir / name).write_text("{}")
    return run_dir


def test_resume_resolves_the_newest_checkpoint_and_a_requeued_slurm_job_resumes(
    tmp_path, monkeypatch
):
    run_dir = holding(tmp_path, "metrics.json", "checkpoints/last.ckpt")
    assert resolve(tmp_path, True, None).ckpt_path == str(tmp_path / "checkpoints/last.ckpt")
    os.utime(holding(tmp_path, "hpc_ckpt_1.ckpt") / "hpc_ckpt_1.ckpt", (2e9, 2e9))
    assert resolve(run_dir, True, None).ckpt_path == str(tmp_path / "hpc_ckpt_1.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve(run_dir, False, None).ckpt_path == str(tmp_path / "hpc_ckpt_1.ckpt")
    inside = str(tmp_path / "checkpoints/last.ckpt")
    assert resolve(run_dir, False, inside).ckpt_path == inside  # ckpt_path of this very run


NOTHING_SAVED = {
    "interrupted before its first checkpoint": ["metrics.json"],
    "killed before anything": [".hydra/config.yaml"],
    "never started": [],
}


@pytest.mark.parametrize("files", NOTHING_SAVED.values(), ids=NOTHING_SAVED)
def test_resume_with_nothing_saved_starts_from_the_beginning_and_says_so(tmp_path, files):
    run = resolve(holding(tmp_path, *files), True, None)
    assert run.ckpt_path is None
    assert run.note == (
        f"resume=true: nothing saved in {tmp_path} yet (no checkpoints/last.ckpt): "
        "starting the run from the beginning"
    )


def test_a_torn_checkpoint_is_never_resumed_from(tmp_path):
    """A checkpoint cut short at any byte is refused with one line, never loaded."""
    whole = holding(tmp_path / "whole", "checkpoints/last.ckpt") / "checkpoints" / "last.ckpt"
    data = whole.read_bytes()
    assert is_whole(whole)
    torn = tmp_path / "torn"
    for cut in sorted({1, 100, len(data) // 2, len(data) - 22, len(data) - 1}):
        last = torn / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_bytes(data[:cut])
        assert not is_whole(last), cut
        with pytest.raises(FtlabError, match=r"last\.ckpt is not a whole checkpoint"):
            resolve(torn, True, None)


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_whole_one(tmp_path):
    run_dir = holding(tmp_path, "checkpoints/best-epoch000.ckpt", "checkpoints/last.ckpt")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:-30])  # torn, and the newest
    run = resolve(run_dir, True, None)
    assert run.ckpt_path == str(run_dir / "checkpoints" / "best-epoch000.ckpt")
    assert run.note == (
        f"resume=true: {last} is not a whole checkpoint (cut short mid-write); resuming from "
        f"the previous whole one, {run.ckpt_path}"
    )


# (files in the run directory, resume, ckpt_path) -> the error
REFUSED = {
    "a finished run": (["metrics.json"], False, None, r"already holds a run \(metrics\.json\)"),
    "a killed run": (["checkpoints/last.ckpt"], False, None, "already holds a run"),
    "another run's ckpt_path": (["metrics.json"], False, "/elsewhere/last.ckpt", "already holds"),
    "resume and ckpt_path": ([], True, "x.ckpt", "resume=true and ckpt_path=x.ckpt are both set"),
}


@pytest.mark.parametrize("files, resume, ckpt_path, match", REFUSED.values(), ids=REFUSED)
def test_run_directory_refusals(tmp_path, files, resume, ckpt_path, match):
    with pytest.raises(FtlabError, match=match):
        resolve(holding(tmp_path, *files), resume, ckpt_path)


RANKS = {
    "single process": ({}, True),
    "Lightning DDP child": ({"LOCAL_RANK": "1"}, False),
    "second node": ({"NODE_RANK": "1"}, False),
    "torchrun rank 0": ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    "SLURM task 3": ({"SLURM_PROCID": "3"}, False),
}


@pytest.mark.parametrize("env, zero", RANKS.values(), ids=RANKS)
def test_only_global_rank_zero_locks(monkeypatch, env, zero):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_global_zero() is zero


def test_resume_command_keeps_the_overrides_and_names_the_directory(tmp_path):
    overrides = ["model=test_cnn", "ckpt_path=a.ckpt", "optimizer.lr=1e-3", "data.ood=[a, b]"]
    command = resume_command(tmp_path, overrides)
    assert command.endswith(
        f"model=test_cnn optimizer.lr=1e-3 'data.ood=[a, b]' resume=true hydra.run.dir={tmp_path}"
    )
