"""What a backbone tells the data pipeline about the inputs it expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageSpec:
    """Image preprocessing taken from the backbone's pretrained config (timm data config)."""

    size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int = 3
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


@dataclass(frozen=True)
class TextSpec:
    """Text preprocessing: the backbone's own tokenizer and its max length."""

    tokenizer: Any  # a transformers PreTrainedTokenizer(Fast)
    max_length: int
    name: str = ""  # identifies the tokenizer (cache keys, logs)


InputSpec = ImageSpec | TextSpec
