"""Image data sets and transforms shared by the image data options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from ftlab.data.base import ClassificationDataModule
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec


class TensorImageDataset(Dataset):
    """Small grayscale images held in memory as integers, transformed when an item is read.

    Storing ``[N, 1, h, w]`` integers and resizing per item keeps memory at the source
    resolution instead of ``N * 3 * size * size`` floats.

    Args:
        images: integer tensor ``[N, 1, h, w]`` with values in ``0..max_value``.
        labels: int64 tensor ``[N]``.
        max_value: the pixel value that means white (255 for MNIST, 16 for sklearn digits).
        spec: target size, mean and std.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, max_value: float, spec: ImageSpec
    ) -> None:
        self.images = images
        self.labels = labels
        self.max_value = float(max_value)
        self.size = spec.size
        self.channels = spec.channels
        self.mean = torch.tensor(spec.mean[: spec.channels]).view(-1, 1, 1)
        self.std = torch.tensor(spec.std[: spec.channels]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(self.max_value)
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(
                image[None], size=(self.size, self.size), mode="bilinear", antialias=True
            )[0]
        image = image.expand(self.channels, -1, -1)
        return (image - self.mean) / self.std, self.labels[index]


def pil_transform(spec: ImageSpec, augment: bool) -> Callable[[Any], torch.Tensor]:
    """timm-style transform for PIL images: eval resizes the shorter side to ``size / crop_pct``
    and center-crops; with ``augment`` it is RandomResizedCrop + horizontal flip instead."""
    try:
        interpolation = InterpolationMode(spec.interpolation)
    except ValueError:
        interpolation = InterpolationMode.BILINEAR
    if augment:
        geometry = [
            v2.RandomResizedCrop(spec.size, interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [
            v2.Resize(int(spec.size / spec.crop_pct), interpolation=interpolation, antialias=True),
            v2.CenterCrop(spec.size),
        ]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )


class ImageDataModule(ClassificationDataModule):
    """Base of the image data options: resolves the target image size and normalization.

    Args:
        input_spec: the backbone's :class:`~ftlab.specs.ImageSpec`.
        image_size: square side in pixels; None uses ``input_spec.size``.
        **common: the keys of :class:`~ftlab.data.base.ClassificationDataModule`.
    """

    def __init__(self, input_spec: ImageSpec, image_size: int | None = None, **common: Any):
        super().__init__(**common)
        input_spec = self._check_spec(input_spec, ImageSpec, "an image", "a text")
        if image_size is not None and int(image_size) < 1:
            raise FtlabError(f"data.image_size={image_size} must be a positive number or null")
        size = int(image_size) if image_size is not None else input_spec.size
        self.spec = ImageSpec(
            size=size,
            mean=tuple(input_spec.mean),
            std=tuple(input_spec.std),
            channels=input_spec.channels,
            interpolation=input_spec.interpolation,
            crop_pct=input_spec.crop_pct,
        )

    def _identity(self) -> dict[str, Any]:
        spec = self.spec
        return {
            **super()._identity(),
            "size": spec.size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "channels": spec.channels,
            "interpolation": spec.interpolation,
            "crop_pct": spec.crop_pct,
        }

    def _tensor_dataset(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, max_value: float
    ) -> TensorImageDataset:
        """A :class:`TensorImageDataset` of the rows ``indices`` of ``images [N, 1, h, w]``."""
        return TensorImageDataset(
            torch.from_numpy(images[indices]),
            # class indices as int64; multi-hot labels and regression values stay float32
            torch.from_numpy(
                labels[indices].astype(
                    np.float32 if np.issubdtype(labels.dtype, np.floating) else np.int64
                )
            ),
            max_value,
            self.spec,
        )
