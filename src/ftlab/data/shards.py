"""Shards for data larger than one disk: litdata's ``optimize`` writes them, its
``StreamingDataset`` reads them from object storage (a local folder stands in for it here).

Why litdata and not WebDataset (litdata 0.2.76, webdataset 1.0.2, both on PyPI here):

- **Resume.** litdata's ``StreamingDataLoader.state_dict()`` records, per rank and worker, the
  chunk and the sample within it; loading it continues at the next sample. WebDataset's
  ``WebLoader`` has no state: a resumed epoch starts again (its docs suggest ``with_epoch``
  and re-sampling, i.e. approximate resume).
- **Even DDP ranks.** ``StreamingDataset(drop_last=True)`` gives every rank the same number of
  samples (it deals out chunks, then cuts to the smallest); WebDataset splits by shard
  (``split_by_node``) and leaves uneven ranks to the user (``with_epoch(n)`` + resampling).
- **Random access and shuffle.** litdata's chunks have an index, so ``shuffle=True`` permutes
  chunks and samples from a seed; WebDataset's tar streams shuffle through a buffer only.
- **Object storage.** both read ``s3://`` / ``gs://``; litdata caches chunks locally and
  evicts them (``max_cache_size``), so a set larger than the disk streams through.

Against litdata: it brings boto3/obstore, and its ``optimize`` runs the row function in worker
processes (so a row function must be importable), which :func:`write_shards` respects.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ftlab.data.images import pil_transform
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec


class _Row:
    """One row of a ``datasets.Dataset`` as a shard sample: PNG bytes and an int label
    (a class, not a closure: litdata's workers receive it pickled)."""

    def __init__(self, path: str, image_column: str, label_column: str) -> None:
        self.path, self.image_column, self.label_column = path, image_column, label_column
        self._data: Any = None

    def __call__(self, index: int) -> dict[str, Any]:
        if self._data is None:
            import datasets

            self._data = datasets.load_from_disk(self.path)
        row = self._data[int(index)]
        buffer = io.BytesIO()
        row[self.image_column].save(buffer, format="PNG")
        return {"image": buffer.getvalue(), "label": int(row[self.label_column])}


def write_shards(
    data: Any,
    image_column: str,
    label_column: str,
    output_dir: str | Path,
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
) -> Path:
    """Write a ``datasets.Dataset`` (image + integer label) as litdata shards."""
    import tempfile

    from litdata import optimize

    out = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="ftlab-shards-") as tmp:
        data.save_to_disk(tmp)  # the workers read it memory-mapped, not pickled
        optimize(
            fn=_Row(tmp, image_column, label_column),
            inputs=list(range(len(data))),
            output_dir=str(out),
            chunk_bytes=chunk_bytes,
            num_workers=num_workers,
        )
    return out


def _streaming_dataset() -> type:
    try:
        from litdata import StreamingDataset
    except ImportError as err:
        raise FtlabError(
            "shards need litdata: pip install litdata (pyproject.toml lists it)"
        ) from err
    return StreamingDataset


class ShardDataset(_streaming_dataset()):  # type: ignore[misc]
    """litdata shards decoded for an image backbone: ``(image tensor, label)``.

    ``drop_last=True`` gives every DDP rank the same number of samples; ``seed`` fixes the
    shuffle; resume through ``litdata.StreamingDataLoader``'s ``state_dict``.
    """

    def __init__(
        self, input_dir: str | Path, spec: ImageSpec, shuffle: bool = False, seed: int = 0
    ) -> None:
        super().__init__(str(input_dir), shuffle=shuffle, seed=seed, drop_last=True)
        self.transform = pil_transform(spec, augment=False)
        self.mode = "RGB" if spec.channels == 3 else "L"

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, int]:
        from PIL import Image

        sample = super().__getitem__(index)
        image = Image.open(io.BytesIO(sample["image"])).convert(self.mode)
        return self.transform(image), int(sample["label"])
