"""Cached features for head-only epochs: the same head as on the fly, invalidation by weights,
data and transform, the switch to images at the phase boundary (after a resume too), L-BFGS,
files verified on load (a bad one is recomputed), concurrent jobs, progress."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
from conftest import FAST, ROOT
from safetensors.torch import save_file
from torch import nn

from ftlab.backbones import build_backbone
from ftlab.compose import model_and_data as build_model
from ftlab.data import build_data
from ftlab.errors import FtlabError
from ftlab.finetuning import build_plan
from ftlab.finetuning.features import (
    FEATURES,
    cache_key,
    content_hash,
    fit_head_lbfgs,
    plan_cache,
    read_features,
    solver_name,
    write_features,
)
from ftlab.finetuning.freezing import apply_trainable
from ftlab.train import train

# Whole splits (a cache is only used when every batch is visited), kept small.
WHOLE = [
    *FAST,
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "data.max_train_samples=64",
    "deterministic=true",
    "test=false",
]


class Inputs(L.Callback):
    """Per epoch: whether batches were cached features, and the backbone's mode and grads."""

    runs: ClassVar[list[Inputs]] = []

    def __init__(self) -> None:
        self.epochs: dict[int, tuple[bool, bool, bool]] = {}
        Inputs.runs.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        inputs = batch[0]
        self.epochs[trainer.current_epoch] = (
            isinstance(inputs, dict) and FEATURES in inputs,
            pl_module.backbone.training,
            pl_module.backbone_trains(),
        )


PROBE = "linear_probe"  # a freeze spec with the defaults: cache on, head_solver auto
INPUTS = ["+callbacks.inputs._target_=test_feature_cache.Inputs"]


@pytest.fixture(autouse=True)
def _clear():
    Inputs.runs.clear()


def _run(make_cfg, tmp_path, *overrides: str) -> tuple[dict, dict]:
    """Train; return metrics.json and the last checkpoint's state dict."""
    train(make_cfg(*WHOLE, f"paths.cache_dir={tmp_path / 'cache'}", *overrides))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    return metrics, state


@pytest.mark.slow  # several runs, with and without the cache
def test_linear_probe_on_cached_features_learns_the_same_head(make_cfg, tmp_path):
    # dropout: the same masks too; no L-BFGS, which only runs on cached features
    common = ["freeze=linear_probe", "module.head.dropout=0.3", "freeze.head_solver=none", *INPUTS]
    off, off_state = _run(make_cfg, tmp_path, *common, "freeze.cache_features=false")
    computed, computed_state = _run(make_cfg, tmp_path, *common)
    disk, disk_state = _run(make_cfg, tmp_path, *common)

    assert off["feature_cache"]["used"] is False
    assert computed["feature_cache"]["sources"] == {"train": "computed", "val": "computed"}
    assert disk["feature_cache"]["sources"] == {"train": "disk", "val": "disk"}
    # On the fly and cached: a frozen backbone in eval mode, images vs features.
    assert [run.epochs for run in Inputs.runs] == [
        {0: (False, False, False), 1: (False, False, False)},
        {0: (True, False, False), 1: (True, False, False)},
        {0: (True, False, False), 1: (True, False, False)},
    ]
    heads = [k for k in off_state["state_dict"] if k.startswith("head.")]
    assert len(heads) == 2
    for state in (computed_state, disk_state):
        for key in heads:
            torch.testing.assert_close(
                state["state_dict"][key], off_state["state_dict"][key], rtol=1e-4, atol=1e-6
            )
    assert computed["val"]["acc"] == pytest.approx(off["val"]["acc"])


@pytest.mark.slow  # a run, then a stopped and a resumed one
def test_lp_ft_switches_to_images_at_the_boundary_and_resumes_exactly(make_cfg, tmp_path):
    common = ["freeze=lp_ft", "freeze.lp_epochs=2", "freeze.head_solver=lbfgs"]
    common += ["trainer.max_epochs=3", *INPUTS]
    full, reference = _run(make_cfg, tmp_path, *common)
    assert Inputs.runs[0].epochs == {
        0: (True, False, False),
        1: (True, False, False),
        2: (False, True, True),  # fine-tuning: images through a training backbone
    }
    solver = full["feature_cache"]["head_solver"]
    assert solver["loss_after"] < solver["loss_before"]

    stop = ["+callbacks.stop._target_=test_finetuning.StopAfter", "+callbacks.stop.epoch=0"]
    _run(make_cfg, tmp_path, *common, *stop)
    resumed, final = _run(
        make_cfg, tmp_path, *common, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"
    )
    # Lightning counts from the resumed epoch; the switch still happens at epoch 2.
    assert Inputs.runs[-1].epochs == {1: (True, False, False), 2: (False, True, True)}
    assert resumed["feature_cache"]["head_solver"] == {}  # the fitted head came from the ckpt
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


