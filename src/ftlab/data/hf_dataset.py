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
from ftlab.data.text import MODEL_INPUTS, TextDataModule
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
        streaming: bool = False,
        shuffle_block: int = 1024,
        num_shards: int = 8,
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
        self.augment_images = bool(augment)
        self.streaming = bool(streaming)
        self.shuffle_block, self.num_shards = int(shuffle_block), int(num_shards)
        if self.shuffle_block < 1 or self.num_shards < 1:
            raise FtlabError(
                f"data.shuffle_block={shuffle_block} and data.num_shards={num_shards} must be "
                "at least 1, e.g. data.shuffle_block=1024 data.num_shards=8"
            )
        self._fractions_keys = (val_fraction, test_fraction)
        self._loaded: dict[str, Any] | None = None
        self._records: dict[str, Any] | None = None
        self._modality_init(input_spec, max_length, image_size, common)

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        raise NotImplementedError

    @property
    def augment(self) -> bool:
        """Whether samples differ from pass to pass: random augmentations, or a stream (a
        stream's order and, once rank parts wrap, its samples do). The feature cache
        (``ftlab.finetuning.features.plan_cache``) reads this attribute alone to decide that
        a split cannot be cached once; a stream has no fixed split to cache."""
        return self.augment_images or self.streaming

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
        if self.streaming:
            return self._build_stream()
        parts = self.records()
        classes, labels = self._classes_and_labels(parts)
        made = {name: self._make(name, part, labels[name]) for name, part in parts.items()}
        return Splits(**made, classes=classes)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        raise NotImplementedError

    def _encoder(self, split: str, classes: list[str], class_label: bool) -> Any:
        """A raw row of ``split`` to a sample ``(inputs, label)`` (streaming)."""
        raise NotImplementedError

    # -- streaming ------------------------------------------------------------------------------

    def _build_stream(self) -> Splits:
        """Each split as a :class:`~ftlab.data.streaming.StreamSplit` over an IterableDataset."""
        from ftlab.data.streaming import StreamSplit

        streams, rows = stream_sources(self.path, self.cache_dir, self.num_shards)
        if "train" not in streams:
            own_splits(streams, self.path)  # raises, naming the splits found
        base, total = streams["train"], rows["train"]
        fractions = self.fractions_for(set(streams))
        n_val, n_test = round(total * fractions.val), round(total * fractions.test)
        # Without a split of its own, val/test are the stream's first rows (not stratified:
        # a stream has no random access); train is the rest.
        made_streams = {"train": (lambda: base().skip(n_val + n_test), total - n_val - n_test)}
        if n_val:
            made_streams["val"] = (lambda: base().take(n_val), n_val)
        if n_test:
            made_streams["test"] = (lambda: base().skip(n_val).take(n_test), n_test)
        for name in ("val", "test"):
            if name in streams:
                made_streams[name] = (streams[name], rows[name])
        classes, class_label = self._stream_classes(made_streams["train"][0])
        made = {
            name: StreamSplit(
                make,
                count,
                self.batch_size,
                self._encoder(name, classes, class_label),
                block=self.shuffle_block,
                shard=name == "train",
            )
            for name, (make, count) in made_streams.items()
        }
        return Splits(**made, classes=classes)

    def fractions_for(self, present: set[str]) -> Fractions:
        return Fractions.from_keys(*self._fractions_keys, "val" in present, "test" in present)

    def _stream_classes(self, make: Any) -> tuple[list[str], bool]:
        """The classes of a streamed train split: a ClassLabel's names, else its values (one
        pass over the label column alone)."""
        import datasets

        stream = make()
        column = self.label_column
        features = stream.features or {}
        if not column or (features and column not in features):
            raise FtlabError(
                f"data.label_column={column} is not a column of data.path={self.path} "
                f"({self.found()}): set data.label_column to one of {', '.join(features)}"
            )
        if isinstance(features.get(column), datasets.ClassLabel):
            return list(features[column].names), True
        values = {str(row[column]) for row in stream.select_columns([column])}
        return sorted_classes(sorted(values)), False

    def _loader(self, dataset: Any, shuffle: bool) -> Any:
        from ftlab.data.streaming import StreamLoader, StreamSplit

        if not isinstance(dataset, StreamSplit):
            return super()._loader(dataset, shuffle)
        dataset.seed = torch.initial_seed() if shuffle else None  # the run's seed
        return StreamLoader(dataset, batch_size=self.batch_size, collate_fn=self._collate())

    def _identity(self) -> dict[str, Any]:
        own = self.source_splits() if not self.streaming else {}
        return {
            **super()._identity(),
            "path": str(Path(self.path).expanduser().resolve())
            if Path(self.path).expanduser().exists()
            else self.path,
            # datasets' own fingerprint of each split: changes with any row of the data.
            "dataset_fingerprints": {k: getattr(v, "_fingerprint", None) for k, v in own.items()},
            "columns": [self.text_column, self.image_column, self.label_column],
            "fractions": asdict(self.fractions) if not self.streaming else None,
            "augment": self.augment_images,
            "streaming": self.streaming,
        }


