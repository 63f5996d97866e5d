"""``data=hf_dataset``: any data the Hugging Face ``datasets`` library reads.

A ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``, by ``load_from_disk``), a parquet,
arrow, JSON/JSONL or CSV/TSV file (``load_dataset(<builder>, data_files=path)``), or a hub id
(``load_dataset(id)``, served from the local cache when ``HF_HUB_OFFLINE=1``). The reading is
the library's; ftlab maps columns and splits:

- splits: the dataset's own ``train`` / ``validation`` (or ``val``, ``valid``, ``dev``) /
  ``test`` when it has them; a missing val or test is carved from train by ftlab's seeded
  stratified ``val_fraction`` / ``test_fraction``.
- columns: :meth:`HFDatasetDataModule.records` hands any task the split's raw records (every
  column: ``labels`` lists, float targets, ``messages``, ``prompt``/``completion``); the
  classification path built here reads ``text_column`` (text backbones) or ``image_column``
  (image backbones) and ``label_column`` (a ``ClassLabel`` keeps its names, other values become
  classes as strings, integers in numeric order, as ``data=text_csv`` does).

The data's identity for caches (:meth:`fingerprint`) includes each split's own ``datasets``
fingerprint, so a changed dataset is never served features computed from the old one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ftlab.data.base import ClassificationDataModule, Splits
from ftlab.data.images import ImageDataModule, pil_transform
from ftlab.data.splits import Fractions, stratified_split
from ftlab.data.text import TextDataModule
from ftlab.data.text_csv import sorted_classes
from ftlab.data_sources import BUILDERS, SPLIT_NAMES, describe, is_saved_dataset
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


def load_source(
    path: str, cache_dir: str | None = None, streaming: bool = False
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """``path`` read by ``datasets``, always as a dict of splits (one file: ``train``)."""
    import datasets

    where = Path(path).expanduser()
    if is_saved_dataset(where):
        loaded = datasets.load_from_disk(str(where))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict(train=loaded)
        if streaming:
            loaded = datasets.IterableDatasetDict(
                {name: ds.to_iterable_dataset() for name, ds in loaded.items()}
            )
        return loaded
    if where.is_file():
        suffix = where.suffix.lower()
        options: dict[str, Any] = {"sep": "\t"} if suffix == ".tsv" else {}
        return datasets.load_dataset(
            BUILDERS[suffix],
            data_files={"train": str(where)},
            cache_dir=cache_dir,
            streaming=streaming,
            **options,
        )
    try:
        return datasets.load_dataset(path, cache_dir=cache_dir, streaming=streaming)
    except Exception as err:  # the hub client raises many types; all mean "not readable here"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FtlabError(
            f"data.path={path} could not be loaded as a hub dataset ({reason}): point data.path "
            "at a save_to_disk folder or a data file, or download the dataset first"
        ) from err


def own_splits(loaded: Any, path: str) -> dict[str, Any]:
    """The dataset's splits under ftlab's names (train, val, test); train is required."""
    named: dict[str, Any] = {}
    for name, part in loaded.items():
        ours = SPLIT_NAMES.get(str(name).lower())
        if ours is not None and ours not in named:
            named[ours] = part
    if "train" not in named:
        raise FtlabError(
            f"data.path={path} has splits {', '.join(map(str, loaded))} but no 'train': "
            "rename the training split to train"
        )
    return named


class HFImageDataset(Dataset):
    """Rows of an HF dataset whose image column ``datasets`` decodes to PIL images."""

    def __init__(self, rows: Any, column: str, labels: np.ndarray, transform: Any, mode: str):
        self.rows, self.column, self.transform, self.mode = rows, column, transform, mode
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.rows[int(index)][self.column]
        if isinstance(image, np.ndarray):
            from PIL import Image

            image = Image.fromarray(image)
        return self.transform(image.convert(self.mode)), self.labels[index]


class HFDatasetDataModule(ClassificationDataModule):
    """Classification from anything ``datasets`` reads (see the module docstring).

    Built for the backbone: an image backbone gets :class:`HFImageDataModule`, a text one
    :class:`HFTextDataModule` (so that evaluation's shifts see a text or image data option).

    Args:
        input_spec: the backbone's input spec.
        path: a save_to_disk folder, a data file or a hub dataset id.
        text_column, image_column, label_column: the columns the classifier reads.
        val_fraction, test_fraction: shares of each class of train, for splits the data lacks.
        cache_dir: where ``load_dataset`` converts files to arrow (None: datasets' default).
        max_length: text backbones: truncate to this many tokens (None: the backbone's limit).
        image_size, augment: image backbones: square side (None: the backbone's), train-time
            RandomResizedCrop + flip.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def __new__(cls, input_spec: Any = None, *args: Any, **kwargs: Any) -> HFDatasetDataModule:
        if cls is HFDatasetDataModule:
            cls = HFImageDataModule if isinstance(input_spec, ImageSpec) else HFTextDataModule
        return super().__new__(cls)

    def __init__(
        self,
        input_spec: Any,
        path: str | None = None,
        text_column: str = "text",
        image_column: str = "image",
        label_column: str | None = "label",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        cache_dir: str | None = None,
        max_length: int | None = None,
        image_size: int | None = None,
        augment: bool = False,
        **common: Any,
    ) -> None:
        if not path:
            raise FtlabError(
                "data.path is not set: point data.path at a save_to_disk folder, a "
                "parquet/arrow/json/csv file or a hub dataset id"
            )
        self.path = str(path)
        self.text_column, self.image_column = text_column, image_column
        self.label_column = label_column
        self.cache_dir = cache_dir
        self.augment = bool(augment)
        self._fractions_keys = (val_fraction, test_fraction)
        self._loaded: dict[str, Any] | None = None
        self._records: dict[str, Any] | None = None
        self._modality_init(input_spec, max_length, image_size, common)

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        raise NotImplementedError

    # -- the data -----------------------------------------------------------------------------

    def source_splits(self) -> dict[str, Any]:
        """The dataset's own splits (``datasets.Dataset`` each) under ftlab's names."""
        if self._loaded is None:
            self._loaded = own_splits(load_source(self.path, self.cache_dir), self.path)
        return self._loaded

    @property
    def fractions(self) -> Fractions:
        own = self.source_splits()
        return Fractions.from_keys(*self._fractions_keys, "val" in own, "test" in own)

    def records(self) -> dict[str, Any]:
        """train / val / test as ``datasets.Dataset`` with every column of the data, split as
        the classifier splits it: the entry point for tasks that read other columns
        (``labels`` lists, float targets, ``messages``, ``prompt``/``completion``)."""
        if self._records is None:
            own = self.source_splits()
            train = own["train"]
            fractions = self.fractions
            if fractions.val or fractions.test:
                labels = self._stratify_by(train)
                parts = stratified_split(labels, fractions, self.split_seed)
            else:
                parts = {"train": np.arange(len(train))}
            parts["train"] = self._subsample(parts["train"])
            self.split_indices = parts
            made = {name: train.select(idx) for name, idx in parts.items()}
            made.update({k: v for k, v in own.items() if k != "train"})
            self._records = made
        return self._records

    def _stratify_by(self, train: Any) -> np.ndarray:
        """What the fraction split keeps balanced: a single-valued label column, else nothing."""
        column = self.label_column
        if column and column in train.column_names:
            values = train[column]
            if values and not isinstance(values[0], (list, float)):
                return np.unique(np.asarray([str(v) for v in values]), return_inverse=True)[1]
        return np.zeros(len(train), dtype=np.int64)

    def found(self) -> str:
        """What data.path holds, in words (for messages)."""
        return describe(self.path).words()

    def _column(self, part: Any, column: str | None, key: str) -> str:
        if not column or column not in part.column_names:
            raise FtlabError(
                f"data.{key}={column} is not a column of data.path={self.path} "
                f"({self.found()}): set data.{key} to one of {', '.join(part.column_names)}"
            )
        return column

    def _classes_and_labels(self, parts: dict[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
        """Class names and each split's labels as positions in them."""
        import datasets

        column = self._column(parts["train"], self.label_column, "label_column")
        feature = parts["train"].features[column]
        if isinstance(feature, datasets.ClassLabel):
            classes = list(feature.names)
            return classes, {k: np.asarray(p[column], dtype=np.int64) for k, p in parts.items()}
        names = {
            k: [str(v) for v in p[self._column(p, column, "label_column")]]
            for k, p in parts.items()
        }
        classes = sorted_classes(names["train"])
        if len(classes) < 2:
            raise FtlabError(
                f"data.path={self.path}: column '{column}' has a single value "
                f"('{classes[0]}'): a classifier needs at least two"
            )
        index = {name: i for i, name in enumerate(classes)}
        labels = {}
        for split, values in names.items():
            unknown = sorted(set(values) - set(index))
            if unknown:
                raise FtlabError(
                    f"data.path={self.path} split {split}: label '{unknown[0]}' is not among "
                    f"train's labels ({', '.join(classes)}): fix it or add training rows with it"
                )
            labels[split] = np.array([index[v] for v in values], dtype=np.int64)
        return classes, labels

    def _build(self) -> Splits:
        parts = self.records()
        classes, labels = self._classes_and_labels(parts)
        made = {name: self._make(name, part, labels[name]) for name, part in parts.items()}
        return Splits(**made, classes=classes)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        own = self.source_splits()
        return {
            **super()._identity(),
            "path": str(Path(self.path).expanduser().resolve())
            if Path(self.path).expanduser().exists()
            else self.path,
            # datasets' own fingerprint of each split: changes with any row of the data.
            "dataset_fingerprints": {k: getattr(v, "_fingerprint", None) for k, v in own.items()},
            "columns": [self.text_column, self.image_column, self.label_column],
            "fractions": asdict(self.fractions),
            "augment": self.augment,
        }


class HFTextDataModule(HFDatasetDataModule, TextDataModule):
    """``data=hf_dataset`` for a text backbone: ``text_column`` tokenized once."""

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        TextDataModule.__init__(self, input_spec, max_length=max_length, **common)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        column = self._column(part, self.text_column, "text_column")
        texts = ["" if t is None else str(t) for t in part[column]]
        return self._tokenize(texts, labels)


class HFImageDataModule(HFDatasetDataModule, ImageDataModule):
    """``data=hf_dataset`` for an image backbone: ``image_column`` decoded per item."""

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        ImageDataModule.__init__(self, input_spec, image_size=image_size, **common)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        column = self._column(part, self.image_column, "image_column")
        transform = pil_transform(self.spec, augment=split == "train" and self.augment)
        mode = "RGB" if self.spec.channels == 3 else "L"
        return HFImageDataset(part, column, labels, transform, mode)
