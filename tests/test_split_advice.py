"""Fraction advice on tiny data states the smallest data that works, once, and that advice
holds: a class of that many samples gives three non-empty splits at the same fractions."""

from __future__ import annotations

import numpy as np
import pytest

from ftlab.data.splits import Fractions, smallest_class, stratified_split
from ftlab.errors import FtlabError

CASES = {
    "3-row csv, defaults": (np.array([0, 1, 2]), Fractions(0.15, 0.15)),
    "3 rows, one class": (np.array([0, 0, 0]), Fractions(0.15, 0.15)),
    "3 rows, val raised": (np.array([0, 1, 2]), Fractions(0.6, 0.15)),
    "big fractions": (np.array([0, 0, 1, 1]), Fractions(0.45, 0.45)),
}


@pytest.mark.parametrize("labels, fractions", CASES.values(), ids=CASES)
def test_tiny_data_states_the_smallest_data_that_works_and_it_works(labels, fractions):
    with pytest.raises(FtlabError) as refused:
        stratified_split(labels, fractions, seed=0)
    need = smallest_class(fractions)
    assert f"the smallest data that works has a class of {need} samples" in str(refused.value)
    assert "raise it" not in str(refused.value)  # the advice that went in a circle
    parts = stratified_split(np.zeros(need, dtype=int), fractions, seed=0)
    assert all(len(p) > 0 for p in parts.values()), parts
    if need > 1:  # and one sample fewer does not work: it is the smallest
        with pytest.raises(FtlabError):
            stratified_split(np.zeros(need - 1, dtype=int), fractions, seed=0)
