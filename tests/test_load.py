"""Load: a 20-job multirun loses nothing; a 100,000-image folder trains without an upfront read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import FAST, read_metrics, run_cli
from PIL import Image

from ftlab.data.image_folder import ImageFolderDataModule
from ftlab.data.synthetic import write_image_tree
from ftlab.specs import ImageSpec

pytestmark = pytest.mark.slow

ONE_STEP = [
    *(o for o in FAST if not o.startswith(("trainer.max_epochs", "trainer.limit_"))),
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "test=false",
]


def test_twenty_job_multirun_writes_twenty_metrics(tmp_path):
    seeds = ",".join(map(str, range(20)))
    done = run_cli(
        "train.py",
        "-m",
        *ONE_STEP,
        f"seed={seeds}",
        f"hydra.sweep.dir={tmp_path}",
        run_dir=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(tmp_path.glob("*/metrics.json"), key=lambda p: int(p.parent.name))
    assert [int(p.parent.name) for p in jobs] == list(range(20))
    records = [json.loads(p.read_text()) for p in jobs]
    assert all(r["status"] == "completed" for r in records)
    assert sorted(r["seed"] for r in records) == list(range(20))
    # Each job kept its own checkpoint: no job wrote into another's directory.
    assert all((p.parent / "checkpoints" / "last.ckpt").is_file() for p in jobs)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("big") / "images", 100_000, size=8)


def test_indexing_100k_images_opens_none(big_tree, monkeypatch):
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp))
    spec = ImageSpec(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = ImageFolderDataModule(spec, root=str(big_tree), batch_size=32)
    data.setup("fit")
    summary = data.summary()
    assert summary["indexed_files"] == 100_000 and data.num_classes == 4
    assert opened == []  # the index lists directories; no image was read to build it
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and len(opened) == 32  # one batch: 32 reads
    print(f"indexed 100,000 images in {summary['index_time_s']:.2f} s")


def test_training_on_100k_images_starts_after_the_index(big_tree, tmp_path):
    overrides = [o for o in ONE_STEP if not o.startswith(("data=", "data.image_size"))]
    done = run_cli(
        "train.py",
        *overrides,
        "data=image_folder",
        f"data.root={big_tree}",
        "data.image_size=32",
        run_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "completed" and metrics["data"]["indexed_files"] == 100_000
    log = (tmp_path / "train.log").read_text()
    found = re.search(r"indexed 100000 images in 4 classes in ([\d.]+) s", log)
    assert found, log[-2000:]
    print(f"index: {found.group(1)} s; run wall time {metrics['wall_time_s']} s")
