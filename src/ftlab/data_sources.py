"""What a ``data.path`` holds, found without torch or ``datasets``: the pre-run data check.

``data=hf_dataset`` and ``data=text_csv`` are handed paths that only the ``datasets`` library
(or pandas) reads, after torch has been imported (10-13 s). This module looks at the path with
the standard library and pyarrow alone (about 0.2 s): a ``save_to_disk`` folder's JSON files, a
parquet/arrow file's schema, a JSON/CSV file's first record. ``ftlab.config_checks`` calls
:func:`check_data_source` with the composed config, so a wrong path or column is one line,
naming what was found, before the run starts::

    data.label_column=topic is not a column of data.path=/d/news_hf (a DatasetDict with splits
    train, test; columns text, label): set data.label_column to one of text, label
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError

# File suffix -> the `datasets` packaged builder that reads it (load_dataset(<builder>, ...)).
BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
}
# A dataset's own split names -> ftlab's.
SPLIT_NAMES = {
    "train": "train",
    "validation": "val",
    "val": "val",
    "valid": "val",
    "dev": "val",
    "test": "test",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HF_TARGET = "HFDatasetDataModule"
CSV_TARGET = "TextCSVDataModule"


@dataclass
class Found:
    """What a data path holds: its kind (in words), its splits and its columns."""

    kind: str
    splits: list[str] = field(default_factory=list)
    columns: list[str] | None = None  # None: not known without reading the data

    def words(self) -> str:
        """e.g. ``a DatasetDict with splits train, test; columns text, label``."""
        text = self.kind
        if self.splits:
            text += f" with splits {', '.join(self.splits)}"
        if self.columns is not None:
            text += f"; columns {', '.join(self.columns) or '(none)'}"
        return text


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    )


def _features(folder: Path) -> list[str] | None:
    """The column names a saved Dataset folder's ``dataset_info.json`` lists."""
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
        return list(info.get("features") or {})
    except (OSError, ValueError):
        return None


def _arrow_columns(file: Path) -> list[str] | None:
    import pyarrow as pa

    # `datasets` writes the IPC stream format; others write the file format.
    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with pa.memory_map(str(file)) as source:
                return list(opener(source).schema.names)
        except (pa.ArrowInvalid, OSError):
            continue
    return None


def _json_columns(file: Path) -> list[str] | None:
    with open(file, encoding="utf-8", errors="replace") as f:
        head = f.read(1 << 20)
    stripped = head.lstrip()
    if stripped.startswith("["):
        if os.path.getsize(file) > 64 << 20:  # a large array: not parsed just for its keys
            return None
        try:
            records = json.loads(file.read_text())
        except ValueError:
            return None
        first = records[0] if isinstance(records, list) and records else None
    else:
        line = next((ln for ln in head.splitlines() if ln.strip()), "")
        try:
            first = json.loads(line)
        except ValueError:
            return None
    return list(first) if isinstance(first, dict) else None


def _csv_columns(file: Path) -> list[str] | None:
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ","), [])
    return [h.strip() for h in header]


