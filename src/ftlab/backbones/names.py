"""Which library a model name belongs to, and suggestions for names that match none."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import timm

from ftlab.errors import FtlabError

SOURCES = ("auto", "timm", "hf")

# Suggested alongside timm's names: Hugging Face ids people commonly mean.
COMMON_HF_IDS = (
    "bert-base-uncased",
    "bert-base-cased",
    "roberta-base",
    "distilbert-base-uncased",
    "microsoft/deberta-v3-base",
    "google/vit-base-patch16-224-in21k",
    "sentence-transformers/all-MiniLM-L6-v2",
)
# owner/name, as the hub spells repository ids.
_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# timm's own prefixes for loading a timm model straight from the hub.
_TIMM_HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def is_hf_dir(name: str) -> bool:
    """A local Hugging Face model directory (has a config.json)."""
    return (Path(name).expanduser() / "config.json").is_file()


def closest_names(name: str, count: int = 5) -> list[str]:
    """The known timm and Hugging Face names most similar to ``name``."""
    return difflib.get_close_matches(name, [*timm.list_models(), *COMMON_HF_IDS], n=count)


def did_you_mean(name: str) -> str:
    """'did you mean a, b?' or '' when nothing is close."""
    close = closest_names(name)
    return f"did you mean {', '.join(close)}?" if close else ""


def unknown_name_error(name: str) -> FtlabError:
    """The error for a name that is neither a timm model nor a Hugging Face id."""
    hint = did_you_mean(name) or "no similar name found."
    return FtlabError(
        f"unknown model.name={name!r}: {hint} (any timm or Hugging Face name works; "
        "for a Hugging Face id without an owner/ prefix set model.source=hf)"
    )


def resolve_source(name: str, source: str = "auto") -> str:
    """``"timm"`` or ``"hf"`` for ``name``; ``source`` forces one unless it is ``"auto"``."""
    if source not in SOURCES:
        raise FtlabError(f"model.source={source!r} must be one of {', '.join(SOURCES)}")
    if source != "auto":
        return source
    if name.startswith(_TIMM_HUB_PREFIXES) or timm.is_model(name):
        return "timm"
    if is_hf_dir(name) or _HF_ID.match(name) or name in COMMON_HF_IDS:
        return "hf"
    raise unknown_name_error(name)