class HFTextDataModule(HFDatasetDataModule, TextDataModule):
    """``data=hf_dataset`` for a text backbone: ``text_column`` tokenized once."""

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        TextDataModule.__init__(self, input_spec, max_length=max_length, **common)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        column = self._column(part, self.text_column, "text_column")
        texts = ["" if t is None else str(t) for t in part[column]]
        return self._tokenize(texts, labels)

    def _encoder(self, split: str, classes: list[str], class_label: bool) -> Any:
        return RowEncoder(
            self.text_column, self.label_column, classes, class_label, self._tokenize_row
        )

    def _tokenize_row(self, text: Any) -> dict[str, list[int]]:
        encoded = self.tokenizer(
            "" if text is None else str(text), truncation=True, max_length=self.max_length
        )
        return {key: list(encoded[key]) for key in MODEL_INPUTS if key in encoded}


class HFImageDataModule(HFDatasetDataModule, ImageDataModule):
    """``data=hf_dataset`` for an image backbone: ``image_column`` decoded per item."""

    def _modality_init(self, input_spec: Any, max_length: Any, image_size: Any, common: Any):
        ImageDataModule.__init__(self, input_spec, image_size=image_size, **common)

    def _make(self, split: str, part: Any, labels: np.ndarray) -> Dataset:
        column = self._column(part, self.image_column, "image_column")
        transform = pil_transform(self.spec, augment=split == "train" and self.augment_images)
        mode = "RGB" if self.spec.channels == 3 else "L"
        return HFImageDataset(part, column, labels, transform, mode)

    def _encoder(self, split: str, classes: list[str], class_label: bool) -> Any:
        transform = pil_transform(self.spec, augment=split == "train" and self.augment_images)
        mode = "RGB" if self.spec.channels == 3 else "L"

        def image(value: Any) -> torch.Tensor:
            if isinstance(value, np.ndarray):
                from PIL import Image

                value = Image.fromarray(value)
            return transform(value.convert(mode))

        return RowEncoder(self.image_column, self.label_column, classes, class_label, image)


class RowEncoder:
    """A raw row to ``(inputs, label)``: ``convert(row[column])`` and the class index."""

    def __init__(
        self,
        column: str,
        label_column: str | None,
        classes: list[str],
        class_label: bool,
        convert: Any,
    ) -> None:
        self.column, self.label_column, self.convert = column, str(label_column), convert
        self.class_label = class_label
        self.index = {name: i for i, name in enumerate(classes)}

    def __call__(self, row: dict[str, Any]) -> tuple[Any, Any]:
        value = row[self.label_column]
        label = int(value) if self.class_label else self.index.get(str(value))
        if label is None:
            raise FtlabError(
                f"data.label_column={self.label_column}: label '{value}' is not among train's "
                f"labels ({', '.join(self.index)}): fix it or add training rows with it"
            )
        inputs = self.convert(row[self.column])
        return inputs, torch.tensor(label) if not isinstance(inputs, dict) else label


def stream_sources(path: str, cache_dir: str | None, num_shards: int) -> tuple[dict, dict]:
    """Each split's stream maker (fresh ``datasets.IterableDataset`` each call) and row count.

    A save_to_disk folder streams from its memory-mapped arrow files in ``num_shards`` shards;
    a data file streams through ``load_dataset(..., streaming=True)``, which reads it piece by
    piece (parquet row groups, JSON lines) without converting it to arrow first.
    """
    import copy

    where = Path(path).expanduser()
    makers: dict[str, Any] = {}
    rows: dict[str, int] = {}
    if is_saved_dataset(where):
        for name, part in own_splits(load_source(path, cache_dir), path).items():
            shards = max(1, min(num_shards, len(part)))
            makers[name] = lambda part=part, shards=shards: part.to_iterable_dataset(shards)
            rows[name] = len(part)
        return makers, rows
    streamed = own_splits(load_source(path, cache_dir, streaming=True), path)
    for name, stream in streamed.items():
        makers[name] = lambda stream=stream: copy.deepcopy(stream)
        rows[name] = count_rows(where, stream, name)
    return makers, rows


def count_rows(where: Path, stream: Any, split: str) -> int:
    """A streamed split's rows: parquet metadata, a line count, or the dataset card's."""
    suffix = where.suffix.lower() if where.is_file() else ""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(where).metadata.num_rows)
    if suffix in (".jsonl", ".csv", ".tsv"):
        with open(where, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        return lines - (suffix != ".jsonl")
    info = getattr(stream, "info", None)
    splits = getattr(info, "splits", None) or {}
    for name, meta in splits.items():
        if SPLIT_NAMES.get(str(name).lower()) == split and meta.num_examples:
            return int(meta.num_examples)
    return sum(1 for _ in stream)  # a JSON array or an arrow file: one counting pass
