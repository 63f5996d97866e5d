"""Shared pieces of the benchmarks: the result line, a model with its plan, timing, real ftlab
runs (in this process from a composed config, or through the CLI in a child process) and
:class:`Probe`, the callback that records what a run did and when."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ftlab.sweeps.report import cpu_name, git

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def report(bench: str, case: str, value: float, unit: str, target: str, ok: bool | None, **extra):
    """Print one JSON line (machine) and one human line; return the record."""
    record = {
        "bench": bench,
        "case": case,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "ok": ok,
        **extra,
    }
    print(json.dumps(record), flush=True)
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"# {bench:9s} {case:42s} {value:10.4g} {unit:8s} target {target}{verdict}", flush=True)
    return record


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "date": time.strftime("%Y-%m-%d"),
        # Other work on the machine inflates every timing: check it before trusting one.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def elapsed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each case, run in turns so that machine noise hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(elapsed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def build_module(model: str, freeze: str, image_size: int, num_classes: int = 10, **opt):
    """ftlab's classifier through its plain-Python API (timm, random init): built whole, plan
    and phase callback included."""
    import ftlab

    backbone = ftlab.build_backbone(model, source="timm", pretrained=False)
    optimization = ftlab.Optimization(lr=1e-3, weight_decay=0.05, **opt)
    return ftlab.Classifier(backbone, num_classes, freeze=freeze, optimization=optimization)


def write_results(name: str, records: list[dict], **extra: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    # What the results came from (tests/test_results_honesty.py holds every report to it).
    command = " ".join([Path(sys.executable).name, *sys.argv])
    provenance = {"command": command, "ftlab_commit": git(ROOT, "rev-parse", "HEAD")}
    body = {"machine": machine(), **provenance, **extra, "results": records}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def quiet() -> None:
    """Keep Lightning's banners and known deprecation noise out of the bench output."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")


