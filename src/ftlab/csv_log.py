"""Lightning's CSV logger, made to continue its ``metrics.csv`` when a run resumes.

Lightning 2.6's ``_ExperimentWriter`` deletes an existing ``metrics.csv`` when it is created
("Previous log files in this directory will be deleted"), so a resumed run (after SIGTERM, a
SIGKILL, under DDP alike) lost the rows of every step before the resume. This writer keeps
them: it starts from the file's own header, appends, and, once the trainer has restored the
checkpoint (``drop_after``, from ``ftlab.faults.FaultGuard.on_train_start``), drops the rows
logged after the step it resumes from, which the resumed run logs again.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    """An ``ExperimentWriter`` that continues an existing ``metrics.csv`` instead of deleting
    it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def drop_after(self, step: int) -> None:
        """Remove the rows logged after global step ``step`` (the resumed checkpoint's)."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if _step(row) <= step]
        if len(kept) == len(rows):
            return
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose log survives a resume (conf/logger/csv)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_after(loggers: list[Any], step: int) -> None:
    """Every appending CSV log among ``loggers`` loses the rows after ``step`` (rank 0)."""
    for logger in loggers:
        if isinstance(logger, CSVLogger) and os.path.isdir(logger.log_dir):
            logger.experiment.drop_after(step)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
