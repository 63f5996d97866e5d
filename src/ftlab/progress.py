"""Progress: a rich bar in a terminal, plain log lines elsewhere (CI, SLURM logs, pipes)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger("ftlab")

T = TypeVar("T")
LOG_EVERY_S = 30.0  # seconds between progress lines when stdout is not a terminal


class EpochLines(L.Callback):
    """One log line per epoch with its metrics and duration."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        self._report(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Without a val loop this is the only end-of-epoch hook that fires.
        if trainer.is_global_zero and trainer.num_val_batches in ([], [0]):
            self._report(trainer)

    def _report(self, trainer: L.Trainer) -> None:
        metrics = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and not k.endswith("_step")
        }
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        seconds = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        log.info(
            "epoch %d/%d %s (%.1fs)", trainer.current_epoch + 1, trainer.max_epochs, shown, seconds
        )


class _DropTips(logging.Filter):
    # Tips, and the note that the module's own PhaseCallback (configure_callbacks) replaces the
    # one the Trainer holds from fit when validate and test attach it again: that is by design.
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tip:" not in message and "override existing callbacks" not in message


def quiet_lightning() -> None:
    """One line per Lightning message: its own handler would repeat what Hydra's root logs."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())


def progress_callbacks() -> tuple[bool, list[L.Callback]]:
    """``(enable_progress_bar, callbacks)`` for the current stdout."""
    if sys.stdout.isatty():
        return True, [RichProgressBar()]
    return False, [EpochLines()]


def in_terminal() -> bool:
    """Whether progress shows as a bar (stdout is a terminal) or as log lines (CI, SLURM, pipes)."""
    return sys.stdout.isatty()


class Progress:
    """How far a long job outside Lightning's loops has got: the evaluations after fit (OOD
    sets, drift, the WiSE-FT α sweep), computing cached features. The same treatment as
    training (:func:`progress_callbacks`):

    - in a terminal, a rich bar; log records written meanwhile print above it, not through it;
    - elsewhere (CI, SLURM logs, pipes), a line ``<what>: 12/40 batches (30%), <step>, 31 s,
      ~72 s left`` every ``every_s`` seconds (default ``LOG_EVERY_S``), so a slow job is never
      silent. The caller logs what it finished (a result, a count, the time it took).

    ``show=False`` (ranks other than 0) only counts. Usage::

        with Progress("WiSE-FT", total=40) as progress:
            for alpha in alphas:
                progress.step(f"α={alpha}")
                for batch in loader:
                    ...
                    progress.advance()
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "batches",
        every_s: float | None = None,
        show: bool = True,
    ) -> None:
        self.what, self.total, self.unit, self.show = what, total, unit, show
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.done, self.current = 0, ""
        self._bar: Any = None
        self._task: Any = None
        self._moved: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> Progress:
        self._started = self._last = time.perf_counter()
        if self.show and in_terminal():
            self._start_bar()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            for handler, stream in self._moved:
                handler.setStream(stream)

    def step(self, name: str) -> None:
        """Name the part under way (``α=0.5 test``): on the bar, and in the next line."""
        self.current = name
        if self._bar is not None:
            self._bar.update(self._task, description=self._description())

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.advance(self._task, count)
            return
        now = time.perf_counter()
        unfinished = self.total is None or self.done < self.total
        if self.show and unfinished and now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self._line(now - self._started))

    def _description(self) -> str:
        return f"{self.what} {self.current}" if self.current else self.what

    def _line(self, elapsed: float) -> str:
        parts = [f"{self.done:,} {self.unit}"]
        if self.total:
            parts = [f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done // self.total}%)"]
        if self.current:
            parts.append(self.current)
        parts.append(f"{elapsed:.0f} s")
        if self.total and self.done:
            parts.append(f"~{elapsed / self.done * (self.total - self.done):.0f} s left")
        return f"{self.what}: {', '.join(parts)}"

    def _start_bar(self) -> None:
        from rich.errors import LiveError
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        bar = Bar(*columns, TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        before = sys.stdout, sys.stderr
        try:
            bar.start()
        except LiveError:  # rich < 14 allows one live display; Lightning's bar may hold it
            return  # log lines instead
        self._bar, self._task = bar, bar.add_task(self._description(), total=self.total)
        # rich now prints what is written to sys.stdout/stderr above the bar; a logging handler
        # holds the stream it was given (Hydra's console handler: the terminal), so point it at
        # rich's for as long as the bar is shown.
        for old, new in zip(before, (sys.stdout, sys.stderr), strict=True):
            if new is old:
                continue
            for handler in _stream_handlers():
                if handler.stream is old:
                    self._moved.append((handler, old))
                    handler.setStream(new)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        handler
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        # A file handler (train.log) keeps its file.
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]


def track(
    items: Iterable[T],
    total: int,
    what: str,
    unit: str = "batches",
    show: bool = True,
    every_s: float | None = None,
) -> Iterator[T]:
    """Yield ``items`` with a :class:`Progress` of ``total`` advanced once per item."""
    with Progress(what, total, unit, every_s, show) as progress:
        for item in items:
            yield item
            progress.advance()
