"""The freezing plan: which parameters train in which phase, and at which learning rate.

A plan is built once, before training, from the ``freeze`` and ``optimizer`` configs and the
model's ordered layer groups (input ... head). It is plain data: every parameter is assigned the
phase that unfreezes it (or none), and every (group, phase, decay) unit gets an absolute lr.
The optimizer is built from all units up front, so no param group is ever added mid-run (that
breaks LR schedulers and resume), and the phase at any epoch is a pure function of the epoch
(so every DDP rank and every resumed run agrees on it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftlab.errors import FtlabError
from ftlab.finetuning.spec import FreezeSpec

HEAD = "head"
# The LoRA adapters' layer group (ftlab.adapters), just below the head when the model has them.
LORA = "lora"
# The same group by the name that fits every peft method (IA3, LoHa, ...): phases may use either.
ADAPTERS = "adapters"
# BitFit (Ben Zaken et al. 2022): every bias of the backbone, as a regex over parameter names.
BIASES = r"^backbone\..*\.bias$"
# A group name for every backbone layer group: the base weights, without the head and adapters.
BACKBONE = "backbone"
PHASE_KEYS = ("epoch", "groups", "lr", "lr_scale")


@dataclass(frozen=True)
class Phase:
    """One phase: from ``epoch`` on, ``groups`` (names or parameter regexes) also train."""

    epoch: int
    groups: tuple[str, ...]
    lr: float | None = None  # base lr of the groups this phase unfreezes
    lr_scale: float | None = None  # factor on the lr of groups already training

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "groups": list(self.groups)}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.lr_scale is not None:
            out["lr_scale"] = self.lr_scale
        return out


@dataclass(frozen=True)
class Unit:
    """Parameters of one layer group that one phase unfreezes, split by weight decay.

    Each unit becomes exactly one optimizer param group holding an absolute ``lr``.
    """

    group: str
    index: int  # position of the layer group: 0 = input side, depth = head
    phase: int
    decay: bool
    params: tuple[str, ...]
    numel: int
    lr: float  # at the phase's start, before any scheduler factor
    weight_decay: float

    @property
    def name(self) -> str:
        return f"{self.group}@{self.phase}{'' if self.decay else '/no_decay'}"


@dataclass(frozen=True)
class Plan:
    schedule: str
    phases: tuple[Phase, ...]
    units: tuple[Unit, ...]
    groups: tuple[str, ...]  # layer group names, input to head
    group_numel: Mapping[str, int]
    bn: str
    frozen_forever: tuple[str, ...] = field(default=())  # parameters no phase unfreezes
    lora: Mapping[str, Any] | None = None  # LoRA settings (FreezeSpec.lora) the adapters came from
    peft: Mapping[str, Any] | None = None  # the peft method (FreezeSpec.peft), as given

    def phase_at(self, epoch: int) -> int:
        """Index of the phase active at ``epoch``."""
        return max(i for i, p in enumerate(self.phases) if p.epoch <= epoch)

    def trainable(self, phase: int) -> set[str]:
        return {name for u in self.units if u.phase <= phase for name in u.params}

    def trainable_numel(self, phase: int) -> int:
        return sum(u.numel for u in self.units if u.phase <= phase)

    def lr_at(self, unit: Unit, phase: int) -> float:
        """The unit's lr at the start of ``phase`` (``lr_scale`` of later phases applied)."""
        lr = unit.lr
        for p in range(unit.phase + 1, phase + 1):
            lr *= self.phases[p].lr_scale or 1.0
        return lr

    def group_lrs(self, phase: int) -> dict[str, float]:
        """Layer group -> lr of its decayed params at ``phase`` (only groups training then)."""
        out: dict[str, float] = {}
        for u in self.units:
            if u.phase <= phase and (u.decay or u.group not in out):
                out[u.group] = self.lr_at(u, phase)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per phase: start epoch, groups it unfreezes, trainable params and each group's lr."""
        rows = []
        for i, phase in enumerate(self.phases):
            new = sorted({u.group for u in self.units if u.phase == i}, key=self.groups.index)
            rows.append(
                {
                    "phase": i,
                    "epoch": phase.epoch,
                    "unfrozen": new,
                    "trainable_params": self.trainable_numel(i),
                    "lr": self.group_lrs(i),
                }
            )
        return rows

    def to_schedule(self) -> dict[str, Any]:
        """This plan as a ``freeze=schedule`` config, for users to start from."""
        out = {"name": "schedule", "phases": [p.to_dict() for p in self.phases], "bn": self.bn}
        if self.lora is not None:
            out["lora"] = dict(self.lora)
        if self.peft is not None:
            out["peft"] = dict(self.peft)
        return out


