"""Every number of a composed config checked before anything runs: type, range, and the pairs
of keys that contradict each other.

One table, :data:`NUMBERS`, holds a row per numeric key of every config group: its pattern, the
forms it accepts (an integer in a range, a number in a range, a word like ``auto``) and an
example. Without it a fractional count reaches Lightning as an ``assert``, a dropout of 1.5
reaches torch as a traceback, and ``data.batch_size=3.5`` is quietly truncated to 3. A key that
breaks its row fails with one line naming the key, the range and an example::

    data.batch_size=3.5 must be an integer >= 1, e.g. data.batch_size=32

Then the checks that need two keys: a schedule whose length is the run's (cosine, one-cycle)
under ``trainer.max_epochs=-1``, an LP-FT probe that never reaches its fine-tuning, and a
weights file that ``model.pretrained=false`` would ignore.

Plain values in, :class:`~ftlab.errors.FtlabError` out: this module imports neither torch nor
Hydra. The CLI (``ftlab.cli``) hands it the composed config before Hydra writes the run
directory, and again in each job of a sweep. Keys without a row (a user's own callback's
options, say) pass unchecked: the library's own checks still apply to them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.data_sources import check_data_source
from ftlab.errors import FtlabError
from ftlab.trainer_keys import check_trainer_keys

# --- the forms a value may take ---------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _note(words: str, note: str) -> str:
    return f"{words} ({note})" if note else words


@dataclass(frozen=True)
class Count:
    """An integer from ``low`` to ``high`` (inclusive): a float, even 2.0, is refused."""

    low: int
    high: int | None = None
    note: str = ""

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and self.low <= value and (self.high is None or value <= self.high)

    def words(self) -> str:
        bound = f">= {self.low}" if self.high is None else f"in [{self.low}, {self.high}]"
        return _note(f"an integer {bound}", self.note)


@dataclass(frozen=True)
class Real:
    """A finite number (an integer counts) from ``low`` to ``high``; ``open`` bounds excluded."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def accepts(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def words(self) -> str:
        if self.high is None:
            return _note(f"a number {'>' if self.low_open else '>='} {self.low:g}", self.note)
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return _note(f"a number in {left}{self.low:g}, {self.high:g}{right}", self.note)


@dataclass(frozen=True)
class Exactly:
    """One special integer, such as -1 for "no limit"."""

    value: int
    note: str

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and value == self.value

    def words(self) -> str:
        return f"{self.value} ({self.note})"


@dataclass(frozen=True)
class Word:
    """A string: one of ``choices``, or any string when there are none (a layer-group name)."""

    text: str
    choices: tuple[str, ...] = ()

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (not self.choices or value in self.choices)

    def words(self) -> str:
        return self.text


@dataclass(frozen=True)
class Indices:
    """Device indices: a list (``[0, 1]``) or Lightning's string form (``"0,1"``)."""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str):
            return re.fullmatch(r"\d+(,\d+)*,?", value) is not None
        return isinstance(value, list | tuple) and bool(value) and all(map(Count(0).accepts, value))

    def words(self) -> str:
        return "a list of device indices"


@dataclass(frozen=True)
class Items:
    """A non-empty list of values of one form (of exactly ``length`` values when given)."""

    item: Count | Real
    text: str
    length: int | None = None

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            return False
        if self.length is not None and len(value) != self.length:
            return False
        return all(self.item.accepts(v) for v in value)

    def words(self) -> str:
        return self.text


Form = Count | Real | Exactly | Word | Indices | Items


@dataclass(frozen=True)
class Rule:
    """The accepted values of the keys ``key`` matches.

    ``key`` is a dotted path: ``*`` stands for any part of one name (``callbacks.*.save_top_k``,
    ``model.*drop*``) and ``[]`` for the items of a list (``freeze.phases[].epoch``). With
    ``target``, the rule applies only where the key's config names that ``_target_`` (the last
    part of it): a scheduler's ``warmup`` means steps for one and epochs for another.
    """

    key: str
    forms: tuple[Form, ...]
    example: str
    null: bool = False  # null is accepted (its meaning is in the config's comment)
    target: str | None = None

    def accepts(self, value: Any) -> bool:
        return (value is None and self.null) or any(f.accepts(value) for f in self.forms)

    def describe(self) -> str:
        words = [f.words() for f in self.forms] + (["null"] if self.null else [])
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"

    def message(self, where: str, value: Any) -> str:
        finite = "finite: " if isinstance(value, float) and not math.isfinite(value) else ""
        return (
            f"{where}={shown(value)} must be {finite}{self.describe()}, e.g. {where}={self.example}"
        )


