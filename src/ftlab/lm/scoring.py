"""Scores of a generation against its reference answer."""

from __future__ import annotations

import functools
from typing import Any


def normalize(text: str) -> str:
    """Case and surrounding whitespace and punctuation ignored; inner spaces collapsed."""
    return " ".join(text.strip().strip(".!?,;:").casefold().split())


def exact_match(generation: str, reference: str) -> float:
    return float(normalize(generation) == normalize(reference))


@functools.cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(generation: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004) by the rouge-score package."""
    return float(_scorer().score(reference, generation)["rougeL"].fmeasure)