def build_plan(
    freeze: FreezeSpec | Mapping[str, Any] | str,
    groups: Sequence[tuple[str, Sequence[str]]],
    params: Mapping[str, Any],
    optimizer: Mapping[str, Any],
    no_weight_decay: Iterable[str] = (),
    bn_params: Iterable[str] = (),
) -> Plan:
    """Validate the configs and assign every parameter a phase and an lr.

    Args:
        freeze: the parsed ``freeze`` config (or the config itself, parsed here).
        groups: ordered ``(name, parameter names)``, input to head; the last is the head.
        params: parameter name -> tensor (only ``numel`` and ``ndim`` are read).
        optimizer: the ``optimizer`` config (lr, weight_decay, layer_decay, lr_range).
        no_weight_decay: parameter names the model says must not decay.
        bn_params: parameters of BatchNorm layers (they keep training when ``bn=train``).
    """
    spec = FreezeSpec.parse(freeze)
    group_names = [g for g, _ in groups]
    if group_names[-1] != HEAD:
        raise ValueError("the last layer group must be the head")
    base_lr, factors = _discriminative(optimizer, len(groups) - 1)
    phases = _SCHEDULES[spec.name](spec.options, group_names[:-1], base_lr)
    _check_phases(phases)
    owner = _assign(phases, groups, set(params))
    if spec.bn == "train":  # fastai's train_bn: BatchNorm affine params train in every phase
        owner.update({p: 0 for p in bn_params if p in params})

    weight_decay = float(optimizer.get("weight_decay") or 0.0)
    if weight_decay < 0:
        raise FtlabError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    no_wd = set(no_weight_decay)
    units = []
    for index, (group, names) in enumerate(groups):
        buckets: dict[tuple[int, bool], list[str]] = {}
        for pname in names:
            if pname in owner:
                # Norms, biases and the model's own list don't decay (nanoGPT's 1-D rule).
                decay = getattr(params[pname], "ndim", 2) > 1 and pname not in no_wd
                buckets.setdefault((owner[pname], decay), []).append(pname)
        for (phase, decay), pnames in sorted(
            buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])
        ):
            phase_lr = phases[phase].lr if phases[phase].lr is not None else base_lr
            units.append(
                Unit(
                    group=group,
                    index=index,
                    phase=phase,
                    decay=decay,
                    params=tuple(pnames),
                    numel=sum(int(params[p].numel()) for p in pnames),
                    lr=phase_lr * factors[index],
                    weight_decay=weight_decay if decay else 0.0,
                )
            )
    return Plan(
        schedule=spec.name,
        phases=tuple(phases),
        units=tuple(units),
        groups=tuple(group_names),
        group_numel={g: sum(int(params[p].numel()) for p in names) for g, names in groups},
        bn=spec.bn,
        frozen_forever=tuple(p for p in params if p not in owner),
        lora=spec.lora,
        peft=spec.peft,
    )


# --- discriminative learning rates -------------------------------------------------------------


def _discriminative(optimizer: Mapping[str, Any], depth: int) -> tuple[float, list[float]]:
    """The head's lr and each group's factor on it (group 0 = input, group ``depth`` = head)."""
    lr = optimizer.get("lr")
    if not isinstance(lr, int | float) or lr <= 0:
        raise FtlabError(f"optimizer.lr={lr} must be a number > 0, e.g. optimizer.lr=3e-4")
    decay, lr_range = optimizer.get("layer_decay"), optimizer.get("lr_range")
    if decay is not None and lr_range is not None:
        raise FtlabError("optimizer.layer_decay and optimizer.lr_range are exclusive: set one")
    if decay is not None:
        if not 0 < decay <= 1:
            raise FtlabError(f"optimizer.layer_decay={decay} must be in (0, 1], e.g. 0.75")
        return float(lr), [decay ** (depth - i) for i in range(depth + 1)]
    if lr_range is not None:
        lo, hi = _lr_range(lr_range)
        # fastai's slice: geometric from lo (input group) to hi (head); hi replaces optimizer.lr.
        return hi, [(lo / hi) ** ((depth - i) / depth) if depth else 1.0 for i in range(depth + 1)]
    return float(lr), [1.0] * (depth + 1)


