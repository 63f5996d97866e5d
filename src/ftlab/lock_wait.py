"""How long a job waits on another job's lock, and when that lock is stale.

A lock is an ``flock`` whose file holds its holder's note (``pid <n> on <host>``). The kernel
releases it when the holder dies, but not always: a network file system can keep a dead node's
lock, and a forked child (a DataLoader worker) that inherited the descriptor keeps holding it
after its parent died. So a waiter takes over a lock whose holder, on this host, has been dead
for :data:`STALE_GRACE_S` (the note may lag the lock by a moment), and gives up after
``$FTLAB_CACHE_LOCK_TIMEOUT_S`` seconds (default two hours) with one line naming the holder.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from ftlab.errors import FtlabError

TIMEOUT_ENV = "FTLAB_CACHE_LOCK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 7200.0
STALE_GRACE_S = 5.0
_NOTE = re.compile(r"pid (\d+) on (\S+)")


def holder_dead(note: str) -> bool:
    """Whether the note names a process on this host that no longer runs."""
    found = _NOTE.search(note)
    if found is None or found.group(2) != socket.gethostname():
        return False  # no note yet, or another host: its liveness is unknown here
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise FtlabError(
            f"{TIMEOUT_ENV}={value!r} must be a number of seconds, e.g. {TIMEOUT_ENV}=3600"
        ) from None


def check_wait(lock: Path, note: str, waited_s: float, dead_since: float | None) -> bool:
    """After ``waited_s`` seconds on ``lock``: True to take it over (its holder has been dead
    for the grace period, ``dead_since`` seconds into the wait); raises after the timeout."""
    if dead_since is not None and waited_s - dead_since >= STALE_GRACE_S:
        return True
    limit = timeout_s()
    if waited_s >= limit:
        raise FtlabError(
            f"waited {waited_s:.0f} s for {note or 'another job'} to release {lock}: if that "
            f"job is gone, delete {lock}; or wait longer with {TIMEOUT_ENV}=<seconds> "
            f"(now {limit:g})"
        )
    return False
