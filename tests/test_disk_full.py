"""A full disk at a checkpoint save: one line naming the path, the free space and what was kept;
metrics.json says failed; the previous checkpoint stays whole. On a real full file system: a
6 MB tmpfs holds epoch 0's two checkpoints but not epoch 1's (root only)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import FAST, read_metrics, run_cli

from ftlab.rundir import is_whole


@pytest.fixture
def small_disk(tmp_path):
    place = tmp_path / "disk"
    place.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(place)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield place
    subprocess.run(["umount", str(place)], check=False)


@pytest.mark.slow
def test_disk_full_at_a_save_is_one_line_and_keeps_the_last_whole_checkpoint(small_disk):
    run_dir = small_disk / "run"
    done = run_cli("train.py", *FAST, run_dir=run_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.match(
        rf"error: no space left on the device writing {run_dir}/checkpoints/\S+\.ckpt "
        rf"\([\d.]+ [KM]B free in {run_dir}/checkpoints\): {run_dir}/checkpoints/last\.ckpt "
        r"\(global step 3\) is kept whole; .* continue with resume=true$",
        lines[0],
    ), lines[0]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "failed" and metrics["error"] in lines[0]
    assert is_whole(run_dir / "checkpoints" / "last.ckpt")
    assert not list((run_dir / "checkpoints").glob(".*.partial"))
