"""The user's own labelled texts in a CSV, TSV, JSONL or JSON file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftlab.data.base import Splits
from ftlab.data.splits import Fractions
from ftlab.data.text import TextDataModule
from ftlab.data_sources import check_csv_source
from ftlab.errors import FtlabError
from ftlab.specs import TextSpec

if TYPE_CHECKING:
    import pandas as pd

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def _table_path(path: str | None, key: str) -> Path:
    """``data.<key>`` as an existing file with a known suffix."""
    if path is None:
        raise FtlabError(f"data.{key} is not set: point data.{key} at a {'/'.join(SUFFIXES)} file")
    file = Path(path).expanduser()
    # What only data=hf_dataset reads (a parquet/arrow file, a save_to_disk folder) says so.
    check_csv_source({key: str(file)})
    if file.is_dir():
        raise FtlabError(
            f"data.{key}={file} is a folder: point data.{key} at a {'/'.join(SUFFIXES)} file"
        )
    if not file.is_file():
        raise FtlabError(
            f"data.{key}={file} does not exist: point data.{key} at a {'/'.join(SUFFIXES)} file"
        )
    if file.suffix.lower() not in SUFFIXES:
        raise FtlabError(
            f"data.{key}={file} has an unknown suffix '{file.suffix}': "
            f"use one of {', '.join(SUFFIXES)} (or data=hf_dataset for parquet/arrow files)"
        )
    return file


def read_table(file: Path, key: str) -> pd.DataFrame:
    """Read a CSV/TSV (all cells as strings) or JSONL/JSON (records) file."""
    import pandas as pd  # here, not above: every run imports this module, few read a table

    suffix = file.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(file, sep=sep, dtype=str, keep_default_na=False)
        return pd.read_json(file, lines=suffix == ".jsonl", dtype=False)
    except (ValueError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FtlabError(
            f"data.{key}={file} could not be read as {suffix[1:].upper()} ({reason}): "
            "fix the file (UTF-8, one record per row)"
        ) from err


def _row(file: Path, i: int) -> str:
    """Where record ``i`` (0-based) is, in the user's terms."""
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return f"line {i + 2}"  # line 1 is the header
    return f"line {i + 1}" if suffix == ".jsonl" else f"record {i + 1}"


def _cell(value: Any) -> str:
    # JSON gives ints, None or NaN where CSV (read as strings) gives text.
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def read_texts(
    file: Path, key: str, text_column: str, label_column: str
) -> tuple[list[str], list[str]]:
    """The texts and their labels (as strings) of a table; every text and label non-empty."""
    table = read_table(file, key)
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in table.columns:
            raise FtlabError(
                f"data.{key}={file} has no column '{column}': set data.{role} to one of "
                f"{', '.join(map(str, table.columns)) or '(none)'}"
            )
    texts = [_cell(v) for v in table[text_column]]
    labels = [_cell(v) for v in table[label_column]]
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        for value, column in ((text, text_column), (label, label_column)):
            if not value:
                raise FtlabError(
                    f"data.{key}={file} {_row(file, i)}: empty '{column}': fill it in or "
                    "drop the row"
                )
    if not texts:
        raise FtlabError(f"data.{key}={file} has no rows: add labelled texts")
    return texts, labels


def sorted_classes(labels: list[str]) -> list[str]:
    """Unique labels, in numeric order when all are integers (so that label 3 is class 3)."""
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def encode_labels(names: list[str], classes: list[str], file: Path, key: str) -> np.ndarray:
    """Label names as positions in ``classes``; a name outside them is an error."""
    index = {name: i for i, name in enumerate(classes)}
    for i, name in enumerate(names):
        if name not in index:
            raise FtlabError(
                f"data.{key}={file} {_row(file, i)}: label '{name}' is not among data.path's "
                f"labels ({', '.join(classes)}): fix it or add training rows with it"
            )
    return np.array([index[name] for name in names], dtype=np.int64)


class TextCSVDataModule(TextDataModule):
    """Text classification from a table with a text and a label column.

    The file type follows the suffix: ``.csv``, ``.tsv``, ``.jsonl`` (one JSON object a line) or
    ``.json`` (an array of objects). Labels may be strings or integers; classes are the training
    file's unique labels as strings. Validation and test come from ``val_path`` / ``test_path``
    when given, otherwise from a seeded stratified ``val_fraction`` / ``test_fraction`` of path.

    Args:
        input_spec, max_length: see :class:`~ftlab.data.text.TextDataModule`.
        path: the training table (and val/test, unless their own paths are given).
        val_path, test_path: optional separate tables for validation and test.
        text_column, label_column: the column names.
        val_fraction, test_fraction: shares of each class of path, used without val/test_path.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def __init__(
        self,
        input_spec: TextSpec,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        **common: Any,
    ) -> None:
        super().__init__(input_spec, **common)
        self.path = _table_path(path, "path")
        self.val_path = _table_path(val_path, "val_path") if val_path is not None else None
        self.test_path = _table_path(test_path, "test_path") if test_path is not None else None
        self.text_column = text_column
        self.label_column = label_column
        self.fractions = Fractions.from_keys(
            val_fraction, test_fraction, val_path is not None, test_path is not None
        )

    def _identity(self) -> dict[str, Any]:
        files = (self.path, self.val_path, self.test_path)
        return {
            **super()._identity(),
            "paths": [str(f.resolve()) if f else None for f in files],
            "columns": [self.text_column, self.label_column],
            "fractions": asdict(self.fractions),
        }

    def _build(self) -> Splits:
        texts, names = read_texts(self.path, "path", self.text_column, self.label_column)
        classes = sorted_classes(names)
        if len(classes) < 2:
            raise FtlabError(
                f"data.path={self.path}: column '{self.label_column}' has a single value "
                f"('{classes[0]}'): a classifier needs at least two"
            )
        labels = encode_labels(names, classes, self.path, "path")
        made = self._split(
            labels,
            self.fractions,
            lambda _, idx: self._tokenize([texts[i] for i in idx], labels[idx]),
        )
        for name, file in (("val", self.val_path), ("test", self.test_path)):
            if file is not None:
                made[name] = self._tokenize(*self._read_other(file, f"{name}_path", classes))
        return Splits(**made, classes=classes)

    def _read_other(self, file: Path, key: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
        texts, names = read_texts(file, key, self.text_column, self.label_column)
        return texts, encode_labels(names, classes, file, key)