# --- measurements inside a run --------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far: ``VmHWM`` on Linux (the memory map's high
    water mark, which :func:`reset_peak_rss` resets), else ``ru_maxrss``. ``ru_maxrss`` also keeps
    the high water mark at the exit of any thread, so it can hold a peak from before a reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def current_rss_bytes() -> int | None:
    """This process's resident set size now (Linux), else None."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``clear_refs`` 5); whether it did."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds per parameter (AdamW: exp_avg, exp_avg_sq,
    step); parameters that never had a gradient have no state."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


class Probe(L.Callback):
    """Records a run's timings and writes them as JSON to ``path`` when training ends.

    Usable from the CLI (``+callbacks.bench._target_=common.Probe +callbacks.bench.path=...``
    with ``benchmarks/`` on PYTHONPATH) or passed to a Trainer. Records: wall-clock ``time.time()``
    of the first training batch, per-epoch seconds (``epoch_s``: train loop plus validation,
    ``val_s``: the validation part), per-step seconds (``step_s``: on_train_batch_start to
    on_train_batch_end, i.e. forward, backward and optimizer step; the data loading before a
    batch is not in it), optimizer-state bytes, and RSS: the peak and current RSS at train
    start, then (the peak reset there) the peak during training.
    With ``exit_at_first_step`` the process writes the file at the first training batch and
    exits at once (status 0); with ``exit_at_end``, when training ends (no validate, test or
    post-fit evaluations). ``feature_cache`` is the run's FeatureCache report (metrics.json's).
    """

    def __init__(
        self, path: str | None = None, exit_at_first_step: bool = False, exit_at_end: bool = False
    ) -> None:
        self.path = path
        self.exit_at_first_step = exit_at_first_step
        self.exit_at_end = exit_at_end
        self.record: dict[str, Any] = {"epoch_s": [], "val_s": [], "step_s": [], "step_epoch": []}
        self._epoch = self._step = self._val = 0.0
        self._val_epoch: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.record.setdefault("setup_time", time.time())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["train_start_time"] = time.time()
        # Imports, model, data (and cached features) are in by now. Their transient peak (data
        # setup) can exceed training's, so the peak is reset here (Linux) and the end-of-
        # training peak is then training's own.
        self.record["peak_rss_at_train_start_bytes"] = peak_rss_bytes()
        self.record["rss_at_train_start_bytes"] = current_rss_bytes()
        self.record["peak_rss_reset"] = reset_peak_rss()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch, self._val_epoch = time.perf_counter(), 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "first_step_time" not in self.record:
            self.record["first_step_time"] = time.time()
            if self.exit_at_first_step:
                self.write()
                os._exit(0)
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["step_s"].append(time.perf_counter() - self._step)
        self.record["step_epoch"].append(trainer.current_epoch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_epoch is not None and trainer.state.fn == "fit":
            self._val_epoch += time.perf_counter() - self._val

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook: epoch_s includes it.
        self.record["epoch_s"].append(time.perf_counter() - self._epoch)
        self.record["val_s"].append(self._val_epoch or 0.0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["optimizer_state_bytes"] = sum(
            optimizer_state_bytes(o) for o in trainer.optimizers
        )
        self.record["trainable_params"] = sum(
            p.numel() for p in pl_module.parameters() if p.requires_grad
        )
        self.record["total_params"] = sum(p.numel() for p in pl_module.parameters())
        self.record["peak_rss_bytes"] = peak_rss_bytes()
        cache = getattr(trainer, "datamodule", None)
        self.record["feature_cache"] = cache.report() if hasattr(cache, "report") else None
        self.write()
        if self.exit_at_end:
            os._exit(0)

    def write(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.record))


# --- real ftlab runs --------------------------------------------------------------------------


def compose(overrides: Sequence[str], output_dir: str | Path):
    """conf/train.yaml composed with ``overrides``, as ``train.py`` would, outside a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ftlab.cli import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def fit_ftlab(cfg, callbacks: Sequence[L.Callback] = ()) -> tuple[Any, L.Trainer]:
    """``ftlab.train``'s module (``compose.model_and_data``: built whole, it brings its own
    phase callback) fitted by the configured Trainer, without loggers, checkpoints or the
    evaluations around fit. Returns ``(module, trainer)``."""
    from hydra.utils import instantiate

    from ftlab.compose import model_and_data

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = model_and_data(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=data)
    return module, trainer


def train_cli(
    overrides: Sequence[str],
    workdir: str | Path | None = None,
    probe: bool = True,
    timeout: float = 600,
    args: Sequence[str] = (),
) -> dict[str, Any]:
    """``python train.py <overrides>`` in a child process, with its run directory and feature
    cache under ``workdir`` (a fresh temporary folder when None) and, with ``probe``, a
    :class:`Probe`. Returns ``{"wall_s", "start_time", "probe", "metrics", "stdout",
    "stderr"}``; raises with the output's tail when the run fails."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ftlab-bench-") if owned else workdir)
    probe_path = workdir / f"probe-{time.time_ns()}.json"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *args,
        f"hydra.run.dir={workdir}/run-{time.time_ns()}",
        f"paths.cache_dir={workdir}/cache",
        *overrides,
    ]
    if probe:
        command += ["+callbacks.bench._target_=common.Probe", f"+callbacks.bench.path={probe_path}"]
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    try:
        start = time.time()
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        wall = time.time() - start
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-3000:]
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{tail}")
        run_dirs = sorted(workdir.glob("run-*"))
        metrics_path = run_dirs[-1] / "metrics.json" if run_dirs else None
        return {
            "wall_s": wall,
            "start_time": start,
            "probe": json.loads(probe_path.read_text()) if probe_path.is_file() else None,
            "metrics": json.loads(metrics_path.read_text())
            if metrics_path and metrics_path.is_file()
            else None,
            "stdout": done.stdout,
            "stderr": done.stderr,
        }
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


def child_json(script: str | Path, args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
    """Run ``python <script> <args>`` and return the last JSON object it printed on stdout."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{script} {' '.join(args)} exited {done.returncode}:\n{tail}")
    return json.loads(lines[-1])
