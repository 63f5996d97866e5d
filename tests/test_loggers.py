"""The offline wandb note names a command that uploads the run."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.loggers import logger_kwargs

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
