"""data.streaming=true: a datasets IterableDataset shuffled from the seed, resumed to the exact
sample (in-process and after a SIGKILL), and dealt evenly to 2 gloo DDP ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import FAST, read_metrics, run_cli
from test_faults import ENV, assert_same_run, pause, wait_for
from test_hf_dataset import digits

from ftlab.data import HFDatasetDataModule
from ftlab.data.streaming import StreamSplit
from ftlab.specs import ImageSpec

ROOT = Path(__file__).resolve().parents[1]
# test_faults.ENV sets PYTHONPATH to the tests alone; keep this checkout's sources first too.
PATHS = {"PYTHONPATH": os.pathsep.join([ENV["PYTHONPATH"], str(ROOT / "src")])}


def start(*overrides: str, run_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | PATHS
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


SPEC = ImageSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def numbers(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"x": list(range(n)), "label": [i % 2 for i in range(n)]})


def split(data: datasets.Dataset, seed: int | None, **kw) -> StreamSplit:
    kw.setdefault("block", 16)
    return StreamSplit(
        lambda: data.to_iterable_dataset(3), len(data), 4, lambda r: r["x"], seed=seed, **kw
    )


def test_shuffle_follows_the_seed_and_epoch_and_covers_each_row_once():
    data = numbers(40)
    first, again, other = (list(split(data, s)) for s in (1, 1, 2))
    assert first == again and first != other  # reproducible from the seed
    assert sorted(first) == list(range(40)) and first != list(range(40))
    later = split(data, 1)
    later.epoch = 1
    assert list(later) != first  # another order each epoch
    assert list(split(data, None)) == list(range(40))  # val/test: the stream's order


@pytest.mark.parametrize("taken", [0, 5, 16, 23, 39])
def test_resume_from_the_datasets_state_continues_at_the_exact_sample(taken):
    data = numbers(40)
    whole = list(split(data, 7))
    reader = split(data, 7)
    stream = iter(reader)
    seen = [next(stream) for _ in range(taken)]
    state = reader.checkpoint(taken)
    if taken >= 16:  # past the first block: the dataset's own state_dict, not a replay
        assert state["dataset"]["examples_iterable"]["examples_iterable"]["shard_example_idx"] > 0
    resumed = split(data, 7)
    resumed.resume = state
    assert seen + list(resumed) == whole


def test_a_rank_whose_part_runs_out_starts_it_again():
    data = numbers(10)
    reader = StreamSplit(lambda: data.to_iterable_dataset(1).take(7), 10, 4, lambda r: r["x"])
    assert len(reader) == 8 and len(list(reader)) == 8  # two whole batches, never fewer


def test_streamed_parquet_trains_through_the_data_module(tmp_path):
    digits(60).to_parquet(tmp_path / "d.parquet")
    dm = HFDatasetDataModule(SPEC, path=str(tmp_path / "d.parquet"), streaming=True, batch_size=8)
    dm.setup("fit")
    assert dm.classes == [str(d) for d in range(10)]  # one pass over the label column
    assert len(dm.train_dataloader()) == (60 - 9 - 9) // 8  # val/test: the first 9 + 9 rows
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 8, 8) and labels.dtype == torch.int64
    val = [int(y) for _, ys in dm.val_dataloader() for y in ys]
    assert (
        val
        == datasets.load_dataset(
            "parquet", data_files=str(tmp_path / "d.parquet"), split="train[:9]"
        )["label"][: len(val)]
    )


# -- real runs: SIGKILL mid-epoch, and 2 DDP ranks ---------------------------------------------


def stream_run(folder: Path) -> list[str]:
    return [
        *[o for o in FAST if not o.startswith("data")],
        "data=hf_dataset",
        f"data.path={folder}",
        "data.streaming=true",
        "data.shuffle_block=20",
        "data.image_size=32",
        "data.batch_size=8",
        "trainer.limit_train_batches=1.0",
        "trainer.max_epochs=2",
        "deterministic=true",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    folder = tmp_path / "digits_hf"
    datasets.DatasetDict(train=digits(80), validation=digits(16), test=digits(16)).save_to_disk(
        folder
    )
    run = stream_run(folder)
    reference = tmp_path / "reference"
    done = run_cli("train.py", *run, run_dir=reference)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    proc = start(*run, *pause(13, marker), run_dir=run_dir)  # epoch 1 (10 batches an epoch)
    wait_for(marker, proc)
    proc.kill()
    proc.communicate(timeout=60)
    resumed = run_cli("train.py", *run, "resume=true", run_dir=run_dir, env=PATHS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, reference)  # metrics, and the final weights bit for bit
    log = (run_dir / "train.log").read_text()
    # Killed before step 13's save: step 12's checkpoint, 2 batches into epoch 1.
    assert "resumed mid-epoch: epoch 1 continues after its first 2 batches" in log


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_with_uneven_parts_take_the_same_steps(tmp_path):
    folder = tmp_path / "digits_hf"
    # 75 rows in 3 shards over 2 ranks: split_dataset_by_node gives 38 and 37 rows.
    datasets.DatasetDict(train=digits(75), test=digits(16)).save_to_disk(folder)
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py",
        *stream_run(folder),
        "data.num_shards=3",
        "data.val_fraction=0.2",
        "trainer=ddp_cpu",
        run_dir=run_dir,
        timeout=300,  # a rank left waiting at a collective would hang here
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert len(metrics["rank_checksums"]) == 2 and len(set(metrics["rank_checksums"])) == 1
    # 60 train rows (15 are val): 30 a rank, 3 batches of 8 on each, for 2 epochs.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3
    assert np.isfinite(metrics["test"]["loss"])
