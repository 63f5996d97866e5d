"""``FreezeSpec``: the ``freeze`` config, parsed once into plain typed values.

The plan (which parameters train when), the adapters (which LoRA settings) and the feature cache
(whether head-only epochs run on cached features, and how the head is fitted) all read this one
structure; none of them interprets the raw dict. Parsing checks every key the schedule does not
accept, the switches every schedule shares, and reads a schedule file (``freeze.phases=<yaml>``)
once. The values of a schedule's own keys (``every``, ``lp_epochs``, the phases) are checked by
the plan, which knows the model's layer groups they refer to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
BN_MODES = ("frozen", "train", "eval")
# auto: L-BFGS whenever phase 0 trains the head alone on cached features; none: the optimizer.
HEAD_SOLVERS = ("auto", "lbfgs", "none")

# The keys each schedule accepts; anything else in `freeze` is an error, never ignored.
SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "linear_probe": (),
    "gradual": ("every", "step", "until"),
    "bottom_k": ("k",),
    "lp_ft": ("lp_epochs", "ft_lr_scale"),
    "lora": LORA_KEYS,
    # peft's methods by name (ftlab.adapters.peft_methods); `peft` holds the config class's keys
    "peft": ("method", "peft"),
    "bitfit": (),  # BitFit: the biases and the head train (a schedule, no adapters)
    "surgical": ("blocks",),  # Lee et al. 2023: only the named blocks (and the head) train
    "auto_rgn": ("every_n_steps",),  # all train, each group's lr scaled by its relative grad norm
    "schedule": ("phases", "lora", "peft"),
}
COMMON_KEYS = ("name", "bn", "cache_features", "head_solver")


@dataclass(frozen=True)
class FreezeSpec:
    """Which schedule, its own options, and the switches every schedule shares.

    Attributes:
        name: the schedule (a key of :data:`SCHEDULE_KEYS`).
        options: the schedule's own keys, as given (a schedule file already read into
            ``options["phases"]``).
        bn: ``frozen`` (BatchNorm of frozen layers in eval mode) or ``train``.
        cache_features: let head-only epochs train on cached backbone features.
        head_solver: ``auto``, ``lbfgs`` or ``none`` (ftlab.finetuning.features).
        lora: the LoRA settings the schedule asks for, None without LoRA.
        peft: the peft method the schedule asks for, ``{method, <peft config keys>}``, as
            given (checked against peft's config class by ftlab.adapters.peft_methods).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    bn: str = "frozen"
    cache_features: bool = True
    head_solver: str = "auto"
    lora: Mapping[str, Any] | None = None
    peft: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, freeze: FreezeSpec | Mapping[str, Any] | str) -> FreezeSpec:
        """A spec from a ``freeze`` config (a schedule name alone means its defaults)."""
        if isinstance(freeze, FreezeSpec):
            return freeze
        if isinstance(freeze, str):
            freeze = {"name": freeze}
        if not isinstance(freeze, Mapping):
            raise FtlabError(f"freeze={freeze!r} must be a schedule name or a mapping with a name")
        name = freeze.get("name")
        if name not in SCHEDULE_KEYS:
            raise FtlabError(
                f"freeze.name={name!r} is unknown: use one of {', '.join(SCHEDULE_KEYS)}"
            )
        allowed = COMMON_KEYS + SCHEDULE_KEYS[name]
        for key in freeze:
            if key not in allowed:
                raise FtlabError(
                    f"freeze.{key} is not a key of freeze={name}: its keys are {', '.join(allowed)}"
                )
        options = {k: freeze[k] for k in SCHEDULE_KEYS[name] if k in freeze}
        lora = _lora(name, options)
        peft = _peft(name, options)
        if lora is not None and peft is not None:
            raise FtlabError("freeze.lora and freeze.peft are exclusive: set one (method: lora)")
        if isinstance(options.get("phases"), str):  # a file, e.g. the schedule.yaml plan=true wrote
            options["phases"] = _phases_of(read_schedule_file(options["phases"]))
        return cls(
            name=name,
            options=options,
            bn=_choice(freeze, "bn", "frozen", BN_MODES),
            cache_features=_flag(freeze, "cache_features"),
            head_solver=_choice(freeze, "head_solver", "auto", HEAD_SOLVERS, null="none"),
            lora=lora,
            peft=peft,
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as a ``freeze`` config again (what loggers and reports record)."""
        return {
            "name": self.name,
            **self.options,
            "bn": self.bn,
            "cache_features": self.cache_features,
            "head_solver": self.head_solver,
        }

    @property
    def lora_prefix(self) -> str:
        """Where the LoRA keys sit, for messages: ``freeze.`` or ``freeze.lora.``."""
        return "freeze." if self.name == "lora" else "freeze.lora."


def _schedule_entry(options: Mapping[str, Any], key: str) -> Any:
    """``freeze.<key>`` of ``freeze=schedule``, else the same entry of its schedule file
    (``freeze.phases=<yaml>``, as ``plan=true`` writes it)."""
    value, phases = options.get(key), options.get("phases")
    if value is None and isinstance(phases, str):
        written = read_schedule_file(phases)
        value = written.get(key) if isinstance(written, Mapping) else None
    return value


def _lora(name: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The LoRA settings as given: ``freeze=lora`` holds them as its own keys (``freeze.r``),
    ``freeze=schedule`` in ``freeze.lora`` (``freeze.lora.r``) or in its schedule file."""
    if name == "lora":
        return dict(options)
    if name != "schedule":
        return None
    lora = _schedule_entry(options, "lora")
    if lora is None:
        return None
    if not isinstance(lora, Mapping):
        raise FtlabError(f"freeze.lora={lora} must be a mapping like {{r: 8, alpha: 16}} or null")
    for key in lora:
        if key not in LORA_KEYS:
            raise FtlabError(f"freeze.lora.{key} is not a LoRA key: use {', '.join(LORA_KEYS)}")
    return dict(lora)


def _peft(name: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The peft method as given: ``freeze=peft`` holds it as ``freeze.method`` and
    ``freeze.peft.<key>``, ``freeze=schedule`` as ``freeze.peft={method: ia3, <key>: ...}``."""
    if name == "peft":
        keys = options.get("peft") or {}
        if not isinstance(keys, Mapping):
            raise FtlabError(f"freeze.peft={keys} must be a mapping of peft config keys or null")
        if "method" in keys:
            raise FtlabError("freeze.peft.method: name the method as freeze.method=<method>")
        return {"method": options.get("method"), **keys}
    if name != "schedule":
        return None
    peft = _schedule_entry(options, "peft")
    if peft is None:
        return None
    if not isinstance(peft, Mapping) or "method" not in peft:
        raise FtlabError(
            f"freeze.peft={peft} must be a mapping like {{method: ia3}} (and peft config keys)"
        )
    return dict(peft)


def _choice(
    freeze: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...], null: str = ""
) -> str:
    value = freeze.get(key, default)
    value = null if value is None and null else value
    if value not in allowed:
        raise FtlabError(
            f"freeze.{key}={value!r} is unknown: use {', '.join(allowed[:-1])} or {allowed[-1]}"
        )
    return value


def _flag(freeze: Mapping[str, Any], key: str) -> bool:
    value = freeze.get(key, True)
    if not isinstance(value, bool):
        raise FtlabError(f"freeze.{key}={value} must be true or false")
    return value


def _phases_of(data: Any) -> Any:
    # Accept both a bare list and the `freeze=schedule` mapping that plan=true writes.
    return data.get("phases") if isinstance(data, Mapping) else data


def read_schedule_file(path: str) -> Any:
    """A ``freeze.phases`` YAML file's contents."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FtlabError(f"freeze.phases={path}: no such file; give a YAML file or an inline list")
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise FtlabError(f"freeze.phases={path} is not valid YAML: {err}".splitlines()[0]) from None
