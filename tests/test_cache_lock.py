"""The feature cache's lock: a waiter gives up after the timeout with one line naming the
holder, and takes over a lock whose holder on this host is dead (a lock the kernel kept: an
inherited descriptor, a network file system). A real second process holds the flock."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlab.errors import FtlabError
from ftlab.finetuning.features.store import _one_job_computes

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.pwrite(fd, sys.argv[2].encode(), 0)
print("held", flush=True)
time.sleep(60)
"""


def hold(lock: Path, note: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), note], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_live_holder_times_out_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_CACHE_LOCK_TIMEOUT_S", "1")
    path = tmp_path / "features.safetensors"
    holder = hold(tmp_path / "features.safetensors.lock", "")
    note = f"pid {holder.pid} on {socket.gethostname()}"
    holder.kill()
    holder = hold(tmp_path / "features.safetensors.lock", note)  # alive, named in its note
    try:
        with (
            pytest.raises(
                FtlabError,
                match=rf"waited \d+ s for {note} to release \S+\.lock: "
                r"if that job is gone, delete",
            ),
            _one_job_computes(path),
        ):
            pass
    finally:
        holder.kill()


def test_a_lock_whose_holder_is_dead_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    path = tmp_path / "features.safetensors"
    # The flock is held (as by a forked child) but the note's process is gone.
    holder = hold(tmp_path / "features.safetensors.lock", f"pid {dead} on {socket.gethostname()}")
    try:
        started = time.monotonic()
        with _one_job_computes(path):
            took = time.monotonic() - started
        assert 4 <= took < 30, took  # after the grace period, well before any timeout
    finally:
        holder.kill()