def _digits(image_size: int = 32, **keys) -> object:
    backbone_spec = build_backbone("test_resnet", source="timm", pretrained=False).input_spec
    config = {"_target_": "ftlab.data.DigitsDataModule", "image_size": image_size, **keys}
    return build_data(config, backbone_spec)


def test_cache_key_changes_with_weights_data_transform_and_split():
    torch.manual_seed(0)
    backbone = build_backbone("test_resnet", source="timm", pretrained=False)
    data = _digits()
    key = cache_key(backbone, data, "train", "32-true")
    torch.manual_seed(0)
    same = build_backbone("test_resnet", source="timm", pretrained=False)
    assert cache_key(same, _digits(), "train", "32-true") == key
    changed = {
        "weights": cache_key(
            build_backbone("test_resnet", source="timm", pretrained=False), data, "train", "32-true"
        ),
        "data": cache_key(backbone, _digits(max_train_samples=10), "train", "32-true"),
        "transform": cache_key(backbone, _digits(image_size=40), "train", "32-true"),
        "split": cache_key(backbone, data, "val", "32-true"),
        "precision": cache_key(backbone, data, "train", "bf16-mixed"),
    }
    with torch.no_grad():  # same weights_id, other weights: the state checksum sees it
        next(same.parameters()).add_(1.0)
    changed["state"] = cache_key(same, data, "train", "32-true")
    assert key not in changed.values() and len(set(changed.values())) == len(changed)


@pytest.fixture
def toy_plan():
    module = nn.ModuleDict(
        {"backbone": nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), "head": nn.Linear(4, 2)}
    )
    groups = [
        ("block", ("backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias")),
        ("head", ("head.weight", "head.bias")),
    ]
    named = dict(module.named_parameters())

    def make(**freeze):
        bn = {"backbone.1.weight", "backbone.1.bias"}
        return build_plan(freeze, groups, named, {"lr": 0.1}, (), bn)

    return make


class _Data:
    augment = False


def test_cache_is_used_only_where_valid_and_says_why(toy_plan):
    trainer = {"limit_train_batches": 1.0, "limit_val_batches": 1.0}
    probe, data = toy_plan(name="linear_probe"), _Data()
    assert plan_cache(probe, PROBE, data, trainer).until_epoch is None
    lp_ft = plan_cache(toy_plan(name="lp_ft", lp_epochs=3), PROBE, data, trainer)
    assert (lp_ft.until_epoch, lp_ft.splits, lp_ft.cached(2), lp_ft.cached(3)) == (
        3,
        ("train", "val"),
        True,
        False,
    )
    val_limited = {"limit_train_batches": None, "limit_val_batches": 5}
    assert plan_cache(probe, PROBE, data, val_limited).splits == ("train",)

    augmenting = _Data()
    augmenting.augment = True
    reasons = {
        "off": plan_cache(probe, {"name": "linear_probe", "cache_features": False}, data, trainer),
        "full": plan_cache(toy_plan(name="none"), PROBE, data, trainer),
        "bn": plan_cache(toy_plan(name="linear_probe", bn="train"), PROBE, data, trainer),
        "augment": plan_cache(probe, PROBE, augmenting, trainer),
        "limit": plan_cache(probe, PROBE, data, {"limit_train_batches": 3}),
    }
    assert not any(r.used for r in reasons.values())
    assert reasons["off"].reason == "freeze.cache_features=false"
    assert (
        reasons["full"].reason
        == reasons["bn"].reason
        == "phase 0 trains more than the head (block)"
    )
    assert "data.augment=true" in reasons["augment"].reason
    assert "trainer.limit_train_batches=3" in reasons["limit"].reason

    with pytest.raises(FtlabError, match=r"freeze\.cache_features=yes must be true or false"):
        plan_cache(probe, {"name": "linear_probe", "cache_features": "yes"}, data, trainer)
    with pytest.raises(FtlabError, match="head_solver=lbfgs fits the head on cached features"):
        solver_name({"name": "linear_probe", "head_solver": "lbfgs"}, reasons["augment"])
    with pytest.raises(FtlabError, match="head_solver='adam' is unknown: use auto, lbfgs or none"):
        solver_name(
            {"name": "linear_probe", "head_solver": "adam"}, plan_cache(probe, PROBE, data, trainer)
        )


