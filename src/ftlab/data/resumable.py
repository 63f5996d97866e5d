"""A DataLoader that a mid-epoch checkpoint can resume exactly.

Lightning saves the state of every train loader that has ``state_dict``/``load_state_dict``
with the loop's progress, and restores it before it asks for the resumed epoch's iterator. The
state here is the sampler's epoch and how many batches of it training has taken; the resumed
iterator skips that many batches of *indices* (no sample is loaded), so a run resumed from a
checkpoint written mid-epoch (SIGTERM, ``every_n_train_steps``) sees exactly the batches an
uninterrupted run sees. Without it Lightning restarts the epoch's order from its first batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader


class ResumableLoader(DataLoader):
    """``DataLoader`` with the same arguments, plus Lightning's ``_Stateful`` interface."""

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self._taken_count()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied by the next iterator: the one Lightning makes for the resumed epoch.
        self._skip = int(state_dict.get("batches", 0))
        # Lightning sets the sampler's epoch only after it made that iterator (worker processes
        # draw indices as soon as it exists), so set it here.
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state_dict.get("epoch", 0)))

    @property
    def _index_sampler(self) -> Iterable[Any]:
        # torch's iterators read the index (batch) sampler here, also on a persistent-worker reset.
        return _Skipping(self, super()._index_sampler)

    def __iter__(self) -> Iterator[Any]:
        # The skip holds while torch builds this iterator (a worker iterator reads the index
        # sampler twice), and for this iterator only.
        self._skip_now, self._skip = getattr(self, "_skip", 0), 0
        self._taken = self._skip_now  # batches of this epoch already trained on
        try:
            iterator = super().__iter__()
        finally:
            self._skip_now = 0
        return _Counting(self, iterator)

    def _taken_count(self) -> int:
        return int(getattr(self, "_taken", 0))


class _Skipping:
    """The loader's index sampler, starting ``skip`` batches in when resuming; same length."""

    def __init__(self, loader: ResumableLoader, indices: Iterable[Any]) -> None:
        self.loader, self.indices = loader, indices

    def __iter__(self) -> Iterator[Any]:
        return islice(iter(self.indices), getattr(self.loader, "_skip_now", 0), None)

    def __len__(self) -> int:
        return len(self.indices)  # type: ignore[arg-type]


class _Counting:
    """Counts the batches handed to training (worker processes may have fetched more)."""

    def __init__(self, loader: ResumableLoader, iterator: Iterator[Any]) -> None:
        self.loader, self.iterator = loader, iterator

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._taken += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]
