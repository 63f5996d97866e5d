"""A file a user was sent never chooses what code runs.

Each row of ``HOSTILE`` is a checkpoint built by hand the way an attacker would: a genuine ftlab
checkpoint whose ``ftlab`` record names a callable (``builtins.open`` truncating the victim,
``torch.load(weights_only=False)`` running a pickle, ...), nests one, asks for ``_partial_``,
or hides an interpolation. ``eval.py``, ``eval.py export=merged`` and ``train.py ckpt_path=``
must each refuse it in one line, exit 2, call nothing (the pickle's marker file never appears)
and change no file outside the run directory.
"""

# ruff: noqa: E501

from __future__ import annotations

import builtins
import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST
from test_errors import EVAL_CLI, snapshot
from warm_cli import run_cli_warm

from ftlab.record import LEGACY_TARGET, parse_record

pytestmark = pytest.mark.slow  # every test reads a run trained by train.py in a forked process

FAST_CLI = [*FAST, "trainer.max_epochs=1", "test=false"]


class Evil:
    """Unpickling it calls ``open(marker, "w")``: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A genuine checkpoint of a tiny run, a victim file, and a pickle that would run code."""
    root = tmp_path_factory.mktemp("trust")
    done = run_cli_warm(
        "train.py", *FAST_CLI, "trainer.limit_train_batches=1", run_dir=root / "genuine"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    victim = root / "precious.txt"
    victim.write_text("a researcher's notes")
    torch.save(Evil(root / "PWNED"), root / "evil.pkl")
    return {
        "root": root,
        "ckpt": torch.load(root / "genuine/checkpoints/last.ckpt", weights_only=True),
        "victim": str(victim),
        "evil": str(root / "evil.pkl"),
        "marker": root / "PWNED",
    }


def legacy(record: dict[str, Any], **model: Any) -> dict[str, Any]:
    """The record as checkpoints before ftlab.record wrote it: a Hydra model config."""
    backbone = record["backbone"]
    old = {
        "_target_": LEGACY_TARGET,
        "name": backbone["name"],
        "source": backbone["kind"],
        "pretrained": backbone["pretrained"],
        "weights": backbone["weights"],
    }
    return {
        "model": {**old, **model},
        "classes": record["classes"],
        "head_dropout": record["head"]["dropout"],
        "lora": record["lora"],
    }


def with_backbone(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**record, "backbone": {**record["backbone"], **changes}}


# Each row: (how to turn a genuine record into a hostile one, the regex the one line matches).
# The callables are all outside Hydra 1.3's instantiate blocklist (os.system, subprocess, ...).
HOSTILE: dict[str, tuple[Callable[[dict, dict], dict], str]] = {
    "builtins.open truncates a file (the old format's _target_)": (
        lambda r, w: {
            **legacy(r),
            "model": {"_target_": "builtins.open", "file": w["victim"], "mode": "w"},
        },
        r"ftlab\.model\._target_ would name code to run",
    ),
    "torch.load runs a pickle": (
        lambda r, w: {
            **legacy(r),
            "model": {"_target_": "torch.load", "f": w["evil"], "weights_only": False},
        },
        r"ftlab\.model\._target_ would name code",
    ),
    "shutil.rmtree": (
        lambda r, w: {**legacy(r), "model": {"_target_": "shutil.rmtree", "path": str(w["root"])}},
        r"_target_ would name code",
    ),
    "builtins.exec with _args_": (
        lambda r, w: {
            **legacy(r),
            "model": {"_target_": "builtins.exec", "_args_": [f"open({w['victim']!r}, 'w')"]},
        },
        r"_target_ would name code",
    ),
    "_partial_": (
        lambda r, w: {
            **legacy(r),
            "model": {
                "_target_": "builtins.open",
                "_partial_": True,
                "file": w["victim"],
                "mode": "w",
            },
        },
        r"_target_ would name code",
    ),
    "a _target_ at the top of the record": (
        lambda r, w: {**r, "_target_": "builtins.open", "file": w["victim"], "mode": "w"},
        r"ftlab\._target_ would name code",
    ),
    "a nested _target_ under the legacy builder": (
        lambda r, w: legacy(
            r, act_layer={"_target_": "builtins.open", "file": w["victim"], "mode": "w"}
        ),
        r"ftlab\.model\.act_layer\._target_ would name code",
    ),
    "a nested _target_ in backbone options": (
        lambda r, w: with_backbone(
            r,
            options={
                "drop_rate": {"_target_": "torch.load", "f": w["evil"], "weights_only": False}
            },
        ),
        r"ftlab\.backbone\.options\.drop_rate\._target_ would name code",
    ),
    "a _target_ inside the LoRA settings": (
        lambda r, w: {
            **r,
            "lora": {
                "r": 4,
                "alpha": 8.0,
                "dropout": 0.0,
                "target_modules": [{"_target_": "builtins.open", "file": w["victim"], "mode": "w"}],
            },
        },
        r"ftlab\.lora\.target_modules\[0\]\._target_ would name code",
    ),
    "_recursive_ and _convert_": (
        lambda r, w: with_backbone(r, options={"_recursive_": False, "_convert_": "all"}),
        r"options\._(recursive|convert)_ would name code",
    ),
    "an env interpolation": (
        lambda r, w: with_backbone(r, name="${oc.env:HOME}"),
        r"ftlab\.backbone\.name='\$\{oc\.env:HOME\}' holds an interpolation",
    ),
    "an interpolation that would build an object": (
        lambda r, w: with_backbone(r, weights="${oc.create:{_target_: builtins.open}}"),
        r"holds an interpolation",
    ),
    "a timm option that loads a checkpoint file": (
        lambda r, w: with_backbone(r, options={"checkpoint_path": w["evil"]}),
        r"options\.checkpoint_path=.* is not an architecture setting",
    ),
    "a Hugging Face option that trusts remote code": (
        lambda r, w: with_backbone(r, options={"trust_remote_code": True}),
        r"options\.trust_remote_code=True is not an architecture setting",
    ),
    "a config overlay naming a file": (
        lambda r, w: with_backbone(r, options={"pretrained_cfg_overlay": "file"}),
        r"options\.pretrained_cfg_overlay=.* is not an architecture setting",
    ),
    "a builder outside the table": (
        lambda r, w: with_backbone(r, kind="builtins.open"),
        r"ftlab\.backbone\.kind='builtins\.open' is not a backbone ftlab builds \(timm, hf\)",
    ),
    "a module named by the file": (
        lambda r, w: {**r, "module": "mypkg.module.Evil"},
        r"holds module 'mypkg\.module\.Evil', which ftlab does not restore by itself",
    ),
    "an unknown key": (
        lambda r, w: {**r, "hooks": ["builtins.open"]},
        r"ftlab has unknown keys \['hooks'\]",
    ),
    "an unknown format": (
        lambda r, w: {**r, "format": 99},
        r"record format 99; this ftlab reads format 1",
    ),
    "a non-text key": (lambda r, w: {**r, 7: "x"}, r"ftlab has a non-text key 7"),
}

# The CLI entry points that rebuild a model from a checkpoint: script and overrides.
READERS = {
    "eval": ("eval.py", EVAL_CLI),
    "export": ("eval.py", ["export=merged"]),
    "train ckpt_path": ("train.py", FAST_CLI),
}


def outside(root: Path, run_dir: Path) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snapshot(root).items() if not k.startswith(str(run_dir))}


