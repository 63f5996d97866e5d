"""The user's own images, one folder per class: ``root/<class>/<image>``."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ftlab.data.base import Splits
from ftlab.data.images import ImageDataModule, pil_transform
from ftlab.data.splits import Fractions
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_LAYOUT = "a folder of <class>/<image> files"
MAX_LISTED = 20  # skipped files named in metrics.json; the count covers all of them


def _folder(root: str | os.PathLike | None, key: str) -> Path:
    """``data.<key>`` as an existing folder."""
    if root is None:
        raise FtlabError(f"data.{key} is not set: point data.{key} at {_LAYOUT}")
    path = Path(root).expanduser()
    if not path.exists():
        raise FtlabError(f"data.{key}={path} does not exist: point data.{key} at {_LAYOUT}")
    if not path.is_dir():
        raise FtlabError(f"data.{key}={path} is not a folder: point data.{key} at {_LAYOUT}")
    return path


def scan_class_folders(root: Path, key: str) -> dict[str, list[str]]:
    """Class name → sorted image paths, found by listing directories only (no image is opened,
    so indexing 100k files takes well under a second)."""
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise FtlabError(f"data.{key}={root} has no class folders: point data.{key} at {_LAYOUT}")
    found: dict[str, list[str]] = {}
    for name in names:
        with os.scandir(root / name) as entries:
            files = sorted(
                e.path
                for e in entries
                if e.name.lower().endswith(IMAGE_SUFFIXES)
                and not e.name.startswith(".")
                and e.is_file()
            )
        if not files:
            raise FtlabError(
                f"data.{key}={root}: class folder '{name}' has no images "
                f"({', '.join(IMAGE_SUFFIXES)}): add images or remove the folder"
            )
        found[name] = files
    return found


class FileImageDataset(Dataset):
    """Image files read lazily with PIL (converted to RGB) and transformed per item.

    A file that PIL cannot read raises :class:`FtlabError` naming it; with ``skip_corrupt`` it
    is replaced by the next readable one, logged once and marked in :attr:`corrupt`, a flag per
    file in shared memory, so that loader workers' findings reach the main process's count.
    """

    def __init__(
        self,
        files: list[str],
        labels: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
        skip_corrupt: bool,
    ) -> None:
        self.files = files
        self.labels = labels.astype(np.int64)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        # Shared memory survives fork and is passed by handle under spawn, so every worker
        # writes into the same flags.
        self.corrupt = torch.zeros(len(files), dtype=torch.bool).share_memory_()

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable and skipped so far."""
        return int(self.corrupt.sum())

    def skipped_files(self) -> list[str]:
        return [self.files[i] for i in torch.nonzero(self.corrupt).flatten().tolist()]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for i in itertools.chain(range(index, len(self.files)), range(index)):
            if self.corrupt[i]:  # known bad: don't pay for opening it again
                continue
            image = self._read(i)
            if image is not None:
                return self.transform(image), int(self.labels[i])
        raise FtlabError(
            "data.skip_corrupt=true skipped every image: none could be read; check data.root"
        )

    def _read(self, i: int) -> Image.Image | None:
        path = self.files[i]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            # SyntaxError: PIL's parsers raise it for some malformed headers (e.g. PNG chunks).
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if not self.skip_corrupt:
                raise FtlabError(
                    f"cannot read image {path} ({reason}): fix or remove it, or set "
                    "data.skip_corrupt=true to skip unreadable images"
                ) from err
            self.corrupt[i] = True
            log.warning("data.skip_corrupt=true: skipped unreadable image %s (%s)", path, reason)
        return None


