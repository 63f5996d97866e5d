"""``data.streaming=true``: a ``datasets.IterableDataset`` read as a stream, even across DDP
ranks, shuffled from the seed, and resumable mid-epoch to the exact sample.

- **Even ranks.** ``split_dataset_by_node`` gives rank r its shards (or every W-th example when
  the shards do not divide among the ranks), so ranks can hold different numbers of rows. Every
  rank yields exactly ``rows // world // batch_size`` batches: a rank whose part runs out first
  starts its part again for the few batches left, so no rank waits at a collective that another
  rank never reaches.
- **Shuffling.** ``IterableDataset.shuffle`` keeps a buffer that its ``state_dict`` does not
  hold: datasets 5.2 warns "Loading a state dict of a shuffle buffer of a dataset without the
  buffer content ... will be refilled" (``BufferShuffledExamplesIterable.load_state_dict``), so a
  resumed run would see other samples. Here rows are shuffled in blocks of
  ``data.shuffle_block`` rows, each permuted by ``(seed, epoch, block)``: memory is one block,
  and the order depends only on the seed.
- **Exact resume.** A checkpoint holds the epoch, the batches taken and the dataset's own
  ``state_dict()`` at the start of the block the next sample comes from. The resumed stream
  loads that state, re-reads the block, permutes it the same way and skips the samples already
  trained on. Under DDP Lightning saves rank 0's loader state only, so the other ranks re-read
  their part from the epoch's start instead (same samples, more reading).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset

from ftlab.data.resumable import ResumableLoader

Encode = Callable[[dict[str, Any]], Any]


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class StreamSplit(IterableDataset):
    """One split of a stream, read by this rank: encoded samples, ``length`` of them.

    Args:
        make: returns a fresh ``datasets.IterableDataset`` of the whole split.
        rows: the split's row count (for the even length).
        batch_size: samples per batch (the length is whole batches).
        encode: a raw row to a sample ``(inputs, label)``.
        seed: the shuffle seed; None keeps the stream's order (val/test).
        block: rows shuffled together.
        shard: whether each DDP rank reads its own part (train) or the whole split (val/test).
    """

    def __init__(
        self,
        make: Callable[[], Any],
        rows: int,
        batch_size: int,
        encode: Encode,
        seed: int | None = None,
        block: int = 1024,
        shard: bool = True,
    ) -> None:
        self.make, self.encode, self.seed = make, encode, seed
        self.block, self.shard, self.batch_size = max(1, int(block)), shard, batch_size
        self.rows = int(rows)
        self.epoch = 0
        self.resume: dict[str, Any] | None = None
        self._block_states: OrderedDict[int, Any] = OrderedDict()
        self._current: Any = None

    @property
    def batches(self) -> int:
        """Batches every rank yields: the smallest rank's part (read at use, not at setup,
        which may run before the process group exists)."""
        size, _ = world() if self.shard else (1, 0)
        return max(1, self.rows // size // self.batch_size)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def _stream(self) -> Any:
        from datasets.distributed import split_dataset_by_node

        stream = self.make()
        size, rank = world() if self.shard else (1, 0)
        if size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=size)
        return stream

    def _order(self, block_no: int, n: int) -> np.ndarray:
        if self.seed is None:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch, block_no]).permutation(n)

    def __iter__(self) -> Iterator[Any]:
        stream = self._stream()
        start, block_no, resume = 0, 0, self.resume
        self.resume = None
        if resume is not None:
            start = int(resume.get("samples", 0))
            block_no = start // self.block
            state = resume.get("dataset")
            if state is not None and world()[0] == 1:
                stream.load_state_dict(state)  # the dataset at the start of that block
            else:
                block_no = 0  # re-read this rank's part from the epoch's start
        skip = start - block_no * self.block
        self._block_states.clear()
        rows = iter(stream)
        self._current = stream
        left = len(self) - block_no * self.block
        while left > 0:
            self._block_states[block_no] = copy.deepcopy(stream.state_dict())
            while len(self._block_states) > 3:  # the fetcher reads at most a batch ahead
                self._block_states.popitem(last=False)
            taken = list(islice(rows, min(self.block, left)))
            if not taken:  # this rank's part ran out: start it again (even batch counts)
                stream = self._current = self._stream()
                rows = iter(stream)
                continue
            for i in self._order(block_no, len(taken)):
                if skip:
                    skip -= 1
                    continue
                yield self.encode(taken[i])
            left -= len(taken)
            block_no += 1

    def checkpoint(self, samples: int) -> dict[str, Any]:
        """What resumes the stream after ``samples`` samples of this epoch."""
        block_no = samples // self.block
        state = self._block_states.get(block_no)
        if state is None and block_no - 1 in self._block_states and self._current is not None:
            # The last sample of the block before was just taken: the stream stands at the
            # start of this one.
            state = copy.deepcopy(self._current.state_dict())
        return {"samples": samples, "dataset": state}


class EpochHolder:
    """Stands in for an iterable loader's sampler, so that Lightning's ``set_epoch`` (called on
    ``loader.sampler``) reaches the stream; iterates like the sampler it wraps."""

    def __init__(self, sampler: Any, stream: StreamSplit, seed: int) -> None:
        self.sampler, self.stream, self.seed, self.epoch = sampler, stream, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.stream.epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sampler)


class StreamLoader(ResumableLoader):
    """A :class:`ResumableLoader` over a :class:`StreamSplit`: its state adds the stream's
    position (see the module docstring), so ``ExactResume`` positions it like any other."""

    def __init__(self, dataset: StreamSplit, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        # DataLoader refuses a sampler for an IterableDataset and refuses setting one later.
        object.__setattr__(self, "sampler", EpochHolder(self.sampler, dataset, dataset.seed or 0))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = super().state_dict()
        stream: StreamSplit = self.dataset  # type: ignore[assignment]
        state["stream"] = stream.checkpoint(state["batches"] * stream.batch_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stream: StreamSplit = self.dataset  # type: ignore[assignment]
        self.sampler.set_epoch(int(state_dict.get("epoch", 0)))
        batches = int(state_dict.get("batches", 0))
        saved = state_dict.get("stream") or {}
        stream.resume = {**saved, "samples": batches * stream.batch_size} if batches else None
        self._resumed_batches = batches

    def __iter__(self) -> Iterator[Any]:
        # The stream skips its own samples: the index sampler must not skip batches too.
        self._skip = 0
        iterator = super().__iter__()
        self._taken = getattr(self, "_resumed_batches", 0)
        self._resumed_batches = 0
        return iterator