def test_head_solver_auto_fits_every_cached_probe_and_says_when_it_cannot(toy_plan, caplog):
    trainer = {"limit_train_batches": None, "limit_val_batches": None}
    cached = plan_cache(toy_plan(name="linear_probe"), PROBE, _Data(), trainer)
    uncached = plan_cache(toy_plan(name="linear_probe"), PROBE, _Data(), {"limit_train_batches": 3})
    full = plan_cache(toy_plan(name="none"), PROBE, _Data(), trainer)
    assert (cached.head_only, uncached.head_only, full.head_only) == (True, True, False)
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        resolved = {
            "default": solver_name(PROBE, cached),
            "auto": solver_name({"name": "linear_probe", "head_solver": "auto"}, cached),
            "lbfgs": solver_name({"name": "linear_probe", "head_solver": "lbfgs"}, cached),
            "none": solver_name({"name": "linear_probe", "head_solver": "none"}, cached),
            "null": solver_name({"name": "linear_probe", "head_solver": None}, cached),
            "auto, full fine-tuning": solver_name(PROBE, full),
        }
        assert not caplog.records  # nothing to say: either fitted, or no probe to fit
        resolved["auto, uncached probe"] = solver_name(PROBE, uncached)
    assert resolved == {
        "default": "lbfgs",
        "auto": "lbfgs",
        "lbfgs": "lbfgs",
        "none": None,
        "null": None,
        "auto, full fine-tuning": None,
        "auto, uncached probe": None,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "freeze.head_solver=auto: phase 0 trains the head with the optimizer alone, without "
        "L-BFGS, because the feature cache is off (trainer.limit_train_batches=3 visits part of "
        "the train split); a probe then needs enough epochs and lr to converge"
    ]


def test_lbfgs_fits_a_probe_far_better_than_an_untrained_head():
    torch.manual_seed(0)
    centers = torch.randn(5, 32) * 2
    labels = torch.arange(500) % 5
    features = centers[labels] + torch.randn(500, 32)
    head = nn.Linear(32, 5)
    result = fit_head_lbfgs(head, features, labels, l2=1e-3)
    assert result["loss_after"] < 0.3 * result["loss_before"]
    assert (head(features).argmax(1) == labels).float().mean() > 0.95


@pytest.mark.slow  # MiniLM on BBC News
def test_frozen_backbone_runs_in_eval_mode_so_its_outputs_are_fixed(make_cfg):
    cfg = make_cfg("model=minilm", "data=bbc_news", "data.max_length=32", "freeze=linear_probe")
    module, data = build_model(cfg)
    inputs, _ = next(iter(data.train_dataloader()))
    apply_trainable(module, module.plan.trainable(0))
    module.train()
    assert not module.backbone.training and module.head.training
    torch.testing.assert_close(module.backbone(inputs), module.backbone(inputs), rtol=0, atol=0)
    apply_trainable(module, set(dict(module.named_parameters())))
    module.train()
    assert module.backbone.training  # a training backbone keeps its dropout


# --- files on disk: verified on load, healed, written whole --------------------------------------


def _cache_files(cache: Path) -> dict[str, Path]:
    return {f.name.split("-")[0]: f for f in (cache / "features").glob("*.safetensors")}


def _data_start(blob: bytes) -> int:
    """Where a safetensors file's tensor bytes begin: after its 8-byte length and its header."""
    return 8 + int.from_bytes(blob[:8], "little")