class ImageFolderDataModule(ImageDataModule):
    """Images in ``root/<class>/*.{jpg,jpeg,png,bmp,webp}``; class names are the folder names.

    Validation and test come from ``val_root`` / ``test_root`` (same layout, classes a subset of
    root's) when given, otherwise from a seeded stratified ``val_fraction`` / ``test_fraction`` of
    root.

    Args:
        input_spec, image_size: see :class:`~ftlab.data.images.ImageDataModule`.
        root: the training images (and val/test, unless their own roots are given).
        val_root, test_root: optional separate folders for validation and test.
        val_fraction, test_fraction: shares of each class of root, used without val/test_root.
        augment: train with RandomResizedCrop + horizontal flip instead of the eval transform.
        skip_corrupt: skip unreadable images (logged) instead of failing on them.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def __init__(
        self,
        input_spec: ImageSpec,
        root: str | None = None,
        val_root: str | None = None,
        test_root: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        augment: bool = False,
        skip_corrupt: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(input_spec, **common)
        self.root = _folder(root, "root")
        self.val_root = _folder(val_root, "val_root") if val_root is not None else None
        self.test_root = _folder(test_root, "test_root") if test_root is not None else None
        self.fractions = Fractions.from_keys(
            val_fraction, test_fraction, val_root is not None, test_root is not None
        )
        self.augment = bool(augment)
        self.skip_corrupt = bool(skip_corrupt)

    def _identity(self) -> dict[str, Any]:
        roots = (self.root, self.val_root, self.test_root)
        return {
            **super()._identity(),
            "roots": [str(r.resolve()) if r else None for r in roots],
            "fractions": asdict(self.fractions),
            "augment": self.augment,
            "skip_corrupt": self.skip_corrupt,
        }

    def summary(self) -> dict[str, Any]:
        """``skipped_corrupt``: unreadable files skipped so far (``data.skip_corrupt=true``), in
        this process's loaders: under DDP, rank 0's share only."""
        splits = self._splits
        datasets = [] if splits is None else [splits.train, splits.val, splits.test]
        files = [d.skipped_files() for d in datasets if isinstance(d, FileImageDataset)]
        skipped = [f for found in files for f in found]
        if skipped:
            log.warning(
                "data.skip_corrupt=true: skipped %d unreadable image(s), e.g. %s",
                len(skipped),
                skipped[0],
            )
        found = {"skipped_corrupt": len(skipped), "skipped_files": skipped[:MAX_LISTED]}
        return {**getattr(self, "_index", {}), **found}

    def _build(self) -> Splits:
        started = time.perf_counter()
        index = scan_class_folders(self.root, "root")
        self._index = {"indexed_files": sum(map(len, index.values()))}
        self._index["index_time_s"] = round(time.perf_counter() - started, 3)
        log.info(
            "data.root=%s: indexed %d images in %d classes in %.2f s (no image opened)",
            self.root,
            self._index["indexed_files"],
            len(index),
            self._index["index_time_s"],
        )
        classes = list(index)
        if len(classes) < 2:
            raise FtlabError(
                f"data.root={self.root} has only one class folder ('{classes[0]}'): "
                "a classifier needs at least two"
            )
        files, labels = _flatten(index, classes)
        made = self._split(
            labels,
            self.fractions,
            lambda name, idx: self._dataset(
                [files[i] for i in idx], labels[idx], train=name == "train"
            ),
        )
        for name, root in (("val", self.val_root), ("test", self.test_root)):
            if root is not None:
                made[name] = self._dataset(*self._index_other(root, f"{name}_root", classes))
        return Splits(**made, classes=classes)

    def _index_other(
        self, root: Path, key: str, classes: list[str]
    ) -> tuple[list[str], np.ndarray]:
        index = scan_class_folders(root, key)
        unknown = [name for name in index if name not in classes]
        if unknown:
            raise FtlabError(
                f"data.{key}={root}: class folder '{unknown[0]}' is not a class of "
                f"data.root ({', '.join(classes)}): rename or remove it"
            )
        return _flatten(index, classes)

    def _dataset(self, files: list[str], labels: np.ndarray, train: bool = False) -> Dataset:
        transform = pil_transform(self.spec, augment=train and self.augment)
        return FileImageDataset(files, labels, transform, self.skip_corrupt)


def _flatten(index: dict[str, list[str]], classes: list[str]) -> tuple[list[str], np.ndarray]:
    """All files of ``index`` and their labels (positions in ``classes``)."""
    files = [path for name in index for path in index[name]]
    labels = np.concatenate(
        [np.full(len(index[name]), classes.index(name), dtype=np.int64) for name in index]
    )
    return files, labels
