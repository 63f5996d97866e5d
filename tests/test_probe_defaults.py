"""Head-only phases converge with their defaults: the probe of ``linear_probe``, of ``lp_ft`` and
phase 0 of ``gradual`` end within a point of scikit-learn's LogisticRegression fitted on the same
cached features, on an image task and a text task (real pretrained backbones, offline).

Each task shares one cache directory across its schedules, so its features are computed once.
A schedule with more phases is stopped after epoch 0 (its probe), with the lr schedule of the
whole run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ftlab.finetuning.features import read_features
from ftlab.train import train

TASKS = {
    "image": [
        "model=efficientnet_lite0",  # packaged ImageNet weights
        "data=digits",
        "data.image_size=64",
    ],
    "text": [
        "model=minilm",  # packaged all-MiniLM-L6-v2
        "data=bbc_news",
        "data.max_length=32",
        "data.max_train_samples=400",
    ],
}
STOP_AFTER_PROBE = ["+callbacks.stop._target_=test_finetuning.StopAfter", "+callbacks.stop.epoch=0"]
SCHEDULES = {
    "linear_probe": ["freeze=linear_probe"],
    "lp_ft": ["freeze=lp_ft", *STOP_AFTER_PROBE],
    "gradual": ["freeze=gradual", *STOP_AFTER_PROBE],
}
CASES = [
    ("image", "linear_probe"),
    ("image", "lp_ft"),
    ("image", "gradual"),
    ("text", "linear_probe"),
    ("text", "lp_ft"),
]
TOLERANCE = 0.01  # one point of val accuracy


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    return {task: tmp_path_factory.mktemp(f"cache-{task}") for task in TASKS}


def _cached(cache: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    (path,) = (cache / "features").glob(f"{split}-*.safetensors")
    stored = read_features(path, path.name.removesuffix(".safetensors"))
    assert stored is not None, path
    return stored


def sklearn_val_acc(cache: Path) -> float:
    """LogisticRegression (its defaults: L2, C=1) on the run's cached train features."""
    (x_train, y_train), (x_val, y_val) = _cached(cache, "train"), _cached(cache, "val")
    model = LogisticRegression(max_iter=5000).fit(x_train.double().numpy(), y_train.numpy())
    return float(model.score(x_val.double().numpy(), y_val.numpy()))


@pytest.mark.slow
@pytest.mark.parametrize(("task", "schedule"), CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_head_only_phase_converges_with_defaults(make_cfg, tmp_path, caches, task, schedule):
    overrides = [*TASKS[task], *SCHEDULES[schedule], "trainer.accelerator=cpu", "test=false"]
    train(make_cfg(*overrides, f"paths.cache_dir={caches[task]}"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["feature_cache"]["used"], metrics["feature_cache"]["reason"]
    if schedule != "linear_probe":
        assert [p["phase"] for p in metrics["phases"]] == [0]  # stopped after its probe

    reference = sklearn_val_acc(caches[task])
    assert reference > 0.9  # the features separate the classes: a meaningful bar
    assert metrics["val"]["acc"] == pytest.approx(reference, abs=TOLERANCE), (
        f"{task} {schedule}: val acc {metrics['val']['acc']:.4f}, sklearn {reference:.4f}"
    )