def shown(value: Any) -> str:
    """A value as a command-line override spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Sequence):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def _r(key: str, *forms: Form, example: Any, null: bool = False, target: str | None = None):
    return Rule(key, forms, str(example), null, target)


EXPORTS = ("merged", "hf", "timm", "onnx")  # ftlab.exports.EXPORTS (tests hold them equal)

# Shared forms.
POSITIVE = Real(0, low_open=True)  # a learning rate, a scale
NON_NEGATIVE = Real(0)
DROPOUT = Real(0, 1, high_open=True)  # a probability of dropping: 1 would drop everything
SHARE = Real(0, 1, low_open=True, high_open=True)  # a share that leaves something on both sides
NO_LIMIT = Exactly(-1, "no limit")
ALL = Exactly(-1, "all")
BATCHES = (Count(0, note="batches"), Real(0, 1, note="a share of the batches"))

# --- the table: every numeric key of conf/ (tests/test_numeric_keys.py holds it to that) -----

NUMBERS: tuple[Rule, ...] = (
    # conf/train.yaml, conf/eval.yaml
    _r("seed", Count(0, 2**32 - 1), example=0),  # what seed_everything accepts (numpy's range)
    # conf/eval.yaml: a layout of ftlab.exports.EXPORTS, refused before torch is imported
    _r("export", Word("one of merged, hf, timm, onnx", EXPORTS), example="hf", null=True),
    _r("faults.check_every", Count(1, note="optimizer steps"), example=10),
    # a checkpoint to start from, and the conf/data option of its task (two-stage runs)
    _r("model.init_from", Word("a checkpoint path"), example="<run>/last.ckpt", null=True),
    _r("eval.forgetting", Word("a conf/data option"), example="digits", null=True),
    _r(
        "wise_ft.alphas",
        Items(Real(0, 1), "a list of numbers in [0, 1]"),
        example="[0,0.25,0.5,0.75,1]",
        null=True,
    ),
    # conf/model: options passed on to timm or transformers, e.g. +model.drop_path_rate=0.1,
    # +model.hidden_dropout_prob=0.2
    _r("model.*drop*", DROPOUT, example=0.1, null=True),
    # conf/data (and the data configs of data.ood entries, which take the same keys)
    _r("data.batch_size", Count(1), example=32),
    _r("data.num_workers", Count(0), example=4),
    _r("data.image_size", Count(1), example=64, null=True),
    _r("data.max_length", Count(1), example=128, null=True),
    _r("data.val_fraction", SHARE, example=0.15),
    _r("data.test_fraction", SHARE, example=0.15),
    _r("data.split_seed", Count(0), example=0),
    _r("data.max_train_samples", Count(1), example=1000, null=True),
    _r("data.val_size", Count(1, 59999), example=5000),  # of Fashion-MNIST's 60,000
    _r("data.max_eval_samples", Count(1), example=64, null=True),  # language-model data
    _r("data.max_chars", Count(1), example=400, null=True),  # an article's characters (bbc_topic)
    _r("data.shuffle_block", Count(1, note="rows"), example=1024),  # data.streaming=true
    _r("data.num_shards", Count(1), example=8),  # data=hf_dataset: a stream's shards
    # conf/task
    _r("task.pos_weight", POSITIVE, example=2.0),  # multilabel: BCE's weight of a positive
    _r("task.threshold", Real(0, 1, low_open=True, high_open=True), example=0.5),
    _r("task.huber_delta", POSITIVE, example=1.0),  # regression with task.loss=huber
    # task=causal_lm: greedy generation in validation, forgetting perplexity before/after
    _r("eval.generate.max_new_tokens", Count(1), example=16),
    _r("eval.generate.samples", Count(0), example=8),
    _r("eval.forgetting_samples", Count(1), example=64),
    _r("data.ood[].severity", Count(1, 5), example=3),
    # conf/tune
    _r("tune.min_lr", POSITIVE, example="1e-7"),
    _r("tune.max_lr", POSITIVE, example=1.0),
    _r("tune.num_training_steps", Count(2, note="optimizer steps"), example=100),
    _r("tune.early_stop_threshold", Real(1, low_open=True), example=4.0, null=True),
    _r("tune.steps_per_trial", Count(1), example=3),
    _r("tune.max_trials", Count(1), example=6),
    # conf/averaging: an EMA's decay of 1 would never move from the start
    _r("averaging.decay", Real(0, 1, high_open=True), example=0.999),
    _r("averaging.start_epoch", Count(0), example=1, null=True),
    # conf/module
    _r("module.head.hidden", Count(1), example=512),
    _r("module.head.dropout", DROPOUT, example=0.1),
    _r("module.label_smoothing", Real(0, 1, high_open=True), example=0.1),
    _r("module.mixup", NON_NEGATIVE, example=0.2),
    _r("module.cutmix", NON_NEGATIVE, example=1.0),
    _r("module.alpha", Real(0, 1), example=0.5),  # conf/module/distill.yaml
    _r("module.temperature", POSITIVE, example=4),
    _r("module.teacher.image_size", Count(1), example=64, null=True),
    # conf/freeze
    _r("freeze.every", Count(1), example=1),
    _r("freeze.step", Count(1), example=4),
    _r("freeze.until", Count(0), Word("a layer-group name"), example=4, null=True),
    _r("freeze.k", Count(0), example=2),
    _r("freeze.lp_epochs", Count(1), example=1),
    _r("freeze.ft_lr_scale", Real(0, 1, low_open=True), example=0.1),
    _r("freeze.every_n_steps", Count(1, note="optimizer steps"), example=50, null=True),
    _r("freeze.r", Count(1), example=8),
    _r("freeze.alpha", POSITIVE, example=16),
    # peft's own LoraConfig keys under freeze=peft (conf/strategy/dora.yaml sets them)
    _r("freeze.peft.r", Count(1), example=8),
    _r("freeze.peft.lora_alpha", POSITIVE, example=16),
    _r("freeze.dropout", DROPOUT, example=0.1),
    _r("freeze.lora.r", Count(1), example=8),
    _r("freeze.lora.alpha", POSITIVE, example=16),
    _r("freeze.lora.dropout", DROPOUT, example=0.1),
    _r("freeze.phases[].epoch", Count(0), example=1),
    _r("freeze.phases[].lr", POSITIVE, example="1e-4", null=True),
    _r("freeze.phases[].lr_scale", POSITIVE, example=0.1, null=True),
    # conf/optimizer (and torch options a user may add: eps, dampening)
    _r("optimizer.lr", POSITIVE, example="3e-4"),
    _r("optimizer.weight_decay", NON_NEGATIVE, example=0.05, null=True),
    _r("optimizer.betas", Items(DROPOUT, "two numbers in [0, 1)", 2), example="[0.9,0.999]"),
    _r("optimizer.momentum", DROPOUT, example=0.9),
    _r("optimizer.dampening", Real(0, 1), example=0),
    _r("optimizer.eps", POSITIVE, example="1e-8"),
    _r("optimizer.layer_decay", Real(0, 1, low_open=True), example=0.75, null=True),
    _r(
        "optimizer.lr_range",
        Items(POSITIVE, "two numbers > 0", 2),
        example="[1e-5,1e-3]",
        null=True,
    ),
    # conf/scheduler: each by the function or class it configures
    _r(
        "scheduler.warmup",
        Real(0, 1, high_open=True, note="a share of all steps"),
        Count(1, note="steps"),
        example=0.05,
        target="cosine_with_warmup",
    ),
    _r("scheduler.min_lr_ratio", Real(0, 1), example=0.01, target="cosine_with_warmup"),
    _r("scheduler.pct_start", SHARE, example=0.25, target="one_cycle"),
    _r("scheduler.warmup", Count(0, note="epochs"), example=1, target="warmup_then_step"),
    _r("scheduler.step_size", Count(1), example=1, target="warmup_then_step"),
    _r("scheduler.gamma", POSITIVE, example=0.5, target="warmup_then_step"),
    _r("scheduler.factor", SHARE, example=0.1, target="ReduceLROnPlateau"),
    _r("scheduler.patience", Count(0), example=1, target="ReduceLROnPlateau"),
    _r("scheduler.cooldown", Count(0), example=0, target="ReduceLROnPlateau"),
    _r("scheduler.min_lr", NON_NEGATIVE, example="1e-6", target="ReduceLROnPlateau"),
    # conf/trainer: lightning.Trainer's numeric arguments
    _r("trainer.max_epochs", Count(1), NO_LIMIT, example=10, null=True),
    _r("trainer.min_epochs", Count(0), example=1, null=True),
    _r("trainer.max_steps", Count(1), NO_LIMIT, example=1000),
    _r("trainer.min_steps", Count(0), example=100, null=True),
    _r(
        "trainer.devices",
        Count(1),
        ALL,
        Word("auto", ("auto",)),
        Indices(),
        example=1,
    ),
    _r("trainer.num_nodes", Count(1), example=1),
    _r("trainer.log_every_n_steps", Count(1), example=10, null=True),
    _r("trainer.num_sanity_val_steps", Count(0), ALL, example=2, null=True),
    _r("trainer.limit_*_batches", *BATCHES, example=0.25, null=True),
    _r("trainer.overfit_batches", *BATCHES, example=0.25),
    _r(
        "trainer.val_check_interval",
        Count(1, note="batches"),
        Real(0, 1, low_open=True, note="a share of the epoch"),
        example=0.5,
        null=True,
    ),
    _r("trainer.check_val_every_n_epoch", Count(1), example=1, null=True),
    _r("trainer.gradient_clip_val", NON_NEGATIVE, example=1.0, null=True),
    _r("trainer.accumulate_grad_batches", Count(1), example=4),
    _r("trainer.reload_dataloaders_every_n_epochs", Count(0), example=1),
    # conf/callbacks: Lightning's ModelCheckpoint and EarlyStopping, under any name
    _r("callbacks.*.save_top_k", Count(0), ALL, example=1),
    _r("callbacks.*.every_n_epochs", Count(0), example=1, null=True),
    _r("callbacks.*.every_n_train_steps", Count(0), example=100, null=True),
    _r("callbacks.*.patience", Count(0), example=3),
    # conf/hparams_search (hydra.sweeper) and conf/hydra/launcher: checked before a sweep starts
    _r("hydra.sweeper.n_trials", Count(1), example=20),
    _r("hydra.sweeper.n_jobs", Count(1), example=4),
    _r("hydra.sweeper.sampler.seed", Count(0), example=0, null=True),
    _r("hydra.sweeper.sampler.n_startup_trials", Count(0), example=5),
    _r(
        "hydra.sweeper.seeds",
        Items(Count(0, 2**32 - 1), "a list of seeds"),
        example="[0,1,2]",
        null=True,
    ),
    _r("hydra.sweeper.heartbeat_s", Count(1, note="seconds"), example=60),
    _r("hydra.sweeper.pruner_options.n_startup_trials", Count(0), example=3),
    _r("hydra.sweeper.pruner_options.n_warmup_steps", Count(0, note="epochs"), example=1),
    _r("hydra.launcher.timeout_min", Count(1), example=240),
    _r("hydra.launcher.nodes", Count(1), example=1),
    _r("hydra.launcher.tasks_per_node", Count(1), example=1),
    _r("hydra.launcher.gpus_per_node", Count(0), example=1, null=True),
    _r("hydra.launcher.cpus_per_task", Count(1), example=8, null=True),
    _r("hydra.launcher.mem_gb", Count(1), example=32, null=True),
    _r("hydra.launcher.signal_delay_s", Count(0), example=120),
    _r("hydra.launcher.array_parallelism", Count(1), example=64),
)

# An OOD entry's own data config takes the keys of `data`: data.ood[0].data.batch_size.
_ALIASES = (("data.ood[].data.", "data."),)


def _compile(key: str) -> re.Pattern[str]:
    return re.compile(".".join(re.escape(p).replace(r"\*", "[^.]*") for p in key.split(".")))


_COMPILED = tuple((_compile(rule.key), rule) for rule in NUMBERS)


def rule_for(key: str, target: str | None = None) -> Rule | None:
    """The row of ``key`` (``[]`` for list items), given its config's ``_target_``."""
    for alias, canonical in _ALIASES:
        if key.startswith(alias):
            key = canonical + key[len(alias) :]
    name = str(target).rsplit(".", 1)[-1] if target else None
    for pattern, rule in _COMPILED:
        if pattern.fullmatch(key) and rule.target in (None, name):
            return rule
    return None


