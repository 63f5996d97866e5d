"""ftlab.runinfo: the one reader of a run directory (exports, distillation, soups)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftlab.errors import FtlabError
from ftlab.runinfo import RunInfo, run_of

CONFIG = """\
seed: 3
paths:
  out: ${hydra:runtime.output_dir}
data:
  _target_: ftlab.data.DigitsDataModule
  image_size: 32
  seed: ${seed}
trainer:
  limit_val_batches: 2
"""


def _run(tmp_path: Path, config: str = CONFIG) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text(config)
    (run / ".hydra" / "overrides.yaml").write_text("- data=digits\n- seed=3\n")
    (run / "metrics.json").write_text(json.dumps({"val": {"acc": 0.9}}))
    return run


def test_a_checkpoint_names_its_run_and_the_run_what_it_holds(tmp_path):
    run = _run(tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert run_of(ckpt) == run.resolve() and run_of(run / "x.ckpt") == run.resolve()
    info = RunInfo.beside(ckpt)
    assert info.directory == run.resolve()
    assert info.overrides == ["data=digits", "seed=3"] and info.metrics["val"]["acc"] == 0.9
    assert info.data("image_size") == 32 and info.image_size() == (True, 32)
    assert info.export_dir("hf") == run.resolve() / "hf"
    assert info.adapter_dir == run.resolve() / "adapter"


def test_missing_or_unreadable_files_read_as_empty(tmp_path):
    info = RunInfo.beside(tmp_path / "lone.ckpt")
    assert (info.config, info.metrics, info.overrides) == ({}, {}, [])
    assert info.image_size() == (False, None)
    run = _run(tmp_path, "data: {image_size: ${model.size}}\n")
    (run / "metrics.json").write_text("{torn")
    info = RunInfo.of(run)
    assert info.metrics == {} and info.image_size() == (False, None)  # unresolved: not a size


def test_soups_resolve_only_the_keys_they_read(tmp_path):
    info = RunInfo.of(_run(tmp_path))
    keys = {"data": None, "trainer.limit_val_batches": None, "trainer.limit_test_batches": 1.0}
    assert info.resolved("0", {**keys, "seed": 0}) == {
        "data": {"_target_": "ftlab.data.DigitsDataModule", "image_size": 32, "seed": 3},
        "trainer.limit_val_batches": 2,
        "trainer.limit_test_batches": 1.0,
        "seed": 3,
    }  # paths.out names Hydra's runtime, which a finished run no longer has: never resolved
    with pytest.raises(FtlabError, match=r"^job 7: no .*config\.yaml: soups read the data"):
        RunInfo.of(tmp_path / "nothing").resolved("7", keys)