def _lr_range(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise FtlabError(
            f"optimizer.lr_range={value} must be two numbers [lo, hi], e.g. [1e-5,1e-3]"
        ) from None
    if not 0 < lo <= hi:
        raise FtlabError(f"optimizer.lr_range=[{lo}, {hi}] needs 0 < lo <= hi")
    return lo, hi


# --- built-in schedules ------------------------------------------------------------------------


def _positive_int(freeze: Mapping[str, Any], key: str, default: int) -> int:
    value = freeze.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FtlabError(f"freeze.{key}={value} must be an integer >= 1")
    return value


def _none(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    return [Phase(0, (*backbone, HEAD))]


def _linear_probe(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    return [Phase(0, (HEAD,))]


def _gradual(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    every = _positive_int(freeze, "every", 1)
    step = _positive_int(freeze, "step", 1)
    until = freeze.get("until")
    if until is None:
        count = len(backbone)
    elif isinstance(until, str):
        if until not in backbone:
            raise FtlabError(
                f"freeze.until={until!r} is not a layer group: use a count or one of "
                f"{_short(backbone)}"
            )
        count = len(backbone) - backbone.index(until)
    elif isinstance(until, int) and not isinstance(until, bool) and 0 <= until <= len(backbone):
        count = until
    else:
        raise FtlabError(
            f"freeze.until={until} must be between 0 and the {len(backbone)} backbone groups"
        )
    top_down = backbone[::-1][:count]
    phases = [Phase(0, (HEAD,))]
    for j, start in enumerate(range(0, count, step), start=1):
        phases.append(Phase(j * every, tuple(top_down[start : start + step])))
    return phases


def _bottom_k(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    k = freeze.get("k", 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(backbone):
        raise FtlabError(
            f"freeze.k={k} must be between 0 and the number of backbone groups ({len(backbone)})"
        )
    return [Phase(0, (*backbone[k:], HEAD))]


def _lp_ft(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    lp_epochs = _positive_int(freeze, "lp_epochs", 1)
    scale = freeze.get("ft_lr_scale", 1.0)
    if not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise FtlabError(f"freeze.ft_lr_scale={scale} must be in (0, 1], e.g. 0.1")
    return [
        Phase(0, (HEAD,)),
        Phase(lp_epochs, tuple(backbone), lr=lr * scale, lr_scale=float(scale)),
    ]


def _lora(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    if LORA not in backbone:
        raise FtlabError("freeze=lora: the model has no LoRA adapters (see ftlab.adapters)")
    return [Phase(0, (LORA, HEAD))]


def _peft(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    if LORA not in backbone:
        raise FtlabError("freeze=peft: the model has no peft adapters (see ftlab.adapters)")
    return [Phase(0, (LORA, HEAD))]


def _bitfit(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    return [Phase(0, (BIASES, HEAD))]


# Surgical fine-tuning names blocks by position too: the paper's "first", "middle", "last".
POSITIONS = ("first", "middle", "last")


def _surgical(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    """Surgical fine-tuning (Lee et al. 2023): only ``freeze.blocks`` and the head train."""
    blocks = freeze.get("blocks")
    if isinstance(blocks, str | int):  # freeze.blocks=last: one block without brackets
        blocks = [blocks]
    if not isinstance(blocks, Sequence) or not blocks:
        raise FtlabError(
            f"freeze.blocks={blocks} must be a non-empty list of layer groups, positions "
            f"({', '.join(POSITIONS)}) or indices, e.g. freeze.blocks=[first]"
        )
    chosen = [_block(b, backbone) for b in blocks]
    if len(set(chosen)) < len(chosen):
        raise FtlabError(f"freeze.blocks={list(blocks)} names a layer group twice: name it once")
    return [Phase(0, (*sorted(chosen, key=backbone.index), HEAD))]


def _block(block: Any, backbone: list[str]) -> str:
    """A layer group's name from its name, position word or index (negative from the top)."""
    if isinstance(block, int) and not isinstance(block, bool):
        if not -len(backbone) <= block < len(backbone):
            raise FtlabError(
                f"freeze.blocks: index {block} is out of range: the backbone has "
                f"{len(backbone)} layer groups (0 .. {len(backbone) - 1}, or -1 for the last)"
            )
        return backbone[block]
    positions = dict(zip(POSITIONS, (0, len(backbone) // 2, -1), strict=True))
    if block in positions:
        return backbone[positions[block]]
    if block not in backbone:
        hint = " (the head always trains)" if block == HEAD else ""
        raise FtlabError(
            f"freeze.blocks: {block!r} is not a backbone layer group{hint}: use "
            f"{', '.join(POSITIONS)}, an index or one of {_short(backbone)}"
        )
    return block


def _auto_rgn(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    # Everything trains; ftlab.finetuning.auto_rgn.AutoRGN scales each group's lr as it goes.
    _positive_int(freeze, "every_n_steps", 1)  # checked here, before the first step
    return [Phase(0, (*backbone, HEAD))]


def _explicit(freeze: Mapping[str, Any], backbone: list[str], lr: float) -> list[Phase]:
    raw = freeze.get("phases")  # a schedule file was read by FreezeSpec.parse
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise FtlabError("freeze.phases must be a non-empty list of {epoch, groups, lr} phases")
    phases = []
    for i, item in enumerate(raw):
        where = f"freeze.phases[{i}]"
        if not isinstance(item, Mapping):
            raise FtlabError(f"{where} must be a mapping like {{epoch: 0, groups: [head]}}")
        for key in item:
            if key not in PHASE_KEYS:
                raise FtlabError(f"{where}.{key} is not a phase key: use {', '.join(PHASE_KEYS)}")
        epoch, names = item.get("epoch"), item.get("groups")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise FtlabError(f"{where}.epoch={epoch} must be an integer >= 0")
        if isinstance(names, str):
            names = [names]
        if not names or not all(isinstance(n, str) for n in names):
            raise FtlabError(f"{where}.groups must be a non-empty list of group names or regexes")
        for key in ("lr", "lr_scale"):
            value = item.get(key)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise FtlabError(f"{where}.{key}={value} must be a number > 0")
        lr_value, scale = item.get("lr"), item.get("lr_scale")
        phases.append(
            Phase(
                epoch,
                tuple(names),
                None if lr_value is None else float(lr_value),
                None if scale is None else float(scale),
            )
        )
    return phases


_SCHEDULES = {
    "none": _none,
    "linear_probe": _linear_probe,
    "gradual": _gradual,
    "bottom_k": _bottom_k,
    "lp_ft": _lp_ft,
    "lora": _lora,
    "peft": _peft,
    "bitfit": _bitfit,
    "surgical": _surgical,
    "auto_rgn": _auto_rgn,
    "schedule": _explicit,
}


# --- validation and resolution -----------------------------------------------------------------


def _check_phases(phases: Sequence[Phase]) -> None:
    if phases[0].epoch != 0:
        raise FtlabError(
            f"freeze.phases[0].epoch={phases[0].epoch}: the first phase must start at epoch 0"
        )
    for i in range(1, len(phases)):
        if phases[i].epoch <= phases[i - 1].epoch:
            raise FtlabError(
                f"freeze.phases[{i}].epoch={phases[i].epoch} must be greater than "
                f"phases[{i - 1}].epoch={phases[i - 1].epoch}: epochs must increase"
            )
    if phases[0].lr_scale is not None:
        raise FtlabError("freeze.phases[0].lr_scale: nothing trains before phase 0; use lr")


def _assign(
    phases: Sequence[Phase], groups: Sequence[tuple[str, Sequence[str]]], params: set[str]
) -> dict[str, int]:
    """Parameter name -> index of the phase that unfreezes it; errors name the phase."""
    by_group = {g: list(names) for g, names in groups}
    by_group.setdefault(
        BACKBONE, [p for g, names in groups if g not in (HEAD, LORA) for p in names]
    )
    if LORA in by_group:
        by_group.setdefault(ADAPTERS, by_group[LORA])
    adapters = set(by_group.get(LORA, ()))
    owner: dict[str, int] = {}
    for i, phase in enumerate(phases):
        for pattern in phase.groups:
            matched = by_group.get(pattern) or _regex_match(pattern, params, i)
            if not matched:
                raise FtlabError(
                    f"freeze.phases[{i}]: {pattern!r} matches no layer group or parameter "
                    f"(groups: {_short(list(by_group))}; python train.py ... plan=true lists them)"
                )
            for pname in matched:
                if pname in owner and owner[pname] != i:
                    hint = f" (the group {BACKBONE!r} is the base weights without the adapters)"
                    raise FtlabError(
                        f"freeze.phases[{i}]: {pattern!r} unfreezes {pname}, which "
                        f"freeze.phases[{owner[pname]}] already unfreezes: a parameter belongs "
                        f"to one phase{hint if pname in adapters else ''}"
                    )
                owner[pname] = i
    # New modules (the head, LoRA adapters) train from the start unless a phase places them.
    for new in (HEAD, LORA):
        names = by_group.get(new, [])
        if not any(p in owner for p in names):
            owner.update(dict.fromkeys(names, 0))
    return owner


def _regex_match(pattern: str, params: set[str], phase: int) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise FtlabError(
            f"freeze.phases[{phase}]: {pattern!r} is not a valid regex: {err}"
        ) from None
    return sorted(p for p in params if regex.search(p))


def _short(names: list[str], n: int = 8) -> str:
    if len(names) <= n:
        return ", ".join(names)
    return ", ".join(names[: n // 2]) + ", ..., " + ", ".join(names[-n // 2 :])
