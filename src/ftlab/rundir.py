"""The run directory: one run at a time, never over another run, and what to resume from.

- A run holds an exclusive ``fcntl.flock`` on ``<run_dir>/.lock`` for its lifetime (the kernel
  releases it when the process dies, SIGKILL included). A second run in the same directory
  refuses at once; for ``train.py`` the check runs as a Hydra callback (``ftlab.cli.RunDirGuard``,
  in conf/train.yaml), before Hydra writes the second run's ``.hydra/`` and log there.
- A directory that holds a run (``metrics.json``, ``checkpoints/*.ckpt``, Lightning's
  ``hpc_ckpt_*.ckpt``) is refused to a new run: ``resume=true`` continues it.
- ``resume=true`` continues from the newest of ``checkpoints/last.ckpt`` and
  ``hpc_ckpt_*.ckpt``; ``ckpt_path=<file>`` from that file. A requeued SLURM job
  (``SLURM_RESTART_COUNT`` > 0, or an HPC checkpoint in the directory of a SLURM batch job:
  Lightning's own rule) resumes the same way without asking. With nothing saved yet (a job
  preempted before its first checkpoint) the run starts from the beginning, and says so.
- A checkpoint is resumed from only if it is whole: ftlab writes them atomically
  (``ftlab.faults.AtomicCheckpointIO``), and a file that is not a complete archive anyway (cut
  short by a full disk, or by a writer that is not atomic) is refused, never loaded half. The
  hidden ``.<name>.<pid>.partial`` files a killed writer leaves are removed on claiming.

Only global rank 0 locks and checks: Lightning's DDP launcher re-runs ``train.py`` for the other
ranks with the same ``hydra.run.dir``. Nothing here imports torch, so a refusal costs nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError, RunCompleted
from ftlab.run_record import check_resume_matches, read_record, write_record

log = logging.getLogger("ftlab")

LOCK_NAME = ".lock"
LAST = Path("checkpoints") / "last.ckpt"  # also where a SIGTERM'd run saves (ftlab.faults)

# Locks this process holds, by resolved run directory: the Hydra callback takes the lock and
# train() in the same process finds it here (a second flock of the same file would fail).
_held: dict[Path, int] = {}
# Run directories whose newest checkpoint was torn: (that file, the one resumed instead).
_torn: dict[Path, tuple[Path, Path]] = {}
# The overrides each claimed run was started with, for the command that resumes it.
_overrides: dict[Path, list[str]] = {}


@dataclass
class RunDir:
    """A claimed run directory and the checkpoint the run continues from (None: a new run)."""

    path: Path
    ckpt_path: str | None = None
    note: str | None = None  # logged when the run starts (a resume with nothing to resume)


def is_global_zero() -> bool:
    """Whether the launcher's environment makes this process global rank 0.

    Lightning's DDP children get ``LOCAL_RANK``, torchrun ``RANK``, SLURM ``SLURM_PROCID``, the
    other nodes of a multi-node run ``NODE_RANK``: rank 0 is where all of them are 0 or unset.
    """
    keys = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return all(os.environ.get(k, "0").strip() in ("", "0") for k in keys)


def slurm_requeued(run_dir: Path) -> bool:
    """Whether this is a requeued SLURM job, which continues its directory's run by itself."""
    if os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0"):
        return True
    # Lightning resumes from hpc_ckpt_*.ckpt by itself in a SLURM batch job (its
    # SLURMEnvironment.detect(); not imported, which would import torch).
    batch = "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )
    return batch and any(run_dir.glob("hpc_ckpt_*.ckpt"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest of ``checkpoints/last.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt``.

    A newest file that is not whole (a writer that is not atomic, killed mid-write) falls back
    to the newest whole one among them and the run's other checkpoints (``best-*.ckpt`` hold
    the full state too); :func:`fallback_note` says so. None whole at all: refused.
    """
    found = [p for p in [run_dir / LAST, *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    if is_whole(newest):
        return newest
    others = {*found, *(run_dir / "checkpoints").glob("*.ckpt")} - {newest}
    whole = [p for p in others if p.is_file() and is_whole(p)]
    if not whole:
        raise FtlabError(
            f"resume=true: {newest} is not a whole checkpoint (it ends before its archive's "
            "directory: written by a process killed mid-write, or the disk was full), and no "
            "other whole checkpoint is in the run; move it away to start the run again"
        )
    previous = max(whole, key=lambda p: p.stat().st_mtime_ns)
    _torn[run_dir] = (newest, previous)
    return previous


def fallback_note(run_dir: Path) -> str | None:
    """The line a resume that skipped a torn newest checkpoint logs (None: it did not)."""
    if run_dir not in _torn:
        return None
    torn, previous = _torn[run_dir]
    return (
        f"resume=true: {torn} is not a whole checkpoint (cut short mid-write); resuming from "
        f"the previous whole one, {previous}"
    )


def is_whole(path: Path) -> bool:
    """Whether ``path`` is a complete ``torch.save`` archive (a zip whose central directory, at
    the very end, lists its pickle): a file cut short at any byte is not. Reads no tensor."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def remove_partials(run_dir: Path) -> None:
    """Delete the hidden partial checkpoints a killed writer left (AtomicCheckpointIO)."""
    for partial in [*run_dir.glob(".*.partial"), *run_dir.glob("checkpoints/.*.partial")]:
        partial.unlink(missing_ok=True)


def run_evidence(run_dir: Path) -> list[str]:
    """What shows that the directory already holds a run (empty: it does not)."""
    found = [run_dir / "metrics.json", *sorted((run_dir / "checkpoints").glob("*.ckpt"))]
    found += sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    return [str(p.relative_to(run_dir)) for p in found if p.is_file()]


def resume_command(run_dir: Path, overrides: list[str] | None = None) -> str:
    """The command that continues this run: the same overrides, resume=true, this directory."""
    if overrides is None:
        overrides = _overrides.get(run_dir.resolve(), [])
    dropped = ("resume=", "ckpt_path=", "+resume=", "+ckpt_path=")
    kept = [o for o in overrides if not o.startswith(dropped)]
    program = sys.argv[0] if sys.argv and sys.argv[0] else "train.py"
    head = ["python", program] if program.endswith(".py") else [Path(program).name]
    words = [*head, *kept, "resume=true", f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(w) for w in words)


def resolve(
    run_dir: Path,
    resume: bool,
    ckpt_path: str | None,
    check: bool = True,
    started: Mapping[str, Any] | None = None,
    done_checked: bool = False,
) -> RunDir:
    """What the run continues from, or an error saying why it may not start here.

    ``check=False`` skips the refusal of a directory that holds a run (DDP ranks other than 0,
    and direct ``train(cfg)`` calls, whose caller owns the directory). ``done_checked``: the
    completed-run check was made already (by RunDirGuard, or rank 0 for the other ranks).
    """
    if resume and ckpt_path:
        raise FtlabError(
            f"resume=true and ckpt_path={ckpt_path} are both set: resume=true continues "
            f"{run_dir / LAST}; drop one of them"
        )
    evidence = run_evidence(run_dir) if check else []
    if ckpt_path:
        inside = Path(ckpt_path).expanduser().resolve().is_relative_to(run_dir)
        if evidence and not inside:
            raise _taken(run_dir, evidence)
        return RunDir(run_dir, str(ckpt_path))
    if (resume or slurm_requeued(run_dir)) and not done_checked:
        completed(run_dir, started)
    if resume or slurm_requeued(run_dir):
        latest = latest_checkpoint(run_dir)
        if latest is not None:
            return RunDir(run_dir, str(latest), note=fallback_note(run_dir))
        # Stopped before its first checkpoint (a requeued job sets resume by itself): start it
        # again, and say so, since a mistyped hydra.run.dir lands here too.
        note = (
            f"resume=true: nothing saved in {run_dir} yet (no {LAST}): "
            "starting the run from the beginning"
        )
        return RunDir(run_dir, note=note)
    if evidence:
        raise _taken(run_dir, evidence)
    return RunDir(run_dir)


def completed(run_dir: Path, started: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`RunCompleted` if the run in ``run_dir`` completed: it is read-only for a
    resume, which would re-run its test and rewrite its records. A resume that asks for more
    training (``started``, the composed config's start record, with a larger
    ``trainer.max_epochs`` or ``trainer.max_steps`` than the run's own) continues it."""
    if started is not None and _trains_longer(run_dir, started):
        return
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return
    if not isinstance(metrics, dict) or metrics.get("status") != "completed":
        return
    value = (metrics.get("optimized_metric") or {}).get("value")
    shown = f" ({metrics['optimized_metric']['name']} {value})" if value is not None else ""
    raise RunCompleted(
        f"resume=true: the run in {run_dir} has completed{shown}; nothing to resume, and "
        "nothing of it was changed (start another run with another hydra.run.dir)",
        value,
    )


def _trains_longer(run_dir: Path, started: Mapping[str, Any]) -> bool:
    """Whether ``started`` asks for more epochs or steps than the run in ``run_dir`` had."""
    recorded = read_record(run_dir) or {}
    before = (recorded.get("settings") or {}).get("trainer") or {}
    now = (started.get("settings") or {}).get("trainer") or {}
    for key in ("max_epochs", "max_steps"):
        old, new = before.get(key), now.get(key)
        if isinstance(old, int) and isinstance(new, int) and old >= 0 and (new > old or new < 0):
            return True
    return False


def _taken(run_dir: Path, evidence: list[str]) -> FtlabError:
    return FtlabError(
        f"hydra.run.dir={run_dir} already holds a run ({', '.join(evidence[:3])}): continue it "
        "with resume=true, or give this run another hydra.run.dir"
    )


def _lock(run_dir: Path) -> int:
    """Take ``<run_dir>/.lock`` without waiting; the open descriptor holds it."""
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's note stays
    except OSError as err:  # before anything else is written or started
        raise FtlabError(refused_path(run_dir, err)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = path.read_text().strip() or "another process"
        os.close(fd)
        raise FtlabError(
            f"hydra.run.dir={run_dir} is in use by a live run ({holder}): give this run another "
            "hydra.run.dir, or wait for that one to end and continue it with resume=true"
        ) from None
    return fd


def refused_path(run_dir: Path, err: OSError) -> str:
    """One line for a run directory the OS refuses to create or write, naming why."""
    key = f"hydra.run.dir={run_dir}"
    if err.errno == errno.ENAMETOOLONG:
        longest = max(run_dir.parts, key=len)
        limit = _name_max(run_dir)
        if len(longest) > limit:
            return (
                f"{key}: the path component {longest[:40]}... is {len(longest)} characters, "
                f"longer than this file system allows ({limit}): shorten it"
            )
        return f"{key} is {len(str(run_dir))} characters, longer than the OS allows: shorten it"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = Path(err.filename) if err.filename else run_dir
        why = "is read-only" if err.errno == errno.EROFS else "is not writable by this user"
        return (
            f"{key}: {where} {why} ({os.strerror(err.errno)}): give hydra.run.dir a directory "
            "you can write"
        )
    if err.errno == errno.ENOSPC:
        return f"{key}: no space left on the device: free some, or give another hydra.run.dir"
    return f"{key} cannot be created: {os.strerror(err.errno or 0)} ({err.filename or run_dir})"


def _name_max(path: Path) -> int:
    """The longest file name allowed where ``path`` would be (255 on most file systems)."""
    for parent in [path, *path.parents]:
        try:
            return os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):  # not there yet (or itself too long): its parent
            continue
    return 255


def claim(
    run_dir: Path,
    resume: bool,
    ckpt_path: str | None,
    check: bool = True,
    started: dict | None = None,
) -> RunDir:
    """Lock (global rank 0 only; once per process) and resolve ``run_dir``.

    ``started`` (ftlab.run_record.start_record of the composed config): a resume from a
    checkpoint of this run must match the run's own record, and a run that starts here records
    it. Every check comes before the first write.
    """
    run_dir = run_dir.resolve()
    if not is_global_zero():
        return resolve(run_dir, resume, ckpt_path, check=False, done_checked=True)
    if run_dir in _held:  # claimed by RunDirGuard in this process: checked already
        return resolve(run_dir, resume, ckpt_path, check=False, done_checked=True)
    fd = _lock(run_dir)
    try:
        run = resolve(run_dir, resume, ckpt_path, check, started)
        continues = run.ckpt_path is not None and Path(run.ckpt_path).resolve().is_relative_to(
            run_dir
        )
        if started is not None and continues:
            check_resume_matches(run_dir, started)
    except BaseException:
        os.close(fd)
        raise
    if started is not None and not continues:
        write_record(run_dir, started)
    elif started is not None and _trains_longer(run_dir, started):
        # The record keeps the length the run is now trained to: resuming it again at that
        # length finds it completed.
        record = read_record(run_dir) or {}
        length = (started.get("settings") or {}).get("trainer") or {}
        trainer = record.setdefault("settings", {}).setdefault("trainer", {})
        trainer.update({k: length[k] for k in ("max_epochs", "max_steps") if k in length})
        write_record(run_dir, record)
    remove_partials(run_dir)  # no writer is alive: this process holds the lock
    # Written only once every check passed, so a refused run leaves the note as it was.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[run_dir] = fd
    return run


def release(run_dir: Path) -> None:
    """Give the lock back (a no-op if this process does not hold it)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)


@contextmanager
def claim_run_dir(
    run_dir: Path,
    resume: bool = False,
    ckpt_path: str | None = None,
    check: bool = False,
    overrides: list[str] | None = None,
) -> Iterator[RunDir]:
    """``train()``'s run directory for the run's lifetime: locked, resume resolved.

    Under ``train.py`` RunDirGuard has claimed and checked it already (a single run) or this
    checks it (``check``: a multirun job, whose failure the sweep records); a direct call only
    locks it. ``overrides`` are the run's command-line overrides, for the command that resumes
    it after a preemption.
    """
    run_dir = Path(run_dir).resolve()
    took = run_dir not in _held
    run = claim(run_dir, resume, ckpt_path, check=check)
    _overrides[run_dir] = list(overrides or [])
    if run.note and is_global_zero():
        log.info("%s", run.note)
    try:
        yield run
    finally:
        _overrides.pop(run_dir, None)
        if took:
            release(run_dir)
