"""A misspelled option or key on the command line, in any config group: one line with the
closest valid name, instead of Hydra's multi-line text.

``model=test_cn`` -> ``model=test_cn is not a model option: did you mean model=test_cnn?``;
``data.batchsize=8`` -> ``data.batchsize is not a key of data=digits: did you mean
data.batch_size?``. (``trainer.<key>`` is ftlab.trainer_keys's, against Lightning's keywords.)

Run before Hydra composes, and before torch is imported. A cheap look at ftlab's own conf tree
finds what may be wrong (an option file that is not there, a key that no option of the group
has); only then is the config composed once to confirm it with Hydra itself, so an option or
key from a user's own search path is never refused, and a valid command costs nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError


def check_overrides(config_dir: str, config_name: str, args: Sequence[str]) -> None:
    """Raise one line for the first override of ``args`` that Hydra would refuse as an unknown
    option or key."""
    # A conf folder of the user's own (--config-dir, hydra.searchpath) adds options and keys
    # this look cannot see without composing like Hydra; Hydra's own message applies there.
    own_conf = ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath")
    if any(a.startswith(own_conf) for a in args):
        return
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    suspect = next((o for o in overrides if _suspicious(Path(config_dir), config_name, o)), None)
    if suspect is None:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                compose(config_name, overrides=overrides)
                return  # Hydra accepts it (a user's own option or key): not ours to refuse
            except MissingConfigException as err:
                group, _, value = suspect.partition("=")
                options = sorted(err.options or _options(Path(config_dir), group))
                picked = [v.strip() for v in value.strip("[]").split(",")]
                option = next((v for v in picked if v not in options), value)
                raise FtlabError(_unknown_option(group, option, options)) from None
            except ConfigCompositionException as err:
                key = suspect.partition("=")[0]
                if f"'{key}'" not in str(err):
                    return  # another problem: Hydra's own message says it
                others = [o for o in overrides if o != suspect]
                cfg = compose(config_name, overrides=others, return_hydra_config=True)
                raise FtlabError(unknown_key(key, cfg)) from None
    finally:
        GlobalHydra.instance().clear()


def _suspicious(conf: Path, config_name: str, override: str) -> bool:
    key, _, value = override.partition("=")
    if key.startswith(("+", "~", "hydra.", "hydra/")) or key.startswith("trainer."):
        return False
    if "(" in value:  # a sweep: choice(...), interval(...), glob(...); the sweeper checks keys
        return False
    group = key.split("@")[0]
    if (conf / group).is_dir():  # model=..., data=..., hydra/launcher=...
        picked = [v.strip() for v in value.strip("[]").split(",")] if value else []
        known = set(_options(conf, group))
        return any(v and v != "null" and v not in known for v in picked)
    head, _, rest = key.partition(".")
    if not rest:
        return key not in _yaml(conf / f"{config_name}.yaml")
    if not (conf / head).is_dir():  # a top-level node: faults.check_every, wise_ft.alphas
        node = _yaml(conf / f"{config_name}.yaml").get(head)
        return isinstance(node, Mapping) and not _has(node, rest.split("."))
    # A key no option of the group has (options may differ in keys: the union is lenient).
    return not any(_has(_yaml(p), rest.split(".")) for p in (conf / head).glob("*.yaml"))


def _has(node: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_option(group: str, option: str, options: Sequence[str]) -> str:
    close = _closest(option, options)
    hint = f"did you mean {group}={close}?" if close else f"use one of {', '.join(options)}"
    return f"{group}={option} is not a {group} option: {hint}"


def unknown_key(key: str, cfg: Any) -> str:
    """``key`` is not in the composed config (without it): the closest key at its level."""
    parts = key.split(".")
    node, where = cfg, []
    for part in parts[:-1]:
        if part not in node:
            break
        node, where = node[part], [*where, part]
    missing = parts[len(where)]
    keys = [str(k) for k in node] if hasattr(node, "keys") else []
    prefix = ".".join(where)
    choice = (
        cfg.get("hydra", {}).get("runtime", {}).get("choices", {}).get(prefix) if where else None
    )
    owner = f"{prefix}={choice}" if choice else (prefix or "the config")
    close = _closest(missing, keys)
    name = f"{prefix}.{close}" if prefix and close else close
    hint = f"did you mean {name}?" if close else f"its keys are {', '.join(sorted(keys)[:12])}"
    return f"{key} is not a key of {owner}: {hint}"