def _truncate(path: Path) -> None:
    """Keep the header and the first half of the tensor bytes, as a killed copy would."""
    blob = path.read_bytes()
    start = _data_start(blob)
    path.write_bytes(blob[: start + (len(blob) - start) // 2])


def _flip(path: Path) -> None:
    """Invert one byte in the middle of the tensor bytes, as a bad disk would."""
    blob = bytearray(path.read_bytes())
    start = _data_start(blob)
    blob[start + (len(blob) - start) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


DAMAGE = {
    "truncated": (_truncate, r"truncated or padded: \d+ bytes, its header says \d+"),
    "flipped": (_flip, "its tensors do not match the content hash in its metadata"),
}


@pytest.mark.slow  # two runs per damage
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_file_is_logged_deleted_and_recomputed(make_cfg, tmp_path, caplog, damage):
    first, first_state = _run(make_cfg, tmp_path, "freeze=linear_probe")
    train_file = _cache_files(tmp_path / "cache")["train"]
    key = train_file.name.removesuffix(".safetensors")
    good = read_features(train_file, key)
    corrupt, reason = DAMAGE[damage]
    corrupt(train_file)

    with caplog.at_level(logging.WARNING, logger="ftlab"):
        healed, healed_state = _run(make_cfg, tmp_path, "freeze=linear_probe")
    assert first["feature_cache"]["sources"] == {"train": "computed", "val": "computed"}
    assert healed["feature_cache"]["sources"] == {"train": "computed", "val": "disk"}
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "ftlab"]
    assert re.fullmatch(
        rf"cached features {re.escape(str(train_file))} are unusable \({reason}\): "
        "deleted, computed again",
        warning,
    )
    rewritten = read_features(train_file, key)  # whole again, with the same features
    assert rewritten is not None and all(map(torch.equal, rewritten, good))
    for name, value in first_state["state_dict"].items():
        assert torch.equal(healed_state["state_dict"][name], value), name


def _good(path: Path, key: str = "train-k") -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = torch.randn(6, 4), torch.arange(6) % 3
    write_features(path, key, features, labels)
    return features, labels


def _rewrite(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None):
    def write(path: Path) -> None:
        save_file(tensors, path, metadata)

    return write


def _extra_tensor(path: Path) -> None:
    tensors = {"features": torch.randn(6, 4), "labels": torch.arange(6), "extra": torch.ones(1)}
    meta = {"format": "ftlab-features", "key": "train-k", "sha256": content_hash(tensors)}
    save_file(tensors, path, meta)


# damage -> what the log line says; each file must be refused and deleted.
BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), 6, "truncated: 0 bytes, in its header"),
    "cut in its header": (
        lambda p: p.write_bytes(p.read_bytes()[:40]),
        6,
        "truncated: 40 bytes, in its header",
    ),
    "cut in its tensors": (_truncate, 6, "truncated or padded"),
    "grown": (lambda p: p.write_bytes(p.read_bytes() + b"\0"), 6, "truncated or padded"),
    "a flipped tensor byte": (_flip, 6, "its tensors do not match the content hash"),
    "header not JSON": (
        lambda p: p.write_bytes((4).to_bytes(8, "little") + b"{{{{" + b"\0" * 8),
        6,
        "Expecting property name",
    ),
    "no metadata (an older ftlab)": (
        _rewrite({"features": torch.randn(6, 4), "labels": torch.arange(6)}, None),
        6,
        "no content hash in its metadata",
    ),
    "another key's file": (
        lambda p: _good(p, key="train-other"),
        6,
        "written for 'train-other', not for its name 'train-k'",
    ),
    "another split's size": (_good, 7, "6 rows where the split has 7 samples"),
    "other tensors": (_extra_tensor, 6, "holds ['extra', 'features', 'labels']"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_cache_file_is_trusted_only_once_verified(tmp_path, caplog, case):
    path = tmp_path / "train-k.safetensors"
    features, labels = _good(path)
    assert all(map(torch.equal, read_features(path, "train-k", 6), (features, labels)))
    damage, samples, reason = BAD_FILES[case]
    damage(path)
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        assert read_features(path, "train-k", samples) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "ftlab"]
    assert f"are unusable ({reason}" in warning
    assert not path.exists()


WRITER = """
import sys, torch
from pathlib import Path
from ftlab.finetuning.features import write_features
path, rounds = Path(sys.argv[1]), int(sys.argv[2])
print("writing", flush=True)
for i in range(rounds):
    write_features(path, "train-k", torch.full((4000, 128), float(i)), torch.full((4000,), i))
"""


