"""Named distribution shifts of a test set: image corruptions and text perturbations.

Each shift is a pure function of (sample, severity 1..5, random source). The random source is
seeded from (seed, sample index), so a shifted set is the same every time it is built, whatever
the batch size or the order in which samples are read.

They live with the data (``data.shift`` of :mod:`ftlab.data.target_domain` corrupts every split
with them); the OOD evaluation (:mod:`ftlab.evaluation.ood`) builds its shifted test sets from
them too, and :mod:`ftlab.evaluation.shifts` re-exports them under their old path.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

SEVERITIES = range(1, 6)
DEFAULT_SEVERITY = 3

ImageShift = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
TextShift = Callable[[str, int, random.Random], str]


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 64-bit seed for one sample of one run seed."""
    state = np.random.SeedSequence([seed % 2**32, index]).generate_state(1, np.uint64)
    return int(state[0])


# -- images: [C, H, W] pixels in [0, 1] ---------------------------------------------------------


def rotation(image: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    """Rotate by ±10..60 degrees (the sign drawn per sample); corners fill with black."""
    degrees = (10, 20, 30, 45, 60)[severity - 1]
    sign = 1 if torch.rand((), generator=rng) < 0.5 else -1
    return TF.rotate(image, sign * degrees, interpolation=InterpolationMode.BILINEAR)


def gaussian_noise(image: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    """Additive Gaussian pixel noise with ImageNet-C's standard deviations."""
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return image + sigma * torch.randn(image.shape, generator=rng)


def blur(image: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    """Gaussian blur; sigma is a share of the image side (ImageNet-C's 1..6 px at 224 px), so a
    severity means the same blur at any input size, but at least 0.5..1.5 px so that small
    inputs (MNIST at 32 px) blur too."""
    share = (0.005, 0.01, 0.015, 0.02, 0.03)[severity - 1] * max(image.shape[-2:])
    sigma = max(share, (0.5, 0.75, 1.0, 1.25, 1.5)[severity - 1])
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def contrast(image: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    """Pull pixels towards each channel's mean by ImageNet-C's contrast factors."""
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = image.mean(dim=(-2, -1), keepdim=True)
    return (image - mean) * factor + mean


IMAGE_SHIFTS: dict[str, ImageShift] = {
    "rotation": rotation,
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "contrast": contrast,
}


class ShiftedImages(Dataset):
    """A normalized image data set with a shift applied in pixel space.

    Items are un-normalized (``x * std + mean``), shifted, clipped to [0, 1] and normalized again,
    so that the shift sees real pixels whatever the backbone's normalization.
    """

    def __init__(
        self,
        base: Dataset,
        shift: str,
        severity: int,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.base, self.shift, self.severity, self.seed = base, shift, severity, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.base[index]
        channels = image.shape[0]
        mean, std = self.mean[:channels], self.std[:channels]
        rng = torch.Generator().manual_seed(sample_seed(self.seed, index))
        pixels = IMAGE_SHIFTS[self.shift](image * std + mean, self.severity, rng).clamp(0, 1)
        return (pixels - mean) / std, label


# -- texts: applied to the raw text, before tokenization ----------------------------------------


def typos(text: str, severity: int, rng: random.Random) -> str:
    """Character typos on 2..20% of the letters: deletion, a random letter, or a swap."""
    rate = (0.02, 0.05, 0.1, 0.15, 0.2)[severity - 1]
    chars = list(text)
    i = 0
    while i < len(chars):
        if chars[i].isalpha() and rng.random() < rate:
            kind = rng.randrange(3)
            if kind == 0:
                del chars[i]
                continue
            if kind == 1:
                chars[i] = rng.choice(string.ascii_lowercase)
            elif i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
                i += 1  # the swapped letter is not hit twice
        i += 1
    return "".join(chars)


def word_dropout(text: str, severity: int, rng: random.Random) -> str:
    """Drop each word with probability 0.1..0.5 (keeping at least one)."""
    rate = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    words = text.split()
    return " ".join([w for w in words if rng.random() >= rate] or words[:1])


def truncation(text: str, severity: int, rng: random.Random) -> str:
    """Keep the first 80..10% of the words (before the tokenizer's own ``max_length``)."""
    share = (0.8, 0.6, 0.4, 0.25, 0.1)[severity - 1]
    words = text.split()
    return " ".join(words[: max(1, math.ceil(len(words) * share))])


TEXT_SHIFTS: dict[str, TextShift] = {
    "typos": typos,
    "word_dropout": word_dropout,
    "truncation": truncation,
}


def shift_texts(texts: Sequence[str], shift: str, severity: int, seed: int) -> list[str]:
    """``texts`` with a text shift applied, text ``i`` drawing from ``sample_seed(seed, i)``."""
    fn = TEXT_SHIFTS[shift]
    return [fn(t, severity, random.Random(sample_seed(seed, i))) for i, t in enumerate(texts)]