def write_hostile(world: dict[str, Any], record: Any, path: Path) -> Path:
    ckpt = copy.copy(world["ckpt"])
    ckpt["ftlab"] = record
    torch.save(ckpt, path)
    return path


# Every case through eval.py; the other readers share its parser, so they get the two attacks
# measured in the wild and a nested one.
SHARED = [next(iter(HOSTILE)), "torch.load runs a pickle", "a nested _target_ in backbone options"]
PAIRS = [(c, "eval") for c in HOSTILE] + [(c, r) for r in READERS if r != "eval" for c in SHARED]


@pytest.mark.parametrize(("case", "reader"), PAIRS, ids=[f"{r}: {c}" for c, r in PAIRS])
def test_a_hostile_checkpoint_runs_nothing(tmp_path, world, case, reader):
    make, match = HOSTILE[case]
    genuine = copy.deepcopy(world["ckpt"]["ftlab"])
    path = write_hostile(world, make(genuine, world), world["root"] / f"hostile-{os.getpid()}.ckpt")
    script, overrides = READERS[reader]
    run_dir = tmp_path / "run"
    before = outside(world["root"], run_dir)
    done = run_cli_warm(script, *overrides, f"ckpt_path={path}", run_dir=run_dir)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: ckpt_path={path}"), lines
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not world["marker"].exists(), "the pickle ran"
    assert Path(world["victim"]).read_text() == "a researcher's notes"
    assert outside(world["root"], run_dir) == before
    assert not (run_dir / "metrics.json").exists()
    path.unlink()


def test_a_checkpoint_whose_pickle_needs_code_is_refused(tmp_path, world):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "ftlab": Evil(world["marker"])}, path)
    done = run_cli_warm("eval.py", *EVAL_CLI, f"ckpt_path={path}", run_dir=tmp_path / "run")
    assert done.returncode == 2
    assert re.fullmatch(
        r"error: ckpt_path=\S+ needs code \((io|builtins)\.open\) to unpickle, and ftlab refuses to run it: .*\n",
        done.stderr,
    ), done.stderr
    assert not world["marker"].exists()


def test_a_weights_file_the_record_names_is_never_read(tmp_path, world):
    """The state dict supplies every weight: restoring builds the architecture only, so a
    record (here in the old format) naming a pickle as its weights evaluates without it."""
    record = legacy(copy.deepcopy(world["ckpt"]["ftlab"]), pretrained=True, weights=world["evil"])
    path = write_hostile(world, record, tmp_path / "legacy.ckpt")
    done = run_cli_warm("eval.py", *EVAL_CLI, f"ckpt_path={path}", run_dir=tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not world["marker"].exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["acc"] <= 1


def test_the_record_is_plain_and_reads_back(world):
    record = world["ckpt"]["ftlab"]
    assert record["format"] == 1 and record["module"] == "classifier"
    assert record["backbone"] == {
        "kind": "timm",
        "name": "test_resnet",
        "pretrained": False,
        "weights": None,
        "options": {},
        "weights_id": "test_resnet@random:0",
    }
    assert json.loads(json.dumps(record)) == record  # nothing but JSON values
    parsed = parse_record(record, "ckpt_path=x")
    assert parsed.to_dict() == record
