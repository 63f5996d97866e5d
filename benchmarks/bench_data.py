"""Data sources: samples per second of each ftlab source against a plain DataLoader over the same
rows, and the peak RSS of a streamed pass as the data grows 10x.

samples/s
    One epoch of the train loader (batch 64, no workers, the first batch excluded), best of
    ``repeats``. The rows are sklearn's digits (8x8 PNG images in a ``datasets`` Image column,
    tiled to ``rows``), decoded and normalized at 8 px. Sources: ``in_memory`` (the rows as
    ftlab's TensorImageDataset), ``hf_dataset`` (the save_to_disk folder, map-style),
    ``streaming`` (the same folder, ``data.streaming=true``) and ``shards`` (litdata's
    StreamingDataset over ``optimize``'d shards in a local folder), each against ``plain``: a
    torch ``DataLoader`` over a ``TensorDataset`` of the already-decoded tensors (the upper
    bound: no decoding). Report only.
peak RSS
    A child process streams a parquet file of ``rows`` and of 10x ``rows`` rows (1 KiB of
    payload each) through ``data.streaming=true`` and reports its peak RSS. Target: the 10x
    file's peak within 1.25x of the small one's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_bytes, quiet, report

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def digit_rows(rows: int):
    """``rows`` digits as a datasets.Dataset (Image + label) and as decoded arrays."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(rows) % len(d.target)
    pixels = (d.images[idx] * 15).astype(np.uint8)
    features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"))
    data = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": d.target[idx].tolist()},
        features=features,
    )
    return data, pixels, d.target[idx]


def rate(loader) -> float:
    """Samples/s over one pass, the first batch (iterator start-up) excluded."""
    it = iter(loader)
    first = next(it)
    start, n = time.perf_counter(), 0
    for inputs, _ in it:
        n += len(inputs)
    del first
    return n / max(time.perf_counter() - start, 1e-9)


def best(make, repeats: int) -> float:
    return max(rate(make()) for _ in range(repeats))


def throughput(rows: int, repeats: int, tmp: Path) -> list[dict]:
    from torch.utils.data import DataLoader, TensorDataset

    from ftlab.data import HFDatasetDataModule
    from ftlab.data.images import TensorImageDataset
    from ftlab.specs import ImageSpec

    spec = ImageSpec(size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    data, pixels, labels = digit_rows(rows)
    folder = tmp / "digits_hf"
    data.save_to_disk(folder)
    common = {"val_fraction": 0.01, "test_fraction": 0.01, "batch_size": BATCH}

    images = torch.from_numpy(pixels[:, None])
    decoded = TensorImageDataset(images, torch.from_numpy(labels), 255.0, spec)
    tensors = torch.stack([decoded[i][0] for i in range(len(decoded))])
    plain = best(
        lambda: DataLoader(TensorDataset(tensors, torch.from_numpy(labels)), BATCH), repeats
    )
    sources = {
        "in_memory": lambda: DataLoader(decoded, BATCH, shuffle=True),
        "hf_dataset": lambda: HFDatasetDataModule(
            spec, path=str(folder), **common
        ).train_dataloader(),
        "streaming": lambda: HFDatasetDataModule(
            spec, path=str(folder), streaming=True, **common
        ).train_dataloader(),
    }
    shards = shard_loader(data, spec, tmp)
    if shards is not None:
        sources["shards"] = shards
    records = [report("data", "plain DataLoader (decoded tensors)", plain, "samples/s", "-", None)]
    for name, make in sources.items():
        value = best(make, repeats)
        records.append(
            report(
                "data",
                f"{name} samples/s",
                value,
                "samples/s",
                "report",
                None,
                plain=round(plain, 1),
                ratio=round(value / plain, 4),
                rows=rows,
            )
        )
    return records


def shard_loader(data, spec, tmp: Path):
    """litdata shards of the same rows (PNG bytes + label), or None without litdata."""
    try:
        import litdata  # noqa: F401
    except ImportError:
        return None
    from ftlab.data.shards import ShardDataset, write_shards

    out = tmp / "shards"
    write_shards(data, "image", "label", out)
    return lambda: torch.utils.data.DataLoader(ShardDataset(out, spec), BATCH)


def stream_peak(path: str) -> int:
    """Child: one streamed pass over ``path``; the process's peak RSS in bytes."""
    import datasets

    stream = datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)
    total = 0
    for row in stream:
        total += len(row["payload"])
    return peak_rss_bytes()


def rss(rows: int, tmp: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    peaks = {}
    for n in (rows, 10 * rows):
        path = tmp / f"rows{n}.parquet"
        rng = np.random.default_rng(0)
        writer = None
        for start in range(0, n, 1000):  # written in pieces: the writer's memory stays small
            k = min(1000, n - start)
            table = pa.table(
                {
                    "payload": [rng.bytes(1024) for _ in range(k)],
                    "label": (np.arange(start, start + k) % 10).tolist(),
                }
            )
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
        out = subprocess.run(
            [sys.executable, __file__, "peak", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        peaks[n] = json.loads(out.strip().splitlines()[-1])["peak"]
    small, large = peaks[rows], peaks[10 * rows]
    ratio = large / small
    return [
        report("data", f"stream peak RSS, {rows} rows", small / 2**20, "MiB", "-", None),
        report(
            "data",
            f"stream peak RSS, {10 * rows} rows",
            large / 2**20,
            "MiB",
            "<= 1.25x the small set's",
            ratio <= 1.25,
            ratio=round(ratio, 3),
        ),
    ]


def run(quick: bool = False) -> list[dict]:
    quiet()
    rows, repeats = (2000, 1) if quick else (20000, 3)
    with tempfile.TemporaryDirectory(prefix="ftlab-data-") as tmp:
        records = throughput(rows, repeats, Path(tmp))
        records += rss(rows, Path(tmp))
    return records


if __name__ == "__main__":
    if sys.argv[1:2] == ["peak"]:
        print(json.dumps({"peak": stream_peak(sys.argv[2])}))
    else:
        run(quick="--quick" in sys.argv)
