"""What a committed report says about itself (provenance.json): the command, ftlab's commit,
the date and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml


def provenance(sweep_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """What a committed report must say about itself: the command that wrote it, ftlab's
    commit (and whether the working tree had uncommitted changes), the date and the machine;
    the sweep's own multirun overrides and when its jobs wrote their metrics.

    The machine is the one that wrote the report: metrics.json does not record the jobs' own.
    """
    source = Path(__file__).resolve().parent
    commit = git(source, "rev-parse", "HEAD")
    dirty = git(source, "status", "--porcelain", "--untracked-files=no")
    path = Path(sweep_dir)
    written = sorted(p.stat().st_mtime for p in path.glob("*/metrics.json"))
    config_file = path / "multirun.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    overrides = ((config or {}).get("hydra") or {}).get("overrides", {}).get("task")
    return {
        "command": command or "ftlab.sweeps.report.write_report(...)  # a library call",
        "ftlab_commit": commit,
        "uncommitted_changes": None if dirty is None else bool(dirty),
        "ftlab_version": _version("ftlab"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": _version("torch"),  # from metadata: importing torch costs seconds
            "platform": platform.platform(),
        },
        "sweep": {
            "dir": str(path),
            "overrides": overrides,
            "metrics_written": [_date(written[0]), _date(written[-1])] if written else None,
        },
    }


def git(where: Path, *args: str) -> str | None:
    """``git <args>`` run in ``where``; None outside a git checkout or without git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo); platform.processor() is empty on most Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