# --- checking a config -------------------------------------------------------------------------


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`FtlabError` for the first value outside its row, then for contradictions.

    Args:
        config: the composed config as plain values (``hydra`` included or not); values that
            could not be resolved yet are simply absent.
    """
    for where, rule, value in _ruled(config):
        if not rule.accepts(value):
            raise FtlabError(rule.message(where, value))
    check_trainer_keys(config)  # +trainer.<typo>= and a user's own files: the closest keyword
    _check_length(config)
    _check_lp_ft(config)
    _check_weights(config)
    check_data_source(config)  # data.path and its columns (ftlab.data_sources)


def _ruled(
    node: Mapping[str, Any], where: str = "", key: str = ""
) -> Iterator[tuple[str, Rule, Any]]:
    """``(key as shown, its row, value)`` of every key that has a row, found by descending into
    mappings and lists of mappings (``key`` spells list items ``[]`` to look rows up)."""
    target = node.get("_target_")
    for name, value in node.items():
        shown_path = f"{where}.{name}" if where else str(name)
        rule_path = f"{key}.{name}" if key else str(name)
        rule = rule_for(rule_path, target)
        if rule is not None:
            yield shown_path, rule, value
        elif isinstance(value, Mapping):
            yield from _ruled(value, shown_path, rule_path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _ruled(item, f"{shown_path}[{i}]", f"{rule_path}[]")


# Schedulers whose shape spans the whole run (conf/scheduler option: the function it builds).
NEEDS_LENGTH = {"cosine_with_warmup": "cosine", "one_cycle": "onecycle"}


def _check_length(config: Mapping[str, Any]) -> None:
    """A scheduler laid out over all steps (or epochs) needs a run that ends."""
    trainer, scheduler = config.get("trainer"), config.get("scheduler")
    if not isinstance(trainer, Mapping) or not isinstance(scheduler, Mapping):
        return
    target = str(scheduler.get("_target_") or "").rsplit(".", 1)[-1]
    if target not in NEEDS_LENGTH:
        return
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    bounded_steps = _is_int(steps) and steps > 0
    if scheduler.get("interval", "step") == "epoch":
        # Lightning reads max_epochs=null as 1000 epochs, unless max_steps is set: then as -1.
        endless = epochs == -1 or (epochs is None and bounded_steps)
        instead = ""
    else:
        endless = epochs == -1 and not bounded_steps
        instead = ", or set trainer.max_steps"
    if endless:
        raise FtlabError(
            f"trainer.max_epochs={shown(epochs)} gives the run no end, but "
            f"scheduler={NEEDS_LENGTH[target]} spans the whole run: with it, trainer.max_epochs "
            f"must be an integer >= 1, e.g. trainer.max_epochs=10{instead} (scheduler=none and "
            "scheduler=plateau need no end)"
        )


def _check_lp_ft(config: Mapping[str, Any]) -> None:
    """LP-FT's fine-tuning starts at epoch ``lp_epochs``: the run must last longer."""
    freeze, trainer = config.get("freeze"), config.get("trainer")
    if not isinstance(freeze, Mapping) or not isinstance(trainer, Mapping):
        return
    lp_epochs, epochs = freeze.get("lp_epochs", 1), trainer.get("max_epochs")
    if freeze.get("name") == "lp_ft" and _is_int(epochs) and 0 < epochs <= lp_epochs:
        raise FtlabError(
            f"freeze.lp_epochs={lp_epochs} must be below trainer.max_epochs={epochs}, or "
            f"freeze=lp_ft never fine-tunes: e.g. trainer.max_epochs={lp_epochs + 1} "
            "(freeze=linear_probe for a probe alone)"
        )


PACKAGE_PREFIX = "package:"  # ftlab.backbones.weights: weights shipped in a pip package


def _check_weights(config: Mapping[str, Any]) -> None:
    """A weights file with ``model.pretrained=false`` would be ignored: refuse the pair.

    Packaged weights are the model config's own default (``model=efficientnet_lite0``), which
    ``strategy=scratch`` turns off with ``pretrained=false``: that is no contradiction. A Hugging
    Face model directory with ``pretrained=false`` still gives the architecture and tokenizer,
    so only a timm model, or a single file (which Hugging Face cannot read), is refused here.
    """
    model = config.get("model")
    if not isinstance(model, Mapping) or model.get("pretrained") is not False:
        return
    weights = model.get("weights")
    if not weights or not isinstance(weights, str) or weights.startswith(PACKAGE_PREFIX):
        return
    if model.get("source") == "timm" or Path(weights).expanduser().is_file():
        raise FtlabError(
            f"model.weights={weights!r} is ignored with model.pretrained=false (random init): "
            "set model.pretrained=true to load it, or model.weights=null to start from random"
        )
