"""Out-of-distribution test sets from ``data.ood``.

Each item of the list is one of:

- a named shift of the run's own test split: ``{shift: gaussian_noise, severity: 3}`` or the
  string ``gaussian_noise:3`` (severity 1..5, default 3); named ``<shift>_<severity>``;
- another data option by its ``conf/data`` name: ``{config: digits}`` or the string ``digits``;
  ``data: {...}`` beside it overrides that file's keys;
- another data config inline: ``{name: digits, data: {_target_: ftlab.data.DigitsDataModule}}``.

``name`` and ``seed`` (of a shift; default: the run's seed) are optional everywhere. Another data
option contributes its test split and must have the training data's classes in the same order.
``batch_size``, ``num_workers``, ``image_size`` and ``max_length`` follow the training data
(so that both are seen at the same resolution / length) unless the item's ``data:`` sets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ftlab.data import build_data
from ftlab.data.base import ClassificationDataModule
from ftlab.data.images import ImageDataModule
from ftlab.data.text import TextDataModule
from ftlab.errors import FtlabError
from ftlab.evaluation.shifts import (
    DEFAULT_SEVERITY,
    IMAGE_SHIFTS,
    SEVERITIES,
    TEXT_SHIFTS,
    ShiftedImages,
    shift_texts,
)
from ftlab.options import load_option
from ftlab.specs import ImageSpec, InputSpec

ITEM_KEYS = ("name", "shift", "severity", "seed", "config", "data")
SHIFTS = {**dict.fromkeys(IMAGE_SHIFTS, "image"), **dict.fromkeys(TEXT_SHIFTS, "text")}


@dataclass
class OODSet:
    """One evaluation-only test set: its name and a loader over it."""

    name: str
    loader: DataLoader


def build_ood_sets(
    items: list[Any] | None, data: ClassificationDataModule, input_spec: InputSpec, seed: int
) -> list[OODSet]:
    """The OOD sets of ``data.ood`` for the (set-up) training data; errors name the item."""
    sets: list[OODSet] = []
    for index, raw in enumerate(items or []):
        where = f"data.ood[{index}]"
        item = parse_item(raw, where)
        if "shift" in item:
            name = item.get("name") or f"{item['shift']}_{item['severity']}"
            loader = _shifted(item, where, data, input_spec, seed)
        else:
            name, loader = _other_data(item, where, data, input_spec)
        if name in {s.name for s in sets}:
            raise FtlabError(f"{where}: the name {name!r} is taken: give it another name")
        sets.append(OODSet(str(name), loader))
    return sets


def parse_item(raw: Any, where: str) -> dict[str, Any]:
    """An item as a checked mapping; a string is a shift (``name[:severity]``) or a config."""
    if isinstance(raw, str):
        head, _, severity = raw.partition(":")
        if head in SHIFTS:
            raw = {"shift": head, "severity": severity or DEFAULT_SEVERITY}
        elif severity:
            raise FtlabError(f"{where}={raw}: {head!r} is not a shift ({', '.join(SHIFTS)})")
        else:
            raw = {"config": head}
    if not isinstance(raw, Mapping):
        raise FtlabError(
            f"{where} must be a shift (gaussian_noise:3), a data option (digits) or a mapping"
        )
    item = dict(raw)
    for key in item:
        if key not in ITEM_KEYS:
            raise FtlabError(f"{where}.{key} is not an OOD key: use {', '.join(ITEM_KEYS)}")
    if "shift" in item:
        return _check_shift(item, where)
    if not item.get("config") and not item.get("data"):
        raise FtlabError(f"{where} needs a shift, a config (a conf/data option) or a data config")
    return item


def _check_shift(item: dict[str, Any], where: str) -> dict[str, Any]:
    shift = item["shift"]
    if shift not in SHIFTS:
        raise FtlabError(f"{where}.shift={shift} is unknown: use one of {', '.join(SHIFTS)}")
    if "config" in item or "data" in item:
        raise FtlabError(f"{where}: a shift applies to the run's own test set; drop config/data")
    severity = item.get("severity", DEFAULT_SEVERITY)
    if not str(severity).isdigit() or int(severity) not in SEVERITIES:
        raise FtlabError(f"{where}.severity={severity} must be an integer from 1 to 5")
    return {**item, "severity": int(severity)}


def _shifted(
    item: dict[str, Any],
    where: str,
    data: ClassificationDataModule,
    input_spec: InputSpec,
    seed: int,
) -> DataLoader:
    """A loader over the shifted copy of the training data's test split."""
    shift, severity = item["shift"], item["severity"]
    seed = int(item.get("seed", seed))
    modality = "image" if isinstance(input_spec, ImageSpec) else "text"
    if SHIFTS[shift] != modality:
        options = ", ".join(k for k, v in SHIFTS.items() if v == modality)
        raise FtlabError(
            f"{where}.shift={shift} is a {SHIFTS[shift]} shift but the backbone takes "
            f"{modality}: use one of {options}"
        )
    test = data.test_dataloader()
    if isinstance(input_spec, ImageSpec):
        dataset: Dataset = ShiftedImages(
            test.dataset, shift, severity, seed, input_spec.mean, input_spec.std
        )
    else:
        base = test.dataset
        texts = getattr(base, "texts", None)
        if not isinstance(data, TextDataModule) or texts is None:
            raise FtlabError(f"{where}.shift={shift} needs a data option built on TextDataModule")
        # Shift the raw texts, then tokenize them exactly as the clean ones were.
        dataset = data._tokenize(shift_texts(texts, shift, severity, seed), base.labels)
    return _loader_like(test, dataset)


