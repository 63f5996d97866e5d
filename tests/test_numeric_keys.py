"""Every numeric key of conf/ has a row in ftlab.config_checks.NUMBERS, every row refuses what it
should in one line, and every shipped config passes.

The table is called directly here (fast); tests/test_errors.py runs named cases through the CLI.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT
from omegaconf import OmegaConf
from warm_cli import run_cli_warm

from ftlab.cli import ConfigCheck, conf_dir, config_values
from ftlab.config_checks import (
    NUMBERS,
    Count,
    Exactly,
    Indices,
    Items,
    Real,
    Rule,
    Word,
    check_config,
    rule_for,
)
from ftlab.errors import FtlabError

CONF = Path(conf_dir())

# Keys whose default (null or an interpolation) does not show that they hold no number.
TEXT_KEYS = {
    "ckpt_path": "a checkpoint path",
    "module.teacher.ckpt_path": "a checkpoint path",
    "module.teacher.model": "a model config",
    "export": "merged or null",
    "model.weights": "a weights path or package:<dist>",
    "data.*root": "a folder",
    "data.*path": "a table file",
    "freeze.head_solver": "a solver name",
    "freeze.target_modules": "module names or a regex",
    "freeze.lora": "a mapping of LoRA keys (their rows: freeze.lora.r, ...)",
    "scheduler._target_": "a callable's name",
    "trainer.default_root_dir": "a folder",
    "trainer.deterministic": "true, false or warn",
    "callbacks.*.monitor": "a metric name",
    "callbacks.*.mode": "min or max",
    "logger.*.save_dir": "a folder",
    "logger.*.name": "a run name",
    "logger.*.experiment_name": "an experiment name",
    "logger.*.run_name": "a run name",
    "logger.*.artifact_location": "a folder or URI",
    "logger.*.tags.*": "tag values",
    "data.cache_dir": "a folder",
    "eval.forgetting_text": "a text source: bbc_news, chatterbot or a .jsonl file",
    "logger.*.group": "a group name",
    "logger.*.offline": "true, false or null",
    "paths.*": "folders",
    "hydra.job.name": "a log file's name",
    "data.shift": "an image shift, name:severity (data=mnist_target)",
    "hydra.sweep.subdir": "a folder name",
    "hydra.sweeper.study_name": "a study name",
    "hydra.sweeper.storage": "a database URL",
    "hydra.sweeper.direction": "max or min",
    "hydra.launcher.partition": "a SLURM partition",
    "hydra.launcher.account": "a SLURM account",
    "hydra.launcher.qos": "a SLURM QoS",
}


# --- discovery: walk every file of conf/ --------------------------------------------------------


def _package(path: Path, text: str) -> str:
    """Where a config file's keys land: '' (global) or its group, as Hydra places it."""
    if "# @package _global_" in text or path.parent == CONF:
        return ""
    return ".".join(path.relative_to(CONF).parent.parts)


