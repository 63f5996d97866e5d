"""The bad-input catalogue: every entry exits 2 with one stderr line ``error: ...`` naming the key
or path and the fix, writes no metrics.json and leaves earlier runs' files alone."""

# The catalogue keeps one entry a line.
# ruff: noqa: E501

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import timm
import torch
from conftest import FAST, read_metrics, run_cli
from safetensors.torch import save_file
from warm_cli import run_cli_warm

from ftlab.data.synthetic import write_image_tree

FAST_CLI = [*FAST, "trainer.max_epochs=1"]
EVAL_CLI = ["data=digits", "data.image_size=32", "trainer.accelerator=cpu"]
TEXT = ["model=minilm", "data=text_csv", "data.max_length=16"]


# --- the inputs the table names as {name}: built on first use, once per session --------------


def _images(root: Path, classes=("a", "b", "c"), n=18) -> Path:
    return write_image_tree(root, n, classes=classes, size=8)


def _corrupt_images(root: Path) -> Path:
    _images(root)
    (root / "b" / "bad.jpg").write_bytes(b"not a jpeg at all")
    return root


def _no_images(root: Path) -> Path:
    _images(root, classes=("a", "c"), n=12)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("not an image")
    return root


def _table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _reviews(path: Path, labels=("pos", "neg"), n=20) -> Path:
    return _table(path, ["text", "label"], [[f"movie {i}", labels[i % 2]] for i in range(n)])


def _vit_weights(path: Path) -> Path:
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    return path