def _loader_like(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """A loader over ``dataset`` batched and collated like ``loader``."""
    return DataLoader(
        dataset,
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def _other_data(
    item: dict[str, Any], where: str, data: ClassificationDataModule, input_spec: InputSpec
) -> tuple[str, DataLoader]:
    """``(name, test loader)`` of another data option with the training data's classes."""
    overrides = item.get("data") or {}
    if not isinstance(overrides, Mapping):
        raise FtlabError(f"{where}.data must be a data config mapping (with _target_)")
    cfg = load_option("data", item["config"], f"{where}.config") if item.get("config") else {}
    # The run's loader and input-size settings, unless the item's own data: sets them.
    cfg = {**cfg, **_shared_keys(data), **overrides}
    cfg.pop("ood", None)
    target = cfg.get("_target_")
    if not target:
        raise FtlabError(
            f"{where}.data needs a _target_ (e.g. ftlab.data.DigitsDataModule), "
            f"or set {where}.config to a conf/data option"
        )
    # e.g. ftlab.data.DigitsDataModule -> digits
    default = target.rsplit(".", 1)[-1].removesuffix("DataModule").lower()
    name = str(item.get("name") or item.get("config") or default)
    try:
        ood = build_data(cfg, input_spec)
        ood.prepare_data()
        ood.setup("test")
    except FtlabError as err:
        raise FtlabError(f"{where} ({name}): {err}") from err
    if list(ood.classes) != list(data.classes):
        raise FtlabError(
            f"{where} ({name}) has classes {list(ood.classes)[:10]} but the training data has "
            f"{list(data.classes)[:10]}: an OOD set needs the same classes in the same order"
        )
    return name, ood.test_dataloader()


def _shared_keys(data: ClassificationDataModule) -> dict[str, Any]:
    """The training data's loader and input-size settings an OOD data option inherits."""
    keys: dict[str, Any] = {"batch_size": data.batch_size, "num_workers": data.num_workers}
    if isinstance(data, ImageDataModule):
        keys["image_size"] = data.spec.size
    if isinstance(data, TextDataModule):
        keys["max_length"] = data.max_length
    return keys
