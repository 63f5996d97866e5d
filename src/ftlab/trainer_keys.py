"""Every ``lightning.Trainer`` keyword a known key of the ``trainer`` config group.

``conf/trainer/default.yaml`` starts from ``trainer/lightning``, a node this module stores in
Hydra's ConfigStore when ``ftlab.cli`` is imported: one key per keyword of
``lightning.Trainer.__init__`` at Lightning's own default. So ``trainer.val_check_interval=0.5``
needs no ``+``, and a new Lightning's new keywords are keys as soon as it is installed.

The keywords are read from Lightning's source with :mod:`ast`, not from
``inspect.signature(lightning.Trainer)``: importing Lightning imports torch (seconds), and
composing a config (``python train.py --cfg job``) must not. Parsing the file takes ~15 ms;
``tests/test_trainer_keys.py`` holds the result equal to ``inspect.signature``.

A key that is no keyword is answered in one line naming the closest one (:func:`check_overrides`
for the command line, before Hydra composes; :func:`check_trainer_keys` for the composed config,
which sees ``+trainer.x=`` and a user's own files too).
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError

TRAINER_SOURCE = ("lightning", "pytorch/trainer/trainer.py")  # package, file inside it
TARGETS = ("lightning.Trainer", "lightning.pytorch.Trainer")  # nodes whose keys are checked
SCHEMA = "lightning"  # conf/trainer/default.yaml's first default: trainer/lightning
# Keywords ftlab passes to the Trainer itself (ftlab.train, ftlab.evaluate): a config value
# would be overridden without a word, so they are no keys; the message says where they come from.
SET_BY_FTLAB = {
    "callbacks": "add one with +callbacks.<name>._target_=pkg.Class (the callbacks group)",
    "logger": "choose loggers with logger=csv|tensorboard|wandb|none or logger=[csv,wandb]",
    "plugins": "ftlab passes its atomic checkpoint writer there",
    "enable_progress_bar": "ftlab draws a bar in a terminal and logs progress lines elsewhere",
}


@functools.cache
def trainer_keywords() -> dict[str, Any]:
    """``{keyword: default}`` of ``lightning.Trainer.__init__``, read from its source file.

    Empty when Lightning is not installed. A keyword whose default is no literal (none is in
    Lightning 2.x) is left out rather than given a default that is not Lightning's.
    """
    package, relative = TRAINER_SOURCE
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(next(iter(spec.submodule_search_locations))) / relative
    init = _init_of(ast.parse(source.read_text(), str(source)), "Trainer")
    if init is None:
        return {}
    args = init.args
    positional = args.posonlyargs + args.args
    defaulted = positional[len(positional) - len(args.defaults) :]
    pairs = list(zip(defaulted, args.defaults, strict=True))
    # kw_defaults holds None for a keyword-only argument without a default.
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d]
    keywords = {}
    for arg, default in pairs:
        try:
            keywords[arg.arg] = ast.literal_eval(default)
        except ValueError:
            continue
    return keywords


def _init_of(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return item
    return None


def known_keys() -> dict[str, Any]:
    """The ``trainer/lightning`` node: every keyword but those ftlab passes, at its default."""
    return {k: v for k, v in trainer_keywords().items() if k not in SET_BY_FTLAB}


def register() -> None:
    """Store ``trainer/lightning`` in Hydra's ConfigStore (``conf/trainer/default.yaml``'s base).

    Its ``_target_`` makes ``trainer=lightning`` a config of its own: Lightning's defaults.
    """
    from hydra.core.config_store import ConfigStore

    node = {"_target_": TARGETS[0], **known_keys()}
    ConfigStore.instance().store(group="trainer", name=SCHEMA, node=node, provider="ftlab")


def unknown_key(key: str) -> str:
    """One line for ``trainer.<key>``, which is no key: what to use instead."""
    if key in SET_BY_FTLAB:
        return f"trainer.{key} is set by ftlab, not by the trainer config: {SET_BY_FTLAB[key]}"
    close = difflib.get_close_matches(key, list(known_keys()), n=1)
    hint = f"did you mean trainer.{close[0]}?" if close else "see lightning.Trainer's arguments"
    return f"trainer.{key} is not a lightning.Trainer keyword: {hint}"


def check_overrides(args: Sequence[str]) -> None:
    """Command-line overrides of ``trainer.<key>``, checked before Hydra composes.

    Hydra would answer a misspelled key with four lines ending in "use +trainer...", which would
    then reach Lightning as an unexpected keyword; and ``+`` on a key that exists now fails.
    """
    keywords = known_keys()
    if not keywords:
        return
    for arg in args:
        key, sep, _ = arg.partition("=")
        plus = key.startswith("+") and not key.startswith("++")
        name = key.lstrip("+")
        if not sep or arg.startswith("-") or not name.startswith("trainer."):
            continue
        first = name.split(".")[1]
        if plus and first in keywords and "." not in name[len("trainer.") :]:
            raise FtlabError(
                f"{arg}: trainer.{first} is a known key (every lightning.Trainer keyword is): "
                f"drop the +, e.g. {arg[1:]}"
            )
        if not key.startswith("+") and first not in keywords:
            raise FtlabError(unknown_key(first))


def check_trainer_keys(config: Mapping[str, Any]) -> None:
    """Every key of a composed Lightning ``trainer`` node is one of Lightning's keywords."""
    trainer = config.get("trainer")
    if not isinstance(trainer, Mapping) or trainer.get("_target_") not in TARGETS:
        return  # no trainer, or a user's own Trainer class with its own keywords
    keywords = known_keys()
    for key in trainer:
        if keywords and not str(key).startswith("_") and key not in keywords:
            raise FtlabError(unknown_key(str(key)))
