"""``model.init_from``: start a new run from another run's fine-tuned weights (two-stage studies).

Unlike ``ckpt_path`` (resume: the same run, its optimizer, schedule and epoch counter), this
loads only weights into a freshly built module: the backbone always, the head when the source
run had the same classes (and a head of the same shape); otherwise the new head stays and the
log says so. The checkpoint is read through :func:`ftlab.checkpoints.load_checkpoint` (tensors
only, its record parsed: a file never chooses what code runs) and must hold the same
architecture, checked key for key and shape for shape before anything is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftlab.checkpoints import load_checkpoint, state_differences
from ftlab.errors import FtlabError
from ftlab.module import FinetuneModule

log = logging.getLogger("ftlab")

KEY = "model.init_from"


def start_from(module: FinetuneModule, path: str, key: str = KEY) -> dict[str, Any]:
    """Load the checkpoint's backbone (and head, when the classes match) into ``module``.

    Returns what metrics.json records under ``init_from``: the file, its model, and whether the
    head was loaded or is new. Raises :class:`FtlabError` in one line for a checkpoint of
    another architecture.
    """
    ckpt = load_checkpoint(path, key=key)
    theirs, ours = ckpt["ftlab"], module.record
    if ours is None:
        raise FtlabError(
            f"{key}: this run's backbone was not built by ftlab, so it cannot be matched"
        )
    if theirs.label != ours.label:
        raise FtlabError(
            f"{key}={path} holds a {theirs.label} model, this run builds {ours.label}: give a "
            f"{ours.label} checkpoint, or model.name={theirs.label}"
        )
    state, expected = ckpt["state_dict"], module.state_dict()
    backbone, head = _part(state, "backbone."), _part(state, "head.")
    differences = state_differences(backbone, _part(expected, "backbone."))
    if differences:
        raise FtlabError(
            f"{key}={path} ({theirs.label}) does not fit this run's backbone: {differences}; "
            "start from a checkpoint trained with the same model.* and adapter settings"
        )
    same_classes = list(theirs.classes) == list(ours.classes)
    head_fits = same_classes and not state_differences(head, _part(expected, "head."))
    # The rest of the module (a new head) keeps its fresh initialization.
    module.load_state_dict({**backbone, **(head if head_fits else {})}, strict=False)
    if not head_fits:
        why = "classes differ" if not same_classes else "its head has another shape"
        log.info("%s: %s loaded, with a new head (%s)", key, theirs.label, why)
    else:
        log.info("%s: %s loaded, backbone and head", key, theirs.label)
    return {
        "path": str(Path(path).expanduser().resolve()),
        "model": theirs.label,
        "classes": len(theirs.classes),
        "head": "loaded" if head_fits else "new",
    }


def _part(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}
