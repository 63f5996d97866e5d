"""Layer groups: a backbone's parameters split into ordered blocks, input to output.

Fine-tuning strategies (gradual unfreezing, layer-wise learning-rate decay) act on
these groups, so every parameter is in exactly one group and the names are stable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn


@dataclass(frozen=True)
class LayerGroup:
    """One block of parameters; ``param_names`` are as in ``backbone.named_parameters()``."""

    name: str
    param_names: tuple[str, ...]


# A rule maps a parameter name to a group name: (regex, template for re.Match.expand).
Rule = tuple[str, str]

_EMBEDDINGS: Rule = (r"^embeddings\.", "embeddings")
# A numbered layer, named by its module path: encoder.layer.N (BERT), transformer.layer.N
# (DistilBERT), layers.N (ViT in transformers 5).
_LAYERS: Rule = (r"^(.*?\blayers?\.\d+)\.", r"\1")
# DeBERTa's relative position embeddings and their LayerNorm feed every layer, so they
# belong with the input embeddings rather than after the last layer.
_RELATIVE_EMBEDDINGS: Rule = (r"^encoder\.(rel_embeddings|LayerNorm)\.", "embeddings")

# Per-family tables for Hugging Face models, keyed by ``config.model_type``.
_BERT_LIKE: tuple[Rule, ...] = (_EMBEDDINGS, _LAYERS)
_DEBERTA_LIKE: tuple[Rule, ...] = (_EMBEDDINGS, _RELATIVE_EMBEDDINGS, _LAYERS)
_VIT: tuple[Rule, ...] = (_EMBEDDINGS, _LAYERS, (r"^layernorm\.", "layernorm"))
HF_GROUP_RULES: dict[str, tuple[Rule, ...]] = {
    "bert": _BERT_LIKE,  # also MiniLM sentence-transformers
    "distilbert": _BERT_LIKE,
    "roberta": _DEBERTA_LIKE,
    "xlm-roberta": _DEBERTA_LIKE,
    "camembert": _DEBERTA_LIKE,
    "deberta": _DEBERTA_LIKE,
    "deberta-v2": _DEBERTA_LIKE,
    "vit": _VIT,
}
# Unknown families: numbered layers where there are any.
_FALLBACK: tuple[Rule, ...] = (_LAYERS,)
# Whatever no rule matches: one group per top-level child module (or root parameter).
_TOP_LEVEL: Rule = (r"^([^.]+)", r"\1")


def _module_prefix(params: Sequence[str]) -> str:
    """Longest dotted module path shared by all ``params`` ('' if none)."""
    # commonpath compares whole components; a root parameter (cls_token) is its own path.
    paths = ["/".join(p.split(".")[:-1]) or p for p in params]
    return os.path.commonpath(paths).replace("/", ".")


def _under(params: Iterable[str], path: str) -> list[str]:
    """The parameters of module ``path`` (or the root parameter called ``path``)."""
    return [p for p in params if p == path or p.startswith(path + ".")]


def _describe(params: Sequence[str], every: Sequence[str]) -> str:
    """The module path holding exactly ``params``, else the paths of its pieces joined by '+'.

    ``blocks.3``; ``blocks.5+norm`` (timm merges the final norm into the last block);
    ``stages.1.downsample+stages.1.blocks.0`` (part of a stage).
    """
    prefix = _module_prefix(params)
    if prefix and set(_under(every, prefix)) <= set(params):
        return prefix
    depth = len(prefix.split(".")) + 1 if prefix else 1
    pieces = dict.fromkeys(".".join(p.split(".")[:depth]) for p in params)
    return "+".join(_module_prefix(_under(params, piece)) for piece in pieces)


def _make_groups(named: Iterable[tuple[str, list[str]]], prefix: str) -> list[LayerGroup]:
    """Build LayerGroups, adding ``prefix`` to parameter names and keeping names unique."""
    groups: list[LayerGroup] = []
    seen: set[str] = set()
    for name, params in named:
        unique = name if name not in seen else f"{name}#{len(groups)}"
        seen.add(unique)
        groups.append(LayerGroup(unique, tuple(prefix + p for p in params)))
    return groups


def _by_rules(names: Sequence[str], rules: Sequence[Rule]) -> list[tuple[str, list[str]]]:
    """Group by the first matching rule, else by top-level child; in order of first appearance."""
    compiled = [(re.compile(pattern), template) for pattern, template in (*rules, _TOP_LEVEL)]
    grouped: dict[str, list[str]] = {}  # insertion order = order of first appearance
    for name in names:
        match, template = next((m, t) for r, t in compiled if (m := r.match(name)))
        grouped.setdefault(match.expand(template), []).append(name)
    return list(grouped.items())


def timm_layer_groups(model: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Groups from the timm model's own fine-grained ``group_matcher``.

    timm sorts parameters by the matcher's ordinals and puts unmatched ones (head) last; it
    also merges a final norm into the last block on purpose, which the name shows
    (``blocks.5+norm``). The first group is the stem (timm's first matcher key).
    """
    try:
        matcher = model.group_matcher(coarse=False)
    except (AttributeError, NotImplementedError):
        names = [n for n, _ in model.named_parameters()]
        return _make_groups(_by_rules(names, ()), prefix)
    grouped = group_parameters(model, matcher)
    every = [n for n, _ in model.named_parameters()]
    named = []
    for index, (_, params) in enumerate(sorted(grouped.items())):
        name = _describe(params, every)
        if index == 0 and not _module_prefix(params):
            name = "stem"  # e.g. cls_token+pos_embed+patch_embed, conv1+bn1
        named.append((name, params))
    return _make_groups(named, prefix)


def hf_layer_groups(model: nn.Module, model_type: str, prefix: str = "") -> list[LayerGroup]:
    """Groups for a Hugging Face model from its family's table (or a generic fallback)."""
    names = [n for n, _ in model.named_parameters()]
    # Unknown families fall back to numbered layers, then to top-level children.
    rules = HF_GROUP_RULES.get(model_type, _FALLBACK)
    return _make_groups(_by_rules(names, rules), prefix)
