"""The locked on-disk tensor store of the feature cache (and of the teacher's logits,
:mod:`ftlab.distillation`): keys, checked reads, whole-file writes, one job computing at a time."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn
from torch.utils.data import DataLoader

import ftlab.lock_wait as lock_wait
from ftlab.progress import LOG_EVERY_S, track
from ftlab.state_dicts import first_line

log = logging.getLogger("ftlab")


CACHE_VERSION = 1  # bump when a code change alters the features a backbone produces


FILE_FORMAT = "ftlab-features"  # the metadata's "format"; files without it are recomputed


def cache_key(backbone: nn.Module, data: Any, split: str, precision: str) -> str:
    """What the features depend on: the backbone's weights (id and state), the data's samples
    and transform (``fingerprint()``), the split and the precision."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())
    identity = {
        "version": CACHE_VERSION,
        "backbone": type(backbone).__name__,
        "weights_id": getattr(backbone, "weights_id", ""),
        "pooling": getattr(backbone, "pooling", None),  # model.pooling=cls: other features
        "state": digest.hexdigest(),
        "data": type(data).__name__,
        "fingerprint": data.fingerprint(),
        "split": split,
        "precision": precision,
    }
    blob = json.dumps(identity, sort_keys=True).encode()
    return f"{split}-{hashlib.sha256(blob).hexdigest()[:24]}"


def read_or_compute(
    path: Path | None,
    key: str,
    samples: int,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    writer: bool = True,
) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """The verified tensors at ``path``, else ``compute()``'s, written there by the ``writer``
    (rank 0); with their source, ``"disk"`` or ``"computed"``. ``path`` None: compute only.

    Shared by the feature cache and the teacher-logit cache (ftlab.distillation).
    """
    stored = read_features(path, key, samples) if path is not None else None
    if stored is not None:
        return stored, "disk"
    # Rank 0 alone writes, so it alone queues behind other jobs computing this file.
    turn = path is not None and writer
    with _one_job_computes(path) if turn else nullcontext():
        stored = read_features(path, key, samples) if turn else None  # written meanwhile?
        if stored is not None:
            return stored, "disk"
        stored = compute()
        if turn:
            write_features(path, key, *stored)
    return stored, "computed"


@torch.no_grad()
def compute_features(
    backbone: nn.Module, loader: DataLoader, trainer: L.Trainer, what: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's outputs for every sample of ``loader``'s data set, in index order, computed
    in eval mode the way Lightning runs a step (device, input conversion, precision context).
    Shows its progress as ``what`` (a bar in a terminal, else a log line every 30 s)."""
    ordered = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    show = trainer.is_global_zero
    if show:
        log.info("computing %s: %d samples in %d batches", what, len(loader.dataset), len(ordered))
    # The extra pass must not draw from the run's RNG (a loader draws a seed per iterator), so
    # that head dropout then gets the same masks as on the fly.
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in track(ordered, len(ordered), what, show=show):
                inputs, targets = trainer.precision_plugin.convert_input(
                    trainer.strategy.batch_to_device(batch)
                )
                with trainer.precision_plugin.forward_context():
                    features.append(backbone(inputs).cpu())
                labels.append(targets.cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_features(path: Path, key: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Write a cache file with its key and content hash in the metadata, atomically."""
    tensors = {"features": features, "labels": labels}
    metadata = {
        "format": FILE_FORMAT,
        "version": str(CACHE_VERSION),
        "key": key,
        "samples": str(len(labels)),
        "sha256": content_hash(tensors),
    }
    _write_atomic(tensors, path, metadata)


def read_features(
    path: Path, key: str, samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The features and labels stored at ``path``, verified against ``key``, their content hash
    and the split's number of ``samples`` (when given); None when there is no good file.

    A file that fails the check is logged and deleted (unless another job has replaced it by
    then), so that the caller computes and writes it again.
    """
    try:
        with path.open("rb") as file:
            identity = os.fstat(file.fileno())
            blob = file.read()
    except FileNotFoundError:
        return None
    try:
        return _verified(blob, key, samples)
    except (SafetensorError, ValueError) as err:
        reason = first_line(err)
        log.warning("cached features %s are unusable (%s): deleted, computed again", path, reason)
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
                path.unlink()
        except FileNotFoundError:
            pass
        return None


def _verified(blob: bytes, key: str, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse a cache file's bytes; a ValueError (or SafetensorError) says what is wrong."""
    meta = _metadata(blob, key)
    tensors = load(blob)
    if set(tensors) != {"features", "labels"}:
        raise ValueError(f"holds {sorted(tensors)}, not features and labels")
    features, labels = tensors["features"], tensors["labels"]
    if features.ndim != 2 or not features.is_floating_point() or labels.ndim != 1:
        raise ValueError(f"features {list(features.shape)}, labels {list(labels.shape)}")
    if labels.dtype != torch.int64 or len(features) != len(labels):
        raise ValueError(f"{len(features)} features, {len(labels)} {labels.dtype} labels")
    if samples is not None and len(labels) != samples:
        raise ValueError(f"{len(labels)} rows where the split has {samples} samples")
    if content_hash(tensors) != meta["sha256"]:
        raise ValueError("its tensors do not match the content hash in its metadata")
    return features, labels


def _metadata(blob: bytes, key: str) -> dict[str, str]:
    """The ftlab metadata of a safetensors file's bytes, once its header and length add up."""
    size = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else len(blob)
    if 8 + size > len(blob):
        raise ValueError(f"truncated: {len(blob)} bytes, in its header")
    header = json.loads(blob[8 : 8 + size])  # a JSONDecodeError is a ValueError
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT or "sha256" not in meta:
        raise ValueError("no content hash in its metadata (written by an older ftlab?)")
    if meta.get("key") != key:
        raise ValueError(f"written for {meta.get('key')!r}, not for its name {key!r}")
    try:
        end = max(int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__")
    except (KeyError, TypeError, IndexError, ValueError):
        raise ValueError("its header lists no tensors with their offsets") from None
    if 8 + size + end != len(blob):
        raise ValueError(
            f"truncated or padded: {len(blob)} bytes, its header says {8 + size + end}"
        )
    return meta


def _write_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write, flush to disk, then rename, so that a concurrent run never reads half a file (and
    a crash leaves the old file or the new one). The partial file's name is unique across the
    hosts sharing the directory, not only across one host's pids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    partial = path.with_name(f"{path.name}.{tag}.partial")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, partial, metadata)
        with partial.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _one_job_computes(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` (flock) while computing ``path``: a job that needs the same
    features waits, logging who it waits for, then reads the file instead of computing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f"{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        started, logged, dead = time.monotonic(), None, None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                # A timeout, and a stale lock taken over (ftlab.lock_wait): a fresh file.
                note = os.pread(fd, 200, 0).decode(errors="replace")
                dead = (
                    (now - started if dead is None else dead)
                    if lock_wait.holder_dead(note)
                    else None
                )
                if lock_wait.check_wait(lock, note, now - started, dead):
                    log.info("%s's holder (%s) is gone: taking it over", lock, note)
                    os.close(fd)
                    lock.unlink(missing_ok=True)
                    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
                    continue
                if logged is None or now - logged >= LOG_EVERY_S:
                    holder = os.pread(fd, 200, 0).decode(errors="replace") or "another job"
                    log.info(
                        "waiting for %s, which is computing %s (%.0f s so far)",
                        holder,
                        path.name,
                        now - started,
                    )
                    logged = now
                time.sleep(0.2)
            except OSError:  # a file system without flock: compute anyway, writes stay atomic
                break
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
