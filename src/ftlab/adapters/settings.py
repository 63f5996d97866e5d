"""Adapter settings as a file holds them (a checkpoint's record, an adapter directory's
config): checked, plain values. Below both adapter kinds and the record that names them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ftlab.errors import FtlabError

MODULE_NAME = re.compile(r"[A-Za-z0-9_.]{1,300}")  # a LoRA target, e.g. blocks.0.attn.qkv


def parse_lora(lora: Any, where: str, at: str = "ftlab.lora") -> dict[str, Any] | None:
    """LoRA settings from a file (a record, or an adapter directory's config), checked."""
    if lora is None:
        return None
    if not isinstance(lora, Mapping):
        raise FtlabError(f"{where}: {at} must be null or a mapping of LoRA settings")
    _known_keys(lora, ("r", "alpha", "dropout", "target_modules"), where, at)
    r, alpha, dropout, targets = (lora.get(k) for k in ("r", "alpha", "dropout", "target_modules"))
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 4096):
        raise FtlabError(f"{where}: {at}.r={r!r} must be an integer in [1, 4096]")
    if not (_is_number(alpha) and alpha > 0) or not (_is_number(dropout) and 0 <= dropout < 1):
        raise FtlabError(f"{where}: {at}.alpha must be > 0 and {at}.dropout in [0, 1)")
    if not (
        isinstance(targets, list)
        and targets
        and all(isinstance(t, str) and MODULE_NAME.fullmatch(t) for t in targets)
    ):
        raise FtlabError(f"{where}: {at}.target_modules must be a list of module names")
    return {"r": r, "alpha": float(alpha), "dropout": float(dropout), "target_modules": targets}


def _known_keys(value: Mapping[str, Any], known: tuple[str, ...], where: str, at: str) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise FtlabError(
            f"{where}: {at} has unknown keys {unknown}; ftlab reads only {', '.join(known)}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