def _leaves(node: Any, where: str, target: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """``(key with [] for list items, sibling _target_, value)`` of every non-mapping value."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "defaults":
                yield from _leaves(value, f"{where}.{key}" if where else key, node.get("_target_"))
    elif isinstance(node, list) and any(isinstance(item, dict) for item in node):
        for item in node:
            yield from _leaves(item, f"{where}[]", target)
    else:
        yield where, target, node


def _may_hold_a_number(value: Any) -> bool:
    """A number, a list of numbers, or a value that hides its type (null, one interpolation)."""
    if isinstance(value, list):
        return bool(value) and all(_may_hold_a_number(v) and v is not None for v in value)
    if isinstance(value, str):
        return re.fullmatch(r"\$\{[^}]*\}", value) is not None
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def conf_keys() -> list[tuple[str, str, Any, Any]]:
    """``(file, key, target, value)`` of every key in conf/ that may hold a number."""
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text()
        for key, target, value in _leaves(yaml.safe_load(text) or {}, _package(path, text)):
            if _may_hold_a_number(value):
                found.append((str(path.relative_to(CONF)), key, target, value))
    return found


def test_discovery_finds_the_numbers_of_every_group():
    keys = {key for _, key, _, _ in conf_keys()}
    expected = [
        "seed",
        "module.head.dropout",
        "data.batch_size",
        "freeze.every",
        "freeze.phases[].epoch",
    ]
    expected += ["optimizer.lr", "optimizer.betas", "scheduler.warmup", "trainer.max_epochs"]
    expected += ["callbacks.last_checkpoint.every_n_train_steps", "hydra.sweeper.n_trials"]
    expected += ["hydra.launcher.tasks_per_node", "freeze.r", "wise_ft.alphas"]
    assert set(expected) <= keys, sorted(set(expected) - keys)


@pytest.mark.parametrize(("file", "key", "target", "value"), conf_keys(), ids=lambda v: str(v))
def test_every_numeric_key_of_conf_has_a_rule(file, key, target, value):
    """A new numeric key fails here until it gets a row in NUMBERS (or, for a null or
    interpolated default that holds text, an entry in TEXT_KEYS)."""
    rule = rule_for(key, target)
    if rule is None:
        is_number = value is not None and not isinstance(value, str)
        text = any(fnmatch.fnmatchcase(key, pattern) for pattern in TEXT_KEYS)
        assert text and not is_number, f"{file}: {key}={value!r} has no row in NUMBERS"
    elif value is not None and not isinstance(value, str):
        assert rule.accepts(value), f"{file}: {key}={value!r}: its own row refuses it"


# --- every shipped config passes ---------------------------------------------------------------


def _options() -> list[list[str]]:
    runs: list[list[str]] = [[]]
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        runs += [[f"{group.name}={f.stem}"] for f in sorted(group.glob("*.yaml"))]
    return [*runs, ["hydra/launcher=slurm"], ["hydra/launcher=slurm", "trainer=ddp_cpu"]]


@pytest.mark.slow  # a Hydra composition per shipped option: ~100, ~0.2 s each
@pytest.mark.parametrize("overrides", _options(), ids=lambda o: " ".join(o) or "defaults")
def test_every_shipped_config_passes(make_cfg, overrides):
    check_config(config_values(make_cfg(*overrides)))


def test_the_eval_config_passes(make_cfg):
    check_config(config_values(make_cfg(config="eval")))


# --- every row refuses what it should, in one line ---------------------------------------------

SHOWN_AS = {"callbacks.*": "callbacks.best", "*drop*": "drop_path_rate", "limit_*": "limit_val"}


def config_with(rule: Rule, value: Any) -> tuple[dict, str]:
    """The smallest config holding ``value`` at the rule's key, and that key as shown."""
    key = rule.key
    for pattern, name in SHOWN_AS.items():
        key = key.replace(pattern, name)
    assert "*" not in key, f"add {rule.key} to SHOWN_AS"
    config: dict = {}
    node, parts = config, key.split(".")
    for part in parts[:-1]:
        if part.endswith("[]"):
            node[part[:-2]] = [{}]
            node = node[part[:-2]][0]
        else:
            node = node.setdefault(part, {})
    if rule.target:
        node["_target_"] = f"somewhere.{rule.target}"
    node[parts[-1]] = value
    return config, key.replace("[]", "[0]")


def _out_of_range(rule: Rule) -> list[Any]:
    """Numbers below every form's range, above it, at an open bound, or fractional counts."""
    numeric = [f for f in rule.forms if isinstance(f, Count | Real)]
    if not numeric:
        return []
    low = min(f.low for f in numeric)
    bad: list[Any] = [low - 1000]
    if not any(isinstance(f, Real) for f in rule.forms):
        bad += [low + 0.5, float(max(low, 1))]  # a fractional count, and a count written 2.0
    highs = [f.high for f in numeric]
    if None not in highs and all(isinstance(f, Count | Real | Exactly) for f in rule.forms):
        bad.append(max(highs) + 1)  # type: ignore[type-var]
    if len(rule.forms) == 1 and isinstance(real := rule.forms[0], Real):
        bad += [real.low] if real.low_open else []
        bad += [real.high] if real.high_open else []
    return bad


def _malformed_lists(rule: Rule) -> list[Any]:
    bad: list[Any] = []
    for form in rule.forms:
        if isinstance(form, Items):
            bad += [[], [math.nan] * (form.length or 1), 0.5]
            if form.length:
                bad.append([form.item.low + 0.5] * (form.length + 1))
        if isinstance(form, Indices):
            bad += ["0,a", [-1], []]
    return bad


def bad_values(rule: Rule) -> list[Any]:
    """Values the rule must refuse, derived from its forms (not from its code)."""
    bad: list[Any] = [True, {"a": 1}, math.nan, math.inf, -math.inf]
    if not any(isinstance(f, Word) and not f.choices for f in rule.forms):
        bad.append("abc")
    if not rule.null:
        bad.append(None)
    return bad + _out_of_range(rule) + _malformed_lists(rule)


CASES = [(rule, value) for rule in NUMBERS for value in bad_values(rule)]


def _parse(example: str) -> Any:
    return OmegaConf.to_container(OmegaConf.create(f"v: {example}"))["v"]


@pytest.mark.parametrize("rule", NUMBERS, ids=lambda r: f"{r.key}[{r.target or ''}]")
def test_each_rule_accepts_its_example(rule):
    config, _ = config_with(rule, _parse(rule.example))
    check_config(config)


@pytest.mark.parametrize(
    ("rule", "value"), CASES, ids=[f"{r.key}[{r.target or ''}]={v!r}" for r, v in CASES]
)
def test_each_rule_refuses_in_one_line_naming_key_range_and_example(rule, value):
    config, where = config_with(rule, value)
    with pytest.raises(FtlabError) as caught:
        check_config(config)
    message = str(caught.value)
    assert "\n" not in message
    finite = "finite: " if isinstance(value, float) and not math.isfinite(value) else ""
    assert (
        message.startswith(f"{where}=") and f" must be {finite}{rule.describe()}, e.g. " in message
    )
    assert message.endswith(f"e.g. {where}={rule.example}")


def test_rule_targets_pick_the_scheduler():
    """warmup is a share or a step count for cosine, a number of epochs for warmup_then_step."""
    cosine = {"_target_": "ftlab.finetuning.schedulers.cosine_with_warmup", "warmup": 0.05}
    check_config({"scheduler": cosine})
    with pytest.raises(FtlabError, match=r"^scheduler\.warmup=0\.05 must be an integer >= 0 \("):
        check_config({"scheduler": {**cosine, "_target_": "x.warmup_then_step"}})
    check_config({"scheduler": {"_target_": "my.Scheduler", "warmup": "anything"}})  # not ours


# The cases the issue names, with their exact line.
NAMED = {
    "fractional epochs": (
        ["trainer.max_epochs=2.5"],
        "trainer.max_epochs=2.5 must be an integer >= 1, -1 (no limit) or null, "
        "e.g. trainer.max_epochs=10",
    ),
    "fractional batch size": (
        ["data.batch_size=3.5"],
        "data.batch_size=3.5 must be an integer >= 1, e.g. data.batch_size=32",
    ),
    "fractional unfreeze interval": (
        ["freeze.every=1.5"],
        "freeze.every=1.5 must be an integer >= 1, e.g. freeze.every=1",
    ),
    "dropout above 1": (
        ["module.head.dropout=1.5"],
        "module.head.dropout=1.5 must be a number in [0, 1), e.g. module.head.dropout=0.1",
    ),
    "LoRA dropout above 1": (
        ["freeze=lora", "freeze.dropout=1.5"],
        "freeze.dropout=1.5 must be a number in [0, 1), e.g. freeze.dropout=0.1",
    ),
    "a model option's dropout above 1": (
        ["+model.drop_path_rate=2"],
        "model.drop_path_rate=2 must be a number in [0, 1) or null, e.g. model.drop_path_rate=0.1",
    ),
    "a phase at a fractional epoch": (
        [
            "freeze=schedule",
            "freeze.phases=[{epoch: 0, groups: [head]}, {epoch: 0.5, groups: [x]}]",
        ],
        "freeze.phases[1].epoch=0.5 must be an integer >= 0, e.g. freeze.phases[1].epoch=1",
    ),
    "an OOD set's own batch size": (
        ["data.ood=[{name: x, data: {_target_: ftlab.data.DigitsDataModule, batch_size: 2.5}}]"],
        "data.ood[0].data.batch_size=2.5 must be an integer >= 1, "
        "e.g. data.ood[0].data.batch_size=32",
    ),
    "a share of batches above 1": (
        ["trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches=1.5 must be an integer >= 0 (batches), a number in [0, 1] "
        "(a share of the batches) or null, e.g. trainer.limit_train_batches=0.25",
    ),
    "infinite lr": (
        ["optimizer.lr=inf"],
        "optimizer.lr=inf must be finite: a number > 0, e.g. optimizer.lr=3e-4",
    ),
}


@pytest.mark.parametrize(("overrides", "line"), NAMED.values(), ids=list(NAMED))
def test_named_cases_of_the_issue(make_cfg, overrides, line):
    with pytest.raises(FtlabError) as caught:
        check_config(config_values(make_cfg(*overrides)))
    assert str(caught.value) == line


# --- keys that contradict each other -----------------------------------------------------------

ENDLESS = r"^trainer\.max_epochs=-1 gives the run no end, but scheduler={} spans the whole run"

PAIRS = {
    "no end, cosine over steps": (["trainer.max_epochs=-1"], ENDLESS.format("cosine")),
    "no end, onecycle": (
        ["trainer.max_epochs=-1", "scheduler=onecycle"],
        ENDLESS.format("onecycle"),
    ),
    "no end, cosine per epoch with max_steps": (
        ["trainer.max_epochs=-1", "trainer.max_steps=50", "scheduler.interval=epoch"],
        ENDLESS.format("cosine") + r".*max_epochs=10 \(scheduler=none",
    ),
    "null epochs with max_steps, per epoch": (
        ["trainer.max_epochs=null", "trainer.max_steps=50", "scheduler.interval=epoch"],
        r"^trainer\.max_epochs=null gives the run no end",
    ),
    "no end, cosine over steps bounded by max_steps": (
        ["trainer.max_epochs=-1", "trainer.max_steps=50"],
        None,
    ),
    "no end, constant lr": (["trainer.max_epochs=-1", "scheduler=none"], None),
    "no end, plateau": (["trainer.max_epochs=-1", "scheduler=plateau"], None),
    "no end, warmup then step": (["trainer.max_epochs=-1", "scheduler=warmup_step"], None),
    "null epochs: Lightning's 1000": (["trainer.max_epochs=null"], None),
    "lp_ft ends before fine-tuning": (
        ["freeze=lp_ft", "freeze.lp_epochs=3", "trainer.max_epochs=3"],
        r"^freeze\.lp_epochs=3 must be below trainer\.max_epochs=3, or freeze=lp_ft never "
        r"fine-tunes: e\.g\. trainer\.max_epochs=4",
    ),
    "lp_ft with an epoch of fine-tuning": (
        ["freeze=lp_ft", "freeze.lp_epochs=2", "trainer.max_epochs=3"],
        None,
    ),
    "timm weights file without pretrained": (
        ["model=test_vit", "model.weights={file}"],
        r"^model\.weights='\S+/w\.safetensors' is ignored with model\.pretrained=false "
        r"\(random init\): set model\.pretrained=true to load it, or model\.weights=null",
    ),
    "timm weights folder without pretrained": (
        ["model=test_vit", "model.weights={dir}"],
        r"^model\.weights='\S+/hf' is ignored with model\.pretrained=false",
    ),
    "a file of either source without pretrained": (
        ["model=test_vit", "model.source=auto", "model.weights={file}"],
        r"^model\.weights='\S+/w\.safetensors' is ignored",
    ),
    "timm weights file, pretrained": (
        ["model=test_vit", "model.weights={file}", "model.pretrained=true"],
        None,
    ),
    "packaged weights turned off (strategy=scratch)": (["strategy=scratch"], None),
    "Hugging Face folder without pretrained: its config and tokenizer": (
        ["model=minilm", "model.weights={dir}", "model.pretrained=false"],
        None,
    ),
}


@pytest.mark.parametrize(("overrides", "match"), PAIRS.values(), ids=list(PAIRS))
def test_keys_that_contradict_each_other(make_cfg, tmp_path, overrides, match):
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    (tmp_path / "hf").mkdir()
    paths = {"file": tmp_path / "w.safetensors", "dir": tmp_path / "hf"}
    config = config_values(make_cfg(*(o.format_map(paths) for o in overrides)))
    if match is None:
        check_config(config)
        return
    with pytest.raises(FtlabError, match=match) as caught:
        check_config(config)
    assert "\n" not in str(caught.value)


# --- through the CLI: before anything is written, imported or launched --------------------------


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_bad_number_stops_before_torch_and_before_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-X", "importtime", str(ROOT / "train.py"), "trainer.max_epochs=2.5"]
    done = subprocess.run(
        [*cmd, f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    others = [line for line in _lines(done.stderr) if not line.startswith("import time:")]
    assert done.returncode == 2
    assert others == [
        "error: trainer.max_epochs=2.5 must be an integer >= 1, -1 (no limit) or null, "
        "e.g. trainer.max_epochs=10"
    ]
    assert "hydra" in imported and not any(m.split(".")[0] == "torch" for m in imported)
    assert not run_dir.exists()


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_a_sweep_with_a_bad_shared_value_stops_before_its_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli_warm(
        "train.py", "-m", "seed=0,1", "data.batch_size=3.5", f"hydra.sweep.dir={sweep}",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert _lines(done.stderr) == [
        "error: data.batch_size=3.5 must be an integer >= 1, e.g. data.batch_size=32"
    ]
    assert not sweep.exists()


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_a_sweep_checks_the_values_it_varies_in_each_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli_warm(
        "train.py", "-m", "model=test_cnn", "data.batch_size=3.5,0", f"hydra.sweep.dir={sweep}",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    errors = [json.loads((sweep / str(n) / "status.json").read_text())["error"] for n in (0, 1)]
    assert errors == [
        "data.batch_size=3.5 must be an integer >= 1, e.g. data.batch_size=32",
        "data.batch_size=0 must be an integer >= 1, e.g. data.batch_size=32",
    ]
    assert not list(sweep.glob("*/metrics.json"))


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_a_bad_sweeper_setting_stops_the_search(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli_warm(
        "train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_jobs=0",
        f"hydra.sweep.dir={sweep}", run_dir=tmp_path / "run",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert _lines(done.stderr) == [
        "error: hydra.sweeper.n_jobs=0 must be an integer >= 1, e.g. hydra.sweeper.n_jobs=4"
    ]
    assert not sweep.exists()


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_full_error_shows_the_checks_traceback(tmp_path):
    done = run_cli_warm(
        "train.py", "module.head.dropout=1.5", run_dir=tmp_path, env={"HYDRA_FULL_ERROR": "1"}
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "FtlabError: module.head.dropout=1.5 must be a number in [0, 1)" in done.stderr


def test_a_launchers_settings_count_only_for_a_sweep(make_cfg, capsys):
    """SLURM needs a task count per node: trainer.devices=auto is refused for a sweep only."""
    cfg = make_cfg("hydra/launcher=slurm", "trainer.devices=auto")
    ConfigCheck._check(cfg, sweep=False)
    with pytest.raises(SystemExit) as stopped:
        ConfigCheck._check(cfg, sweep=True)
    assert stopped.value.code == 2
    err = capsys.readouterr().err  # gpus_per_node and tasks_per_node both follow the devices
    assert re.match(r"error: hydra\.launcher\.\w+_per_node='auto' must be an integer >= ", err)


def test_the_timm_builder_refuses_what_composition_cannot_see(tmp_path):
    """With model.source=auto, only timm knows the name is its own: the builder refuses then."""
    from ftlab.backbones import build_backbone

    (tmp_path / "weights").mkdir()
    with pytest.raises(FtlabError, match=r"model\.weights='\S+/weights' is ignored with model\."):
        build_backbone("test_resnet", pretrained=False, weights=str(tmp_path / "weights"))
    build_backbone("test_resnet", pretrained=False, weights="package:anything")  # scratch
