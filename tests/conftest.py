"""Shared fixtures: compose the real config tree once per test, write into tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ftlab.cli import conf_dir

ROOT = Path(__file__).resolve().parents[1]

# A real but tiny run: random-init timm model, 8x8 digits upsampled to 32 px, a few batches.
FAST = [
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
]

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, config="train")``: the composed config, output_dir in tmp_path."""

    def _make(*overrides: str, config: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose(config_name=config, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def run_cli(script: str, *overrides: str, run_dir: Path, env: dict | None = None, timeout=600):
    """Run ``train.py``/``eval.py`` in a subprocess, the way a researcher does."""
    cmd = [sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={run_dir}"]
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
