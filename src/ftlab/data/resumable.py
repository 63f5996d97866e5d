"""What makes a run resumed from any checkpoint, mid-epoch included, continue the same run.

A checkpoint written mid-epoch (SIGTERM, ``every_n_train_steps``, the last one before a
SIGKILL) holds the weights, optimizer, scheduler and Lightning's loop progress. Three things
more are needed for the resumed run to take exactly the steps the uninterrupted one takes:

- **The batch position.** :class:`ResumableLoader` has Lightning's ``_Stateful`` interface: its
  state is the sampler's epoch and how many batches of it training has taken, and the resumed
  iterator skips that many batches of *indices* (no sample is loaded). Lightning loads that
  state only inside ``FitLoop.setup_data``, and only when it runs after the checkpoint's loop
  state was restored. A scheduler sized by ``trainer.estimated_stepping_batches`` (ftlab's
  cosine) makes Lightning set up the train loader *before* that restore, and the later call
  returns early: the state was never applied, and the resumed epoch started again from its
  first batch (the epoch's first batches trained twice, its last ones never).
  :class:`ExactResume` applies it at ``on_train_start`` instead, and makes the iterator anew.
- **The random state.** Lightning does not save the global RNGs. Dropout and augmentations in
  the main process draw from them, so :class:`ExactResume` saves torch's (CPU and CUDA),
  NumPy's and Python's with every checkpoint and restores them before the first resumed step.
  Making a loader's iterator draws a worker seed; a :class:`ResumableLoader` draws it from its
  own generator, seeded by (seed, epoch), so Lightning may make iterators at other moments on a
  resume without moving the global RNG.
- **The freezing phase**, which Lightning's ``on_train_epoch_start`` (skipped on a mid-epoch
  restart) does not enter: ``PhaseCallback`` enters it at ``on_train_start`` too.

Not covered: random augmentations drawn inside loader *worker* processes
(``data.num_workers`` > 0 with ``data.augment=true``): the skipped batches are never loaded, so
a worker's RNG is elsewhere in its stream than in the uninterrupted run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

log = logging.getLogger("ftlab")


class ResumableLoader(DataLoader):
    """``DataLoader`` with the same arguments, plus Lightning's ``_Stateful`` interface.

    Each iterator's worker seed comes from the loader's own generator, seeded by the sampler's
    seed and epoch (not from the global RNG, see the module docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        self._own_generator = kwargs["generator"]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self._taken_count()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied by the iterators made until the first batch is drawn (Lightning may make more
        # than one on a resume), then dropped.
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
        # _skip_now holds while torch builds this iterator (a worker iterator reads the index
        # sampler twice).
        self._skip_now = getattr(self, "_skip", 0)
        self._taken = self._skip_now  # batches of this epoch already trained on
        seed = int(getattr(self.sampler, "seed", 0)) + int(getattr(self.sampler, "epoch", 0))
        self._own_generator.manual_seed(seed)
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
        self.loader._skip = 0  # the resumed position is taken: later iterators start at 0
        self.loader._taken += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]


class ExactResume(L.Callback):
    """Saves the global RNGs with every checkpoint; on a resume, puts the train loader at the
    saved position (whether or not Lightning did) and restores the RNGs before the first step."""

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None  # loaded from a checkpoint, not applied yet
        self._loaders: list[dict[str, Any]] | None = None  # the train loaders' saved states

    @property
    def state_key(self) -> str:
        return "ftlab.ExactResume"

    def state_dict(self) -> dict[str, Any]:
        # Lightning asks for it while it writes the checkpoint: the state right after the saved
        # step, from which the next step draws.
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("rng")

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Where Lightning keeps the states of the train loaders that have state_dict().
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loaders = list(loop.get("state_dict", {}).get("combined_loader", []))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loaders is not None:
            self._position_loaders(trainer, self._loaders)
            self._loaders = None
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None

    @staticmethod
    def _position_loaders(trainer: L.Trainer, states: list[dict[str, Any]]) -> None:
        """Each resumable train loader at its saved batch if the run resumes inside the saved
        epoch, else at the start of the epoch about to run; then a new iterator."""
        loop = trainer.fit_loop
        # Lightning would apply the states itself on a later reload: done here, once.
        loop._combined_loader_states_to_load = []
        combined = loop._combined_loader
        if combined is None or loop._data_fetcher is None:
            return
        loaders = [dl for dl in combined.flattened if isinstance(dl, ResumableLoader)]
        epoch = trainer.current_epoch  # the epoch about to run
        for loader, state in zip(loaders, states, strict=False):
            inside = int(state.get("epoch", -1)) == epoch
            loader.load_state_dict(state if inside else {"epoch": epoch, "batches": 0})
            if inside and state.get("batches"):
                log.info(
                    "resumed mid-epoch: epoch %d continues after its first %d batches",
                    epoch,
                    state["batches"],
                )
        iter(loop._data_fetcher)  # the iterator setup_data made has the position it had then


def rng_state() -> dict[str, Any]:
    """torch's (CPU, and CUDA when in use), NumPy's and Python's global RNG states, as tensors
    and plain values that ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