@pytest.mark.slow  # mostly the writer's start-up: it imports torch and lightning
def test_a_reader_never_sees_half_a_file_while_another_process_writes_it(tmp_path, caplog):
    path = tmp_path / "features" / "train-k.safetensors"
    write_features(path, "train-k", torch.zeros(4000, 128), torch.zeros(4000, dtype=torch.long))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "150"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline() == "writing\n"
    versions = []
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        while writer.poll() is None:
            stored = read_features(path, "train-k", 4000)
            assert stored is not None, caplog.records[-1].getMessage()
            features, labels = stored
            assert features.min() == features.max() == labels[0] == labels[-1]  # one version
            versions.append(int(labels[0]))
    assert writer.returncode == 0
    assert len(set(versions)) >= 10  # the reads really interleaved with the writes
    assert not caplog.records
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no partial files


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    path = tmp_path / "train-k.safetensors"
    with pytest.raises(OSError, match="No space left"):
        write_features(path, "train-k", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert list(tmp_path.iterdir()) == []


class Barrier(L.Callback):
    """Holds each process in ``setup`` until ``parties`` processes have reached it, so that they
    go on to compute the same features at the same moment; then slows every backbone forward by
    ``slow`` seconds, so that the computing job still holds the lock when the other, however
    late a loaded machine makes it, asks for it."""

    def __init__(self, dir: str, parties: int = 2, slow: float = 0.3) -> None:
        self.dir, self.parties, self.slow = Path(dir), parties, slow

    def setup(self, trainer, pl_module, stage):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / str(os.getpid())).touch()
        deadline = time.monotonic() + 300
        while len(list(self.dir.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError("the other job never reached the barrier")
            time.sleep(0.02)
        pl_module.backbone.register_forward_pre_hook(lambda *_: time.sleep(self.slow))


@pytest.mark.slow
def test_two_jobs_computing_the_same_features_at_once_both_end_correct(tmp_path):
    cache = tmp_path / "cache"
    overrides = [
        "model=efficientnet_lite0",  # a backbone slow enough that the two jobs overlap
        "data=digits",
        "data.image_size=64",
        "freeze=linear_probe",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=4",  # val on images, so only train is cached: a shorter job
        "trainer.accelerator=cpu",
        "deterministic=true",
        "test=false",
        f"paths.cache_dir={cache}",
        "+callbacks.barrier._target_=test_feature_cache.Barrier",
        f"+callbacks.barrier.dir={tmp_path / 'barrier'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    jobs, logs = {}, {}
    for name in ("a", "b"):
        logs[name] = (tmp_path / f"{name}.log").open("w")
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            *overrides,
            f"hydra.run.dir={tmp_path / name}",
        ]
        jobs[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )
    for name, job in jobs.items():
        assert job.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        logs[name].close()
    text = {name: (tmp_path / f"{name}.log").read_text() for name in jobs}
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in jobs}
    sources = {name: m["feature_cache"]["sources"] for name, m in metrics.items()}

    # One job computed the features; the other waited for it, then read them whole.
    assert sorted(s["train"] for s in sources.values()) == ["computed", "disk"], sources
    reader = next(name for name in jobs if sources[name]["train"] == "disk")
    writer = "a" if reader == "b" else "b"
    assert f"waiting for pid {jobs[writer].pid} on " in text[reader]
    assert not any("unusable" in t for t in text.values())
    # Both ended with the same, correct result.
    assert metrics["a"]["val"] == metrics["b"]["val"]
    states = {
        n: torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True) for n in jobs
    }
    for key, value in states["a"]["state_dict"].items():
        assert torch.equal(states["b"]["state_dict"][key], value), key
    files = sorted(p.name for p in (cache / "features").iterdir())
    assert [f for f in files if not f.endswith((".safetensors", ".lock"))] == []  # no partial file
    for split, path in _cache_files(cache).items():
        assert read_features(path, path.name.removesuffix(".safetensors")) is not None, split


# --- progress while computing --------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_computing_features_logs_its_progress_off_a_terminal(
    make_cfg, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a pipe, a CI or SLURM log
    monkeypatch.setattr("ftlab.progress.LOG_EVERY_S", 0.0)  # a line per batch (30 s by default)
    with caplog.at_level(logging.INFO, logger="ftlab"):
        _run(make_cfg, tmp_path, "freeze=linear_probe", "data.batch_size=16")
    lines = [r.getMessage() for r in caplog.records]
    start = lines.index("computing train features: 64 samples in 4 batches")
    progress = lines[start + 1 : start + 5]
    for done, line in enumerate(progress[:3], start=1):
        assert re.fullmatch(
            rf"train features: {done}/4 batches \({25 * done}%\), \d+ s, ~\d+ s left", line
        ), line
    assert progress[3].startswith("train features computed: 64 x ")
    assert any(line.startswith("computing val features: ") for line in lines)


def test_computing_features_shows_a_bar_in_a_terminal(make_cfg, tmp_path, monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    _run(make_cfg, tmp_path, "freeze=linear_probe", "data.batch_size=16")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert re.search(r"train features\s+\S+\s+4/4", shown), shown[-2000:]
    assert re.search(r"val features\s+\S+\s+\d+/\d+", shown), shown[-2000:]
