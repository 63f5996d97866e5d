"""Console entry points: ``ftlab-train``, ``ftlab-eval``, ``ftlab-plan``, ``ftlab-export`` and
the root shims.

Only Hydra is imported here, so composing a config (``--cfg job``) never imports torch. A bad
input ends in one line on stderr that names the key or path, exit status 2, and no
``metrics.json``; ``HYDRA_FULL_ERROR=1`` shows the traceback instead. Every number is checked
(``ftlab.config_checks``) before the task, and so torch, is imported: by :class:`ConfigCheck`
before Hydra writes the run directory or starts a sweep, and by :func:`_run` in each job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import InterpolationValidationError

from ftlab import override_checks, trainer_keys
from ftlab.config_checks import check_config
from ftlab.errors import FtlabError, RunCompleted, RunInterrupted
from ftlab.options import conf_dir

trainer_keys.register()  # trainer/lightning: every lightning.Trainer keyword, before any compose

USER_ERROR_EXIT = 2
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def user_error(exc: BaseException) -> str | None:
    """The one-line message of a user error anywhere in the exception's cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FtlabError):
            return one_line(str(seen))
        if type(seen).__name__ == "MisconfigurationException":
            # Lightning's message for bad Trainer kwargs (devices, precision, strategy).
            return "trainer: " + " ".join(str(seen).split())
        seen = seen.__cause__ or seen.__context__
    return None


def say(line: str) -> None:
    """Write one line to stderr in a single write: DDP ranks share the stream, and print()'s
    separate writes of the text and its newline let two ranks' lines run together."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (captured)
        sys.stderr.write(line + "\n")


def one_line(message: str) -> str:
    """A message as one line; for an error re-raised from a DataLoader worker, the original.

    torch re-raises a worker's exception as the same type whose message is "Caught FtlabError
    in DataLoader worker process 0. Original Traceback ..." with the error as its last line.
    """
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        message = last.split(f"{FtlabError.__name__}: ", 1)[-1]
    message = ANSI_ESCAPE.sub("", message)  # torch's own messages embed bold text for terminals
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _record_failure(exc: BaseException, message: str | None) -> bool:
    """In a multirun, leave the reason in the job's directory so the sweep report can count it.

    Returns whether this is a multirun job (whose failure must not end the sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    status = {
        "status": "failed",
        "error": message or f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "overrides": list(HydraConfig.get().overrides.task),
    }
    (out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    return True


def config_values(node: Any) -> Any:
    """A config as plain values, leaving out the keys that cannot be resolved yet.

    Before a job starts, ``${hydra:runtime.output_dir}`` and the like have no value; they hold
    paths, not numbers, so the checks lose nothing by skipping them.
    """
    if isinstance(node, ListConfig):
        return [config_values(item) for item in node]  # one unresolvable item skips the list
    if not isinstance(node, DictConfig):
        return node
    out = {}
    for key in node:
        try:
            out[key] = config_values(node[key])
        except InterpolationValidationError as err:  # a value its typed key refuses: check it
            out[key] = err.value
        except Exception:  # an interpolation that resolves only inside the job
            continue
    return out


class ConfigCheck(Callback):
    """Hydra callback (conf/train.yaml, conf/eval.yaml): every number checked at composition.

    It runs before Hydra creates the run directory or launches a sweep, so a bad value leaves
    nothing behind and stops a sweep once rather than in every job. Values that a sweep varies
    are checked per job, in :func:`_run`. (Hydra turns an exception in a callback into a warning,
    hence the exit; with ``HYDRA_FULL_ERROR=1`` the check is left to ``_run``, which raises.)
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, sweep=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, sweep=True)  # the sweeper's and launcher's settings too

    @staticmethod
    def _check(config: DictConfig, sweep: bool) -> None:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return
        values = config_values(config)
        if not sweep:
            values.pop("hydra", None)  # a launcher's settings apply only to a sweep
        try:
            check_config(values)
        except FtlabError as err:
            say(f"error: {one_line(str(err))}")
            sys.exit(USER_ERROR_EXIT)


class RunDirGuard(Callback):
    """Hydra callback (conf/train.yaml): claim a single run's directory before Hydra writes its
    config and log there, so that a refused run leaves the other run's directory untouched
    (ftlab.rundir)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ftlab.run_record import start_record
        from ftlab.rundir import claim

        if config.get("plan"):
            return  # plan=true only prints the plan and writes schedule.yaml
        # What the run is started with: a resume must match the run's record of it.
        started = start_record(config_values(config), dict(config.hydra.runtime.choices))
        try:
            claim(
                Path(config.hydra.run.dir),
                bool(config.get("resume")),
                config.get("ckpt_path"),
                started=started,
            )
        except RunCompleted as done:  # read-only for a resume: say so, and succeed
            say(str(done))
            sys.exit(0)
        except FtlabError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            say(f"error: {err}")
            sys.exit(USER_ERROR_EXIT)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ftlab.rundir import release

        release(Path(config.hydra.run.dir))


def _run(task: str, cfg: DictConfig) -> Any:
    module_name, func_name = task.split(":")
    try:
        check_config(config_values(cfg))  # before importing the task: no torch for a bad number
        func: Callable[[DictConfig], Any] = getattr(import_module(module_name), func_name)
        return func(cfg)
    except RunCompleted as done:  # a sweep's job resumed after it completed: its value
        say(str(done))
        return done.value
    except RunInterrupted as exc:
        # Not a failure of this job: the state is saved. A sweep stops too (SystemExit passes
        # Hydra's launcher), since the signal was meant for the whole process.
        from ftlab.rundir import is_global_zero

        if is_global_zero():  # one line for the run, not one per DDP rank
            say(f"interrupted: {one_line(str(exc))}")
        sys.exit(exc.exit_code)
    except Exception as exc:
        message = user_error(exc)
        multirun = _record_failure(exc, message)
        # Hydra's launcher records a raised job as failed and runs the rest of the sweep.
        if message is None or multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        say(f"error: {message}")
        sys.exit(USER_ERROR_EXIT)


def _main(config_name: str, task: str) -> None:
    # Deprecation noise from inside Lightning 2.6 that users cannot act on.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    try:  # a misspelled trainer.<key>: one line naming the closest keyword, not Hydra's four
        trainer_keys.check_overrides(sys.argv[1:])
        override_checks.check_overrides(conf_dir(), config_name, sys.argv[1:])  # other groups
    except FtlabError as err:
        say(f"error: {err}")
        sys.exit(USER_ERROR_EXIT)

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        # Warnings go to the run's log (train.log and the console) instead of stderr: the log
        # keeps them with the run, and a failed run's stderr is its one error line.
        logging.captureWarnings(True)
        return _run(task, cfg)

    main()


def train_main() -> None:
    """``ftlab-train``: compose conf/train.yaml with overrides and run ``ftlab.train.train``."""
    _main("train", "ftlab.train:train")


def eval_main() -> None:
    """``ftlab-eval``: evaluate a checkpoint on any data config."""
    _main("eval", "ftlab.evaluate:evaluate")


def export_main() -> None:
    """``ftlab-export [export=merged|hf|timm|onnx] ckpt_path=...``: the checkpoint in the layout
    the next tool loads (ftlab.exports), LoRA folded in; ``merged`` unless one is named."""
    if not any(arg.startswith("export=") for arg in sys.argv[1:]):
        sys.argv.append("export=merged")
    eval_main()


def plan_main() -> None:
    """``ftlab-plan``: print the layer-group plan of a training config, without training."""
    sys.argv.append("plan=true")
    train_main()