def _vit_checkpoint(root: Path) -> Path:
    """A real checkpoint of a tiny model=test_vit run (an earlier run: it must stay untouched)."""
    done = run_cli_warm(
        "train.py",
        *FAST,
        "model=test_vit",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "test=false",
        run_dir=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "checkpoints" / "last.ckpt"


INPUTS: dict[str, Callable[[Path], Path]] = {
    "junk_safetensors": lambda d: _write(d / "junk.safetensors", b"\x00garbage" * 64),
    "junk_pth": lambda d: _write(d / "junk.pth", b"\x80garbage" * 64),
    "vit_weights": lambda d: _vit_weights(d / "test_vit.safetensors"),
    "vit_ckpt": lambda d: _vit_checkpoint(d / "vit_run"),
    "images": lambda d: _images(d / "images"),
    "empty_root": lambda d: _mkdir(d / "empty"),
    "no_images": lambda d: _no_images(d / "no_images"),
    "corrupt_images": lambda d: _corrupt_images(d / "corrupt"),
    "val_emu": lambda d: _images(d / "val_emu", classes=("a", "emu"), n=4),
    "reviews": lambda d: _reviews(d / "reviews.csv"),
    "no_text_column": lambda d: _table(d / "columns.csv", ["review", "label"], [["ok", "pos"]]),
    "empty_text": lambda d: _table(
        d / "empty_text.csv", ["text", "label"], [["ok", "a"], ["", "b"]]
    ),
    "val_meh": lambda d: _reviews(d / "val_meh.csv", labels=("pos", "meh"), n=4),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


class Inputs(dict):
    """``"{name}".format_map(inputs)`` builds input ``name`` (INPUTS) the first time it is used."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> str:
        self[name] = str(INPUTS[name](self.root))
        return self[name]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("inputs"))


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """Overrides (``{name}`` = a built input) and the regex the one error line must match."""

    overrides: list[str]
    match: str
    script: str = "train.py"


# One row per bad input. Adding an entry is one line (so the table is left unformatted).
# fmt: off
CATALOGUE = {
    "unknown model name": Bad(["model.name=resnet5O"], r"model\.name='resnet5O'.*resnet50"),
    "bad freeze key": Bad(["+freeze.k=3"], r"freeze\.k is not a key of freeze=gradual"),
    "unreachable pretrained weights": Bad(["model=resnet", "model.name=resnet18", "model.pretrained=true"], r"model\.pretrained=false"),
    "corrupt weights (.safetensors)": Bad(["model.pretrained=true", "model.weights={junk_safetensors}"], r"model\.weights='\S+/junk\.safetensors' is corrupt or not a weights file \(\w+\): .*point model\.weights"),
    "corrupt weights (.pth)": Bad(["model.pretrained=true", "model.weights={junk_pth}"], r"model\.weights='\S+/junk\.pth' is corrupt or not a weights file \(\w+\): .*point model\.weights"),
    "weights of another architecture": Bad(["model.pretrained=true", "model.weights={vit_weights}"], r"model\.weights='\S+/test_vit\.safetensors' does not fit test_resnet.*fix model\.name or model\.weights"),
    "missing data root": Bad(["data=image_folder", "data.root=/nonexistent/images"], r"data\.root=/nonexistent/images does not exist"),
    "empty data root": Bad(["data=image_folder", "data.root={empty_root}"], r"data\.root=\S+/empty has no class folders: point data\.root"),
    "class folder without images": Bad(["data=image_folder", "data.root={no_images}"], r"data\.root=\S+: class folder 'b' has no images .*add images or remove"),
    "corrupt image": Bad(["data=image_folder", "data.root={corrupt_images}"], r"cannot read image \S+/b/bad\.jpg \(.*\): fix or remove it, or set data\.skip_corrupt=true"),
    "corrupt image in a loader worker": Bad(["data=image_folder", "data.root={corrupt_images}", "data.num_workers=1"], r"^error: cannot read image \S+/b/bad\.jpg .*data\.skip_corrupt=true to skip unreadable images$"),
    "val class outside the training classes": Bad(["data=image_folder", "data.root={images}", "data.val_root={val_emu}"], r"data\.val_root=\S+: class folder 'emu' is not a class of data\.root \(a, b, c\)"),
    "csv without the named column": Bad([*TEXT, "data.path={no_text_column}"], r"data\.path=\S+/columns\.csv has no column 'text': set data\.text_column to one of review, label"),
    "empty text": Bad([*TEXT, "data.path={empty_text}"], r"data\.path=\S+/empty_text\.csv line 3: empty 'text': fill it in or drop the row"),
    "val label outside the training classes": Bad([*TEXT, "data.path={reviews}", "data.val_path={val_meh}"], r"data\.val_path=\S+/val_meh\.csv line 3: label 'meh' is not among data\.path's labels"),
    "schedule group matching nothing": Bad(["freeze=schedule", "freeze.phases=[{{epoch: 0, groups: [nothing_here]}}]"], r"freeze\.phases\[0\]: 'nothing_here' matches no layer group"),
    "negative lr": Bad(["optimizer.lr=-1"], r"optimizer\.lr=-1 must be a number > 0"),
    "zero lr": Bad(["optimizer.lr=0"], r"optimizer\.lr=0 must be a number > 0"),
    "zero batch size": Bad(["data.batch_size=0"], r"data\.batch_size=0 must be an integer >= 1, e\.g\. data\.batch_size=32$"),
    "negative batch size": Bad(["data.batch_size=-8"], r"data\.batch_size=-8 must be an integer >= 1"),
    "fractional batch size": Bad(["data.batch_size=3.5"], r"data\.batch_size=3\.5 must be an integer >= 1, e\.g\. data\.batch_size=32$"),
    "fractional epoch count": Bad(["trainer.max_epochs=2.5"], r"trainer\.max_epochs=2\.5 must be an integer >= 1, -1 \(no limit\) or null, e\.g\. trainer\.max_epochs=10$"),
    "fractional unfreeze interval": Bad(["freeze.every=1.5"], r"freeze\.every=1\.5 must be an integer >= 1, e\.g\. freeze\.every=1$"),
    "dropout above 1": Bad(["module.head.dropout=1.5"], r"module\.head\.dropout=1\.5 must be a number in \[0, 1\), e\.g\. module\.head\.dropout=0\.1$"),
    "LoRA dropout above 1": Bad(["freeze=lora", "freeze.dropout=1.5"], r"freeze\.dropout=1\.5 must be a number in \[0, 1\)"),
    "beta above 1": Bad(["optimizer.betas=[0.9,1.5]"], r"optimizer\.betas=\[0\.9,1\.5\] must be two numbers in \[0, 1\), e\.g\. optimizer\.betas=\[0\.9,0\.999\]$"),
    "no epoch limit under a cosine schedule": Bad(["trainer.max_epochs=-1"], r"trainer\.max_epochs=-1 gives the run no end, but scheduler=cosine spans the whole run: .*e\.g\. trainer\.max_epochs=10"),
    "LP-FT that ends before fine-tuning": Bad(["freeze=lp_ft", "freeze.lp_epochs=1"], r"freeze\.lp_epochs=1 must be below trainer\.max_epochs=1, or freeze=lp_ft never fine-tunes"),
    "weights file with pretrained=false": Bad(["model=test_vit", "model.weights={vit_weights}"], r"model\.weights='\S+/test_vit\.safetensors' is ignored with model\.pretrained=false \(random init\): set model\.pretrained=true"),
    "more CPU processes than cores": Bad(["trainer.devices=999"], r"trainer\.devices=999 with trainer\.accelerator=cpu asks for 999 CPU cores.*set trainer\.devices to at most"),
    "zero devices": Bad(["trainer.devices=0"], r"trainer\.devices=0 must be an integer >= 1, -1 \(all\), auto or a list of device indices"),
    "more GPUs than exist": Bad(["trainer.accelerator=gpu", "trainer.devices=999"], r"trainer\.accelerator=gpu but this machine has no CUDA GPU.*trainer\.accelerator=cpu|asks for 999 GPUs"),
    "TPU without torch_xla": Bad(["trainer.accelerator=tpu"], r"trainer\.accelerator=tpu needs the torch_xla package, which is not installed here: use trainer\.accelerator=cpu"),
    "float16 autocast on the CPU": Bad(["trainer.precision=16-mixed"], r"trainer\.precision=16-mixed on the CPU: Lightning would run bf16-mixed instead .*set trainer\.precision=bf16-mixed or 32-true$"),
    "missing ckpt_path": Bad(["ckpt_path=/nonexistent/last.ckpt"], r"ckpt_path=/nonexistent/last\.ckpt: no such file"),
    "ckpt_path of another model": Bad(["ckpt_path={vit_ckpt}"], r"ckpt_path=\S+/last\.ckpt belongs to model test_vit, not test_resnet: .*model\.name=test_vit"),
    "ckpt_path not a checkpoint": Bad(["ckpt_path={junk_pth}"], r"ckpt_path=\S+/junk\.pth is not a loadable checkpoint"),
    "eval: missing ckpt_path": Bad(["ckpt_path=/nonexistent/best.ckpt"], r"ckpt_path=/nonexistent/best\.ckpt: no such file", "eval.py"),
    "eval: ckpt_path not a checkpoint": Bad(["ckpt_path={junk_pth}"], r"ckpt_path=\S+/junk\.pth is not a loadable checkpoint", "eval.py"),
    "eval: fractional batch size": Bad(["ckpt_path=/nonexistent/best.ckpt", "data.batch_size=2.5"], r"data\.batch_size=2\.5 must be an integer >= 1", "eval.py"),
    "eval: more CPU processes than cores": Bad(["ckpt_path={vit_ckpt}", "trainer.devices=999"], r"trainer\.devices=999", "eval.py"),
}
# fmt: on


def command(bad: Bad, inputs: Inputs) -> list[str]:
    """The FAST base overrides, minus those the entry replaces, then the entry's."""
    given = [o.format_map(inputs) for o in bad.overrides]
    keys = {o.split("=", 1)[0].lstrip("+") for o in given}
    text = "data=text_csv" in given
    base = FAST_CLI if bad.script == "train.py" else EVAL_CLI
    kept = [o for o in base if o.split("=")[0] not in keys and not (text and o.startswith("data."))]
    return [*kept, *given]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.slow  # ~50 runs of train.py/eval.py in forked processes (~45 s on 2 loaded cores)
@pytest.mark.parametrize("bad", list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_bad_input_gives_one_line_and_no_metrics(tmp_path, inputs, bad):
    overrides = command(bad, inputs)  # builds the inputs it names first
    before = snapshot(inputs.root)
    done = run_cli_warm(bad.script, *overrides, run_dir=tmp_path / "run")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert re.search(bad.match, lines[0]), lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert snapshot(inputs.root) == before  # weights, data and the earlier run left as they were


def test_a_fresh_interpreter_prints_only_the_error_line(tmp_path):
    """Import-time warnings would show only here: the catalogue runs in warm forked processes."""
    done = run_cli("train.py", *FAST_CLI, "optimizer.lr=0", run_dir=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: optimizer.lr=0 must be a number > 0, e.g. optimizer.lr=3e-4"
    ]


@pytest.mark.slow  # train.py in forked processes (the fork server imports torch first)
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("freeze=warp", "error: freeze=warp is not a freeze option: "),  # unknown option
        (
            "optimizer.lrr=1",
            "error: optimizer.lrr is not a key of optimizer=adamw: did you mean optimizer.lr?",
        ),  # key
    ],
)
def test_unknown_config_option_or_key_is_one_line(tmp_path, override, expected):
    done = run_cli_warm("train.py", override, run_dir=tmp_path)
    assert done.returncode == 2
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_full_traceback_on_request(tmp_path):
    done = run_cli_warm(
        "train.py", *FAST_CLI, "optimizer.lr=-1", run_dir=tmp_path, env={"HYDRA_FULL_ERROR": "1"}
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.slow  # train.py runs in forked processes, one with a loader worker
@pytest.mark.parametrize("workers", [0, 1])
def test_skip_corrupt_skips_and_counts_unreadable_images(tmp_path, inputs, workers):
    """Loader workers flag skipped files in shared memory, so the count reaches metrics.json."""
    root = inputs["corrupt_images"]
    overrides = [o for o in FAST_CLI if not o.startswith("data=")]
    done = run_cli_warm(
        "train.py",
        *overrides,
        "data=image_folder",
        f"data.root={root}",
        "data.skip_corrupt=true",
        f"data.num_workers={workers}",
        run_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = read_metrics(tmp_path)["data"]
    assert data["skipped_corrupt"] == 1 and data["skipped_files"] == [f"{root}/b/bad.jpg"]
    log = (tmp_path / "train.log").read_text()
    assert "skipped 1 unreadable image(s)" in log and "bad.jpg" in log


@pytest.mark.slow  # train.py in a forked process, from a checkpoint
def test_a_checkpoint_of_the_same_model_resumes(tmp_path, inputs):
    """The check lets a matching checkpoint through (resume itself: test_finetuning)."""
    overrides = [o for o in FAST_CLI if not o.startswith(("model=", "trainer.max_epochs"))]
    done = run_cli_warm(
        "train.py",
        *overrides,
        "model=test_vit",
        "trainer.max_epochs=2",
        f"ckpt_path={inputs['vit_ckpt']}",
        "test=false",
        run_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(tmp_path)["status"] == "completed"


@pytest.mark.slow  # its checkpoint is trained by train.py in a forked process
def test_resume_check_names_classes_and_keys(tmp_path, inputs):
    from ftlab.checkpoints import check_resume, load_checkpoint
    from ftlab.errors import FtlabError

    path = inputs["vit_ckpt"]
    ckpt = load_checkpoint(path)

    class Module(torch.nn.Module):
        def __init__(self, record, state: dict) -> None:
            super().__init__()
            self.record, self._state = record, state

        def state_dict(self, *args, **kwargs):
            return self._state

    record, state = ckpt["ftlab"], ckpt["state_dict"]
    check_resume(path, Module(record, state))  # its own model: fine
    other = replace(record, classes=["x", "y"])
    with pytest.raises(
        FtlabError, match=r"trained on classes \[0, 1, .*this run's data has \[x, y\]"
    ):
        check_resume(path, Module(other, state))
    fewer = dict(list(state.items())[:-1])
    with pytest.raises(FtlabError, match=r"\(test_vit\) does not fit .*1 unexpected"):
        check_resume(path, Module(record, fewer))
