"""Tokenized text data sets, per-batch padding and the base of the text data options."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ftlab.data.base import ClassificationDataModule
from ftlab.errors import FtlabError
from ftlab.specs import TextSpec

# What a text backbone's forward takes; other tokenizer outputs (offsets, ...) are dropped.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Encoded = dict[str, list[int]]


class TokenizedDataset(Dataset):
    """Texts tokenized once up front (unpadded); an item is ``({key: ids}, label)``.

    ``texts`` keeps the raw texts, so that evaluation can re-tokenize shifted copies of them
    (``ftlab.evaluation.shifts``).
    """

    def __init__(
        self,
        encodings: dict[str, list[list[int]]],
        labels: np.ndarray,
        texts: list[str] | None = None,
    ) -> None:
        self.encodings = encodings
        self.labels = labels.astype(np.int64)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Encoded, int]:
        return {k: v[index] for k, v in self.encodings.items()}, int(self.labels[index])


class PadCollate:
    """Pads a batch to its longest sequence: ``input_ids`` with the tokenizer's pad id,
    the other inputs with 0 (a class rather than a closure so that loader workers can pickle it).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"

    def __call__(
        self, batch: list[tuple[Encoded, int]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        longest = max(len(item["input_ids"]) for item, _ in batch)
        inputs = {}
        for key in batch[0][0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            padded = torch.full((len(batch), longest), fill, dtype=torch.int64)
            for row, (item, _) in enumerate(batch):
                ids = torch.as_tensor(item[key], dtype=torch.int64)
                if self.left:
                    padded[row, longest - len(ids) :] = ids
                else:
                    padded[row, : len(ids)] = ids
            inputs[key] = padded
        labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
        return inputs, labels


class TextDataModule(ClassificationDataModule):
    """Base of the text data options: tokenizes with the backbone's tokenizer in setup.

    Args:
        input_spec: the backbone's :class:`~ftlab.specs.TextSpec`.
        max_length: truncate texts to this many tokens; None uses ``input_spec.max_length``.
        **common: the keys of :class:`~ftlab.data.base.ClassificationDataModule`.
    """

    def __init__(self, input_spec: TextSpec, max_length: int | None = None, **common: Any):
        super().__init__(**common)
        input_spec = self._check_spec(input_spec, TextSpec, "a text", "an image")
        limit = input_spec.max_length
        if max_length is not None and not 0 < int(max_length) <= limit:
            raise FtlabError(
                f"data.max_length={max_length} must be between 1 and the backbone's limit {limit}"
            )
        self.tokenizer = input_spec.tokenizer
        self.max_length = int(max_length) if max_length is not None else limit
        self.tokenizer_name = (
            input_spec.name
            or getattr(self.tokenizer, "name_or_path", "")
            or type(self.tokenizer).__name__
        )

    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "tokenizer": self.tokenizer_name,
            "max_length": self.max_length,
        }

    def _collate(self) -> PadCollate:
        pad_id = self.tokenizer.pad_token_id
        side = getattr(self.tokenizer, "padding_side", "right")
        return PadCollate(pad_id if pad_id is not None else 0, side)

    def _tokenize(self, texts: list[str], labels: np.ndarray) -> TokenizedDataset:
        """Tokenize (truncated, unpadded) into a data set."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        kept = {key: list(encoded[key]) for key in MODEL_INPUTS if key in encoded}
        return TokenizedDataset(kept, labels, texts)
