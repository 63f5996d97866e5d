"""litdata shards (ftlab.data.shards): written by optimize into a local folder standing in for
object storage, read back decoded, an exact resume from the loader's state, and 2 ranks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("litdata")

from litdata import StreamingDataLoader
from test_hf_dataset import digits

from ftlab.data.shards import ShardDataset, write_shards
from ftlab.specs import ImageSpec

SPEC = ImageSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "bucket"
    write_shards(digits(50), "image", "label", out, chunk_bytes="4KB")
    return out


def labels_of(batches) -> list[int]:
    return [int(y) for _, ys in batches for y in ys]


def test_shards_read_back_the_rows_decoded(shards):
    data = ShardDataset(shards, SPEC)
    assert len(data) == 50 and len(list(shards.glob("*.bin"))) > 1  # several chunks
    image, label = data[3]
    assert image.shape == (3, 8, 8) and label == digits(50)["label"][3]


def test_shuffle_follows_the_seed_and_resume_continues_exactly(shards):
    def loader(seed):
        return StreamingDataLoader(
            ShardDataset(shards, SPEC, shuffle=True, seed=seed), batch_size=5
        )

    whole = labels_of(loader(1))
    assert whole == labels_of(loader(1)) and sorted(whole) == sorted(digits(50)["label"])
    first = loader(1)
    it = iter(first)
    seen = labels_of([next(it) for _ in range(4)])
    state = first.state_dict()
    resumed = loader(1)
    resumed.load_state_dict(state)
    assert seen + labels_of(resumed) == whole


def _rank(rank: int, shards, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    data = ShardDataset(shards, SPEC, shuffle=True, seed=0)
    n = len(list(StreamingDataLoader(data, batch_size=4)))
    counts = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(counts, torch.tensor([float(n)]))
    (out / f"rank{rank}").write_text(str([int(c) for c in counts]))
    dist.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_get_the_same_number_of_batches(shards, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(shards, tmp_path), nprocs=2, join=True)
    counts = [eval((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0
