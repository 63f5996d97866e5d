"""The LightningDataModule every ftlab data option builds on."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ftlab.data.resumable import ResumableLoader
from ftlab.data.splits import Fractions, stratified_split, subsample
from ftlab.errors import FtlabError

log = logging.getLogger(__name__)

# Bump when a change to the code alters the tensors a data option produces, so that
# caches keyed by fingerprint() are not reused across that change.
FINGERPRINT_VERSION = 1


@dataclass
class Splits:
    """The three data sets of a data option and its class names (index = label)."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]


class ClassificationDataModule(L.LightningDataModule):
    """Common keys of every data option and the loaders built from them.

    Args:
        batch_size: samples per batch in every loader.
        num_workers: loader worker processes (0 loads in the main process).
        split_seed: seeds the train/val/test split and ``max_train_samples``, independently of
            the run's seed, so that the split stays fixed across runs.
        max_train_samples: keep a seeded random subset of this many training samples
            (None keeps all); val and test are unaffected.

    Subclasses implement :meth:`_build` and extend :meth:`_identity`.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        split_seed: int = 0,
        max_train_samples: int | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise FtlabError(f"data.batch_size={batch_size} must be at least 1")
        if int(num_workers) < 0:
            raise FtlabError(f"data.num_workers={num_workers} must be 0 or more")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.split_seed = int(split_seed)
        self.max_train_samples = max_train_samples
        # Positions of each split in the source data where one source is split by fraction;
        # kept for inspection and tests.
        self.split_indices: dict[str, np.ndarray] = {}
        self._splits: Splits | None = None
        # How one source is split by fraction: the run's task sets it (ftlab.tasks; compose),
        # per class by default. The data layer knows no task: it calls what it was given.
        self.splitter: Callable[[np.ndarray, Fractions, int], dict[str, np.ndarray]] = (
            stratified_split
        )

    # -- to implement -------------------------------------------------------------------------

    def _build(self) -> Splits:
        """Read the data and make the three data sets (called once, by :meth:`setup`)."""
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        """Everything that determines the samples and their tensors (see :meth:`fingerprint`)."""
        return {
            "version": FINGERPRINT_VERSION,
            "data": type(self).__name__,
            "split_seed": self.split_seed,
            "max_train_samples": self.max_train_samples,
        }

    def _collate(self) -> Callable[[list[Any]], Any] | None:
        """The loaders' collate function; None uses PyTorch's default."""
        return None

    # -- Lightning hooks --------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Read and split the data; later calls (any stage) reuse the first result."""
        if self._splits is not None:
            return
        splits = self._build()
        log.info(
            "%s: %d classes, %d train / %d val / %d test samples",
            type(self).__name__,
            len(splits.classes),
            len(splits.train),  # type: ignore[arg-type]
            len(splits.val),  # type: ignore[arg-type]
            len(splits.test),  # type: ignore[arg-type]
        )
        self._splits = splits

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._ready().train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._ready().val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._ready().test, shuffle=False)

    # -- public -----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names; ``classes[i]`` is the name of label ``i``."""
        return self._ready().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict[str, Any]:
        """What the data option noticed while loading, for ``metrics.json`` ``data``."""
        return {}

    def fingerprint(self) -> str:
        """A short stable hash of the data identity and the transform (a cache key)."""
        blob = json.dumps(self._identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- helpers for subclasses -------------------------------------------------------------

    def _split(
        self,
        labels: np.ndarray,
        fractions: Fractions,
        make: Callable[[str, np.ndarray], Dataset],
    ) -> dict[str, Dataset]:
        """Split one source (by :attr:`splitter`: stratified per class unless the task says
        otherwise; ``max_train_samples`` applied to train) and make each part's data set with
        ``make(split_name, indices)``; parts with fraction 0 are left out. ``labels`` are the
        targets: ``[N]`` class indices, ``[N, C]`` multi-hot labels or float values."""
        parts = self.splitter(labels, fractions, self.split_seed)
        parts["train"] = self._subsample(parts["train"])
        self.split_indices = parts
        return {name: make(name, idx) for name, idx in parts.items()}

    def _check_spec(self, spec: Any, expected: type, kind: str, other: str) -> Any:
        """``spec`` as an instance of ``expected``, or an error naming the mismatch."""
        if not isinstance(spec, expected):
            raise FtlabError(
                f"data={type(self).__name__} is {kind} data option but the backbone takes "
                f"{type(spec).__name__}: pick {kind} backbone or {other} data option"
            )
        return spec

    def _subsample(self, train_indices: np.ndarray) -> np.ndarray:
        return subsample(train_indices, self.max_train_samples, self.split_seed)

    def _ready(self) -> Splits:
        # Lazily set up, so that classes are available before a Trainer calls setup().
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return ResumableLoader(  # resumes mid-epoch exactly (ftlab.data.resumable)
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), torch.initial_seed()) if shuffle else None,
            num_workers=workers,
            collate_fn=self._collate(),
            # Re-spawning workers every epoch costs seconds per epoch on small data sets.
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


class EpochShuffle(DistributedSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order, and
    that shards itself across DDP ranks: rank r of W takes every W-th index of the one
    permutation, so the W shards of a step make up the one-process batch of W x batch_size.

    torch's RandomSampler draws from the global RNG, whose state a checkpoint does not hold.
    This is torch's DistributedSampler with shuffling on (one process: world 1, rank 0), which
    Lightning leaves in place under DDP. Lightning would wrap any other sampler in its
    DistributedSamplerWrapper, which shuffles the wrapped order once more with its own seed
    (lightning 2.6 passes shuffle=True for every training loader in ``_process_dataloader``),
    so DDP ranks would see other batches than one process does. Lightning calls ``set_epoch``.
    """

    def __init__(self, size: int, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)


class FractionSplitMixin:
    """For a data option whose one source is split by ``val_fraction`` / ``test_fraction``
    (shares of each class); put it before the data module base class."""

    def __init__(
        self,
        input_spec: Any,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        **common: Any,
    ) -> None:
        super().__init__(input_spec, **common)  # type: ignore[call-arg]
        self.fractions = Fractions.from_keys(val_fraction, test_fraction)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "fractions": asdict(self.fractions)}  # type: ignore[misc]