def describe_file(file: Path) -> Found:
    """A data file's kind (by suffix) and columns (from its schema or first record)."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return Found("a parquet file", columns=list(pq.read_schema(file).names))
        except (pa.ArrowInvalid, OSError):
            return Found("a parquet file that pyarrow cannot read")
    if suffix == ".arrow":
        return Found("an arrow file", columns=_arrow_columns(file))
    if suffix in (".json", ".jsonl"):
        return Found(f"a {suffix[1:].upper()} file", columns=_json_columns(file))
    if suffix in (".csv", ".tsv"):
        return Found(f"a {suffix[1:].upper()} file", columns=_csv_columns(file))
    return Found(f"a file with suffix '{file.suffix}'")


def describe_saved(folder: Path) -> Found:
    """A ``save_to_disk`` folder: Dataset or DatasetDict, its splits and columns."""
    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file():
        try:
            splits = list(json.loads(dict_file.read_text()).get("splits", []))
        except ValueError:
            return Found("a DatasetDict folder whose dataset_dict.json is not JSON")
        columns = _features(folder / splits[0]) if splits else []
        return Found("a DatasetDict", splits=splits, columns=columns)
    return Found("a Dataset", columns=_features(folder))


def hub_cache_dirs(name: str) -> list[Path]:
    """Where a hub dataset ``owner/name`` would be in the local caches."""
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    return [
        hub / f"datasets--{name.replace('/', '--')}",
        datasets_cache / name.replace("/", "___"),
    ]


def offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def describe(path: str | os.PathLike) -> Found:
    """What ``path`` is: a save_to_disk folder, a data file, a folder, or a hub id.

    Raises :class:`FtlabError` when it is none of these.
    """
    where = Path(path).expanduser()
    if is_saved_dataset(where):
        return describe_saved(where)
    if where.is_file():
        return describe_file(where)
    if where.is_dir():
        files = sorted(p.name for p in where.iterdir() if p.suffix.lower() in BUILDERS)
        return Found(f"a folder with no dataset_dict.json or state.json ({len(files)} data files)")
    name = str(path)
    if HUB_ID.fullmatch(name) and not name.startswith("."):
        if any(d.is_dir() for d in hub_cache_dirs(name)):
            return Found("a hub dataset in the local cache")
        if not offline():
            return Found("a hub dataset id (not in the local cache: it will be downloaded)")
        raise FtlabError(
            f"data.path={name} is not a file or folder, and no hub dataset of that name is in "
            f"the local cache ({hub_cache_dirs(name)[0].parent}) while HF_HUB_OFFLINE is set: "
            "point data.path at a save_to_disk folder or a parquet/arrow/json/csv file, or "
            "download the dataset first"
        )
    raise FtlabError(
        f"data.path={where} does not exist: point data.path at a save_to_disk folder, a "
        f"{'/'.join(sorted(set(BUILDERS)))} file or a hub dataset id"
    )


def check_hf_source(data: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> Found:
    """Check a ``data=hf_dataset`` config's path and columns; return what was found."""
    path = data.get("path")
    if not path:
        raise FtlabError(
            "data.path is not set: point data.path at a save_to_disk folder, a "
            "parquet/arrow/json/csv file or a hub dataset id"
        )
    found = describe(str(path))
    if found.kind.startswith("a file with suffix") or found.kind.startswith("a folder with no"):
        raise FtlabError(
            f"data.path={path} is {found.words()}: data=hf_dataset reads a save_to_disk "
            f"folder or a {'/'.join(sorted(set(BUILDERS)))} file"
        )
    columns = found.columns
    if columns is None:
        return found
    model = model or {}
    label = data.get("label_column")
    if label and label not in columns:
        raise FtlabError(
            f"data.label_column={label} is not a column of data.path={path} ({found.words()}): "
            f"set data.label_column to one of {', '.join(columns)}"
        )
    image, text = data.get("image_column"), data.get("text_column")
    wants_image = model.get("source") == "timm" or (image and image in columns)
    key, column = ("image_column", image) if wants_image else ("text_column", text)
    if column and column not in columns and not {"messages", "prompt"} & set(columns):
        raise FtlabError(
            f"data.{key}={column} is not a column of data.path={path} ({found.words()}): "
            f"set data.{key} to one of {', '.join(columns)}"
        )
    return found


def check_csv_source(data: Mapping[str, Any]) -> None:
    """``data=text_csv`` pointed at something only ``data=hf_dataset`` reads: say so."""
    for key in ("path", "val_path", "test_path"):
        value = data.get(key)
        if not value:
            continue
        where = Path(str(value)).expanduser()
        if is_saved_dataset(where) or where.suffix.lower() in (".parquet", ".arrow"):
            found = describe_saved(where) if where.is_dir() else describe_file(where)
            raise FtlabError(
                f"data.{key}={where} is {found.words()}, which data=text_csv does not read: "
                f"use data=hf_dataset data.path={where}"
            )


def check_data_source(config: Mapping[str, Any]) -> None:
    """The composed config's data path and columns, for the data options that read a path."""
    data = config.get("data")
    if not isinstance(data, Mapping):
        return
    target = str(data.get("_target_") or "").rsplit(".", 1)[-1]
    model = config.get("model")
    # An unset path is refused where the data is built (its own one line), as text_csv does:
    # `--cfg job` and the shipped-config checks compose the option without one.
    if target == HF_TARGET and data.get("path"):
        check_hf_source(data, model if isinstance(model, Mapping) else None)
    elif target == CSV_TARGET:
        check_csv_source(data)
