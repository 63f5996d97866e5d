"""Run directories the OS refuses (a too-long name, an unwritable or read-only place): one line
before anything starts, through the real train.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import FAST, run_cli


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_a_path_component_longer_than_the_file_system_allows(tmp_path):
    run_dir = tmp_path / ("x" * 265) / "run"
    line = one_line(run_cli("train.py", *FAST, run_dir=run_dir))
    assert "is 265 characters, longer than this file system allows (255): shorten it" in line


@pytest.fixture
def unwritable(tmp_path):
    """A directory this user cannot write: read-only by permissions, or (root ignores those) a
    read-only tmpfs mounted there."""
    place = tmp_path / "locked"
    place.mkdir()
    if os.geteuid() != 0:
        place.chmod(0o500)
        yield place, "is not writable by this user"
        place.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(place)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield place, "is read-only"
    subprocess.run(["umount", str(place)], check=False)


@pytest.mark.parametrize("inside", [".", "run", "parent/run"])
def test_an_unwritable_run_directory_or_parent(unwritable, inside):
    place, why = unwritable
    run_dir = place / inside
    line = one_line(run_cli("train.py", *FAST, run_dir=run_dir))
    assert line.startswith(f"error: hydra.run.dir={run_dir.resolve()}: "), line
    assert why in line and "give hydra.run.dir a directory you can write" in line
    assert not any(Path(place).iterdir())
