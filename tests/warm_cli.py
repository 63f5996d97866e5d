"""``train.py``/``eval.py`` in processes forked from a warm interpreter, for long tables of runs.

A fresh interpreter spends most of its ~8 s importing torch, Lightning, timm and transformers
before a bad input fails in a fraction of a second. Here a multiprocessing forkserver imports
them once, and every command runs in a process forked from it: its own pid, working directory,
environment, argv, stdout/stderr files and exit status, like ``conftest.run_cli`` but ~5x
faster. The forkserver is single-threaded when it forks, so no lock is inherited held.
What only a fresh interpreter shows (import-time warnings) is checked with ``run_cli``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.context import BaseContext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train.py": "train_main", "eval.py": "eval_main"}
PRELOAD = ["torch", "lightning", "timm", "transformers", "ftlab.train", "ftlab.evaluate"]

_context: BaseContext | None = None


def _forkserver() -> BaseContext:
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)  # type: ignore[attr-defined]
    return _context


def _child(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    """Run one entry point as ``python <script> <argv>`` would, then exit with its status."""
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    for fd, name in ((1, out), (2, err)):
        with open(name, "wb") as file:
            os.dup2(file.fileno(), fd)
    sys.argv = [str(ROOT / argv[0]), *argv[1:]]
    code = 0
    try:
        from ftlab import cli

        getattr(cli, ENTRY_POINTS[argv[0]])()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cli_warm(
    script: str, *overrides: str, run_dir: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``conftest.run_cli`` in a forked warm process: same arguments, same result type."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    argv = [script, *overrides, f"hydra.run.dir={run_dir}"]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        process = _forkserver().Process(  # type: ignore[attr-defined]
            target=_child, args=(argv, full_env, out, err)
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(argv, timeout)
        # A child that died before redirecting (e.g. while unpickling) left no files.
        stdout, stderr = (Path(f).read_text() if Path(f).exists() else "" for f in (out, err))
    return subprocess.CompletedProcess(argv, process.exitcode, stdout, stderr)
