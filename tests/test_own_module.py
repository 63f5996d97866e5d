"""A LightningModule written outside ftlab, in a package made in a temporary directory, run
through the CLI with ``module=custom module._target_=...``: the protocol of ftlab.module.

The package's module regresses the digit's value (a 1-wide head, MSE, mean absolute error)
instead of classifying it. Everything else must come with ftlab's base: the freezing schedule
and its discriminative lrs, the feature cache with the L-BFGS head fit on the module's own loss,
the DDP rank checksums, resume, and metrics.json.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_cli

PACKAGE = '''
"""A researcher's own module: the digit's value by regression."""

import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError

from ftlab.module import FinetuneModule


class DigitValue(FinetuneModule):
    def __init__(self, *args, loss_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_scale = loss_scale

    def make_head(self, num_features, num_classes):
        return nn.Sequential(nn.Linear(num_features, 1), nn.Flatten(0))

    def loss(self, outputs, targets):
        return self.loss_scale * F.mse_loss(outputs, targets.float())

    def metrics(self):
        return {"mae": MeanAbsoluteError()}
'''

RUN = [
    "module=custom",
    "module._target_=valuepkg.DigitValue",
    "+module.loss_scale=0.5",
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=32",
    "freeze=gradual",
    "freeze.until=1",
    "optimizer.lr=3e-3",
    "optimized_metric=val/mae",
    "optimized_mode=min",
    "trainer=ddp_cpu",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=1.0",
    "trainer.limit_test_batches=2",
    "logger=csv",
]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("elsewhere")
    (root / "valuepkg").mkdir()
    (root / "valuepkg" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    return {"PYTHONPATH": str(root)}


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(900)
def test_a_module_of_ones_own_trains_under_ftlabs_schedule_cache_ddp_and_resume(
    package: dict[str, str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    done = run_cli("train.py", *RUN, run_dir=run_dir, env=package)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)

    # Its own metric, named by its own key, is what the run optimized and reported.
    assert set(metrics["val"]) == {"mae", "loss"} and set(metrics["test"]) == {"mae", "loss"}
    assert metrics["optimized_metric"] == {"name": "val/mae", "value": metrics["val"]["mae"]}
    assert metrics["module"] == {"target": "valuepkg.DigitValue"}
    # The schedule: the head alone, then the top group; both ranks held the same weights.
    assert [p["unfrozen"] for p in metrics["phases"]] == [["head"], ["layer4.0"]]
    assert metrics["world_size"] == 2 and len(set(metrics["rank_checksums"])) == 1
    # Phase 0 ran on cached features, its head fitted by L-BFGS on the module's own MSE loss:
    # a ridge regression of the value, far below the loss of a constant guess (var ≈ 8.25).
    cache = metrics["feature_cache"]
    assert cache["used"] and cache["until_epoch"] == 1, cache["reason"]
    solver = cache["head_solver"]
    assert solver["loss_after"] < 0.5 * solver["loss_before"], solver
    # On a random-init backbone's features: better than a constant guess of 4.5 (off by 2.5).
    assert metrics["val"]["mae"] < 2.5

    # The checkpoint records a custom module: eval.py does not rebuild it from the file.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["ftlab"]["module"] == "custom" and ckpt["state_dict"]["head.0.weight"].shape[0] == 1
    refused = run_cli(
        "eval.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt", "data=digits",
        run_dir=tmp_path / "eval", env=package,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "holds a custom module, which eval.py does not rebuild" in refused.stderr

    # Lightning's loading works for it: the caller names the class and its own arguments.
    sys.path.insert(0, package["PYTHONPATH"])
    try:
        from valuepkg import DigitValue

        loaded = DigitValue.load_from_checkpoint(
            run_dir / "checkpoints" / "last.ckpt", loss_scale=0.5
        )
    finally:
        sys.path.remove(package["PYTHONPATH"])
    assert type(loaded) is DigitValue and loaded.loss_scale == 0.5
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded(torch.randn(3, 3, 32, 32)).shape == (3,)

    # Resume: one more epoch from last.ckpt continues at epoch 2 in phase 1 (no new phase).
    longer = [o for o in RUN if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=3"]
    more = run_cli("train.py", *longer, "resume=true", run_dir=run_dir, env=package)
    assert more.returncode == 0, more.stderr[-3000:]
    resumed = read_metrics(run_dir)
    assert [p["start_epoch"] for p in resumed["phases"]] == [0, 1]
    assert len(set(resumed["rank_checksums"])) == 1
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2


@pytest.mark.slow  # a fresh train.py process per case
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["module._target_=valuepkg.DigitValue"],
            r"^error: module \(valuepkg\.DigitValue\): \w+ got an unexpected keyword "
            r"argument '\w+'; for your own module start from module=custom",
        ),
        (
            ["module=custom", "module._target_=torch.nn.Linear"],
            r"^error: module\._target_=torch\.nn\.Linear is not a LightningModule class ftlab can "
            r"train: subclass ftlab\.module\.FinetuneModule",
        ),
        (
            ["module=custom", "module._target_=valuepkg.Missing"],
            r"^error: module\._target_=valuepkg\.Missing is not a LightningModule class",
        ),
    ],
    ids=["classifier keys", "not a FinetuneModule", "no such class"],
)
def test_a_module_that_cannot_be_built_is_one_line(
    package: dict[str, str], tmp_path: Path, overrides: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py", *overrides, "model=test_cnn", "data=digits", run_dir=run_dir, env=package
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(message, done.stderr.strip()), done.stderr
    assert not (run_dir / "metrics.json").exists()
