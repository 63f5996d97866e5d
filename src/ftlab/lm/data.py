"""The language-model data module: examples read, split by a fixed seed, tokenized with their
loss masks (ftlab.lm.formats) and batched padded or packed (ftlab.lm.packing)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ftlab.data.base import EpochShuffle
from ftlab.data.resumable import ResumableLoader
from ftlab.errors import FtlabError
from ftlab.lm.formats import Tokenized, check_loss_on, encode
from ftlab.lm.packing import Collate, padding_share
from ftlab.lm.sources import read_source

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    """Train / val / test of one example source for a causal LM.

    Args:
        tokenizer: the backbone's tokenizer.
        source: ``chatterbot`` | ``bbc_topic`` | ``jsonl`` (ftlab.lm.sources); ``path`` for jsonl.
        max_length: tokens kept per example (from the left), and a packed row's width.
        loss_on: ``auto | completion | assistant | all`` (ftlab.lm.formats).
        chat: render prompt–completion pairs with the chat template (user, assistant turns).
        packing: several examples a row (ftlab.lm.packing).
        val_fraction, test_fraction: shares of the examples, split by ``split_seed``.
        max_train_samples, max_eval_samples: seeded subsets (None: all).
    """

    def __init__(
        self,
        tokenizer: Any,
        source: str = "chatterbot",
        path: str | None = None,
        max_length: int = 256,
        loss_on: str = "auto",
        chat: bool = False,
        packing: bool = False,
        batch_size: int = 8,
        num_workers: int = 0,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_chars: int = 400,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise FtlabError(f"data.batch_size={batch_size} must be at least 1")
        if not (
            0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise FtlabError(
                f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: each in "
                "[0, 1), val above 0, together below 1"
            )
        self.tokenizer = tokenizer
        self.source, self.path = source, path
        self.max_length = int(max_length)
        self.loss_on = check_loss_on(loss_on)
        self.chat = bool(chat)
        self.packing = bool(packing)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.split_seed = int(split_seed)
        self.fractions = (float(val_fraction), float(test_fraction))
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.max_chars = int(max_chars)
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.tokenized: dict[str, list[Tokenized]] = {}
        self.collate = Collate(tokenizer.pad_token_id, self.packing, self.max_length)

    # ftlab's classification data contract, for the parts of a run that read it
    num_classes = 0
    classes: tuple[str, ...] = ()

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        examples = read_source(self.source, self.path, self.max_chars)
        order = np.random.default_rng(self.split_seed).permutation(len(examples))
        n_val = max(1, round(self.fractions[0] * len(examples)))
        n_test = round(self.fractions[1] * len(examples))
        parts = {
            "val": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
        caps = {"train": self.max_train_samples, "val": self.max_eval_samples}
        caps["test"] = self.max_eval_samples
        for split, idx in parts.items():
            if caps[split] is not None:
                idx = idx[: int(caps[split])]
            self.raw[split] = [examples[i] for i in idx]
            self.tokenized[split] = [
                encode(self.tokenizer, e, self.max_length, self.loss_on, self.chat)
                for e in self.raw[split]
            ]
        if not self.tokenized["train"]:
            raise FtlabError(
                f"data.source={self.source}: no training examples left after the split"
            )
        log.info(
            "%s: %d train / %d val / %d test examples",
            self.source,
            *(len(self.tokenized[s]) for s in ("train", "val", "test")),
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # The classifier data's loader (ftlab.data.base): a shuffle that depends only on
        # (seed, epoch) and shards itself over DDP ranks, and a loader whose position a
        # checkpoint holds, so that a run resumed mid-epoch takes the uninterrupted run's
        # batches (ftlab.data.resumable; ExactResume in ftlab.lm.edge applies it). A plain
        # DataLoader(shuffle=True) draws the order from a generator a checkpoint does not keep,
        # and Lightning restarts an interrupted epoch from its first batch.
        sampler = (
            EpochShuffle(len(self.tokenized[split]), torch.initial_seed()) if shuffle else None
        )
        return ResumableLoader(
            self.tokenized[split],  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def padding(self, split: str = "train") -> dict[str, float]:
        """The padding share of ``split``'s batches, as collated and as the other way would."""
        out = {}
        for packing in (False, True):
            collate = Collate(self.tokenizer.pad_token_id, packing, self.max_length)
            pads = total = 0
            data = self.tokenized[split]
            for i in range(0, len(data), self.batch_size):
                p, t = padding_share(collate(data[i : i + self.batch_size]))
                pads, total = pads + p, total + t
            out["packed" if packing else "padded"] = round(pads / max(total, 1), 4)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "examples": {s: len(v) for s, v in self.tokenized.items()},
            "packing": self.packing,
            "loss_on": self.loss_on,
            "padding_share": self.padding("train"),
        }
