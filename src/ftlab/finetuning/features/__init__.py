"""Cached backbone features for the epochs that train only the head on a frozen backbone.

While only the head trains, the backbone is a fixed function of each sample: it runs in eval
mode (FinetuneModule.train), no parameter of it changes and the transforms are deterministic. Its
outputs are then computed once and the head trains on them. The phases are cumulative, so the
cached epochs are always a prefix of the run, ``[0, until_epoch)``.

During fit, :class:`FeatureCache` stands in for the data module. In a cached epoch its train and
val loaders yield ``({FEATURES: [B, F]}, labels)`` with the data's own sampler (the same
EpochShuffle order) and batch size, so the head sees the same batches as on the fly; the module
skips the backbone for such inputs. Lightning asks for the loaders every epoch
(``reload_dataloaders_every_n_epochs=1``; each loader is built once and reused), so the switch
to images happens exactly at the phase boundary, after a resume too. Features live in memory and,
under ``paths.cache_dir``, on disk, keyed by the backbone (weights_id and a checksum of its
state), the data's ``fingerprint()`` (samples and transform), the split and the precision.

A file on disk is trusted only after a check: its metadata holds the key it was written for and
a SHA-256 of its tensors, and it must hold one feature row and one label per sample of the split.
A file that fails (truncated, altered, from another key or an older ftlab) is logged, deleted and
computed again. Files are written whole then renamed, so a reader never sees half of one; jobs
that need the same features at once take turns on ``<file>.lock``: one computes, the others then
read its file (a job killed while computing releases the lock with its process).

The package's modules: the cache plan (:mod:`~ftlab.finetuning.features.cache_plan`), the
stand-in data module (:mod:`~.datamodule`), the on-disk tensor store (:mod:`~.store`, which
the teacher's logit cache shares) and the L-BFGS head solver (:mod:`~.head_solver`).
"""

from ftlab.finetuning.features.cache_plan import (
    FEATURES,
    CachePlan,
    partial_train_split,
    plan_cache,
    whole,
)
from ftlab.finetuning.features.datamodule import FeatureCache, FeatureDataset
from ftlab.finetuning.features.head_solver import HeadSolver, fit_head_lbfgs, solver_name
from ftlab.finetuning.features.store import (
    CACHE_VERSION,
    FILE_FORMAT,
    cache_key,
    compute_features,
    content_hash,
    read_features,
    read_or_compute,
    write_features,
)

__all__ = [
    "CACHE_VERSION", "FEATURES", "FILE_FORMAT", "CachePlan", "FeatureCache", "FeatureDataset",
    "HeadSolver", "cache_key", "compute_features", "content_hash", "fit_head_lbfgs",
    "partial_train_split", "plan_cache", "read_features", "read_or_compute", "solver_name",
    "whole", "write_features",
]  # fmt: skip
