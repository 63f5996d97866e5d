"""Seeded, reproducible train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab.errors import FtlabError


def check_fraction(key: str, value: float) -> float:
    """Validate a split fraction given as ``data.<key>``; it must lie strictly in (0, 1)."""
    if not 0.0 < float(value) < 1.0:
        raise FtlabError(f"data.{key}={value} must be between 0 and 1 (exclusive): e.g. 0.15")
    return float(value)


@dataclass(frozen=True)
class Fractions:
    """Shares of one source that go to validation and test; 0 where a split comes from
    elsewhere (its own folder or file)."""

    val: float
    test: float

    @classmethod
    def from_keys(
        cls,
        val_fraction: float,
        test_fraction: float,
        val_elsewhere: bool = False,
        test_elsewhere: bool = False,
    ) -> Fractions:
        """Validate ``data.val_fraction`` / ``data.test_fraction`` where they apply."""
        val = 0.0 if val_elsewhere else check_fraction("val_fraction", val_fraction)
        test = 0.0 if test_elsewhere else check_fraction("test_fraction", test_fraction)
        if val + test >= 1.0:
            raise FtlabError(
                f"data.val_fraction={val} + data.test_fraction={test} leave no training data: "
                "keep their sum below 1"
            )
        return cls(val, test)


def stratified_split(labels: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
    """Split positions ``0..len(labels)-1`` per class into train/val/test index arrays.

    Each class contributes ``round(n * fraction)`` items to val and test, so every split keeps
    the class balance. A part whose fraction is 0 is left out. The result depends only on
    ``labels``, ``fractions`` and ``seed``.
    """
    val_fraction, test_fraction = fractions.val, fractions.test
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(members) * val_fraction)
        n_test = round(len(members) * test_fraction)
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    result = {"train": np.sort(np.concatenate(parts["train"]))}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction == 0:
            continue
        result[name] = np.sort(np.concatenate(parts[name]))
    for name, part in result.items():
        if len(part) == 0:
            raise FtlabError(too_small(name, labels, fractions))
    return result


def too_small(split: str, labels: np.ndarray, fractions: Fractions) -> str:
    """Why ``split`` came out empty, and the smallest data that works, stated once.

    Raising a fraction is no general fix: each class gives a split round(n * fraction) of its n
    samples, and on tiny data a larger val share empties test or train instead.
    """
    counts = np.unique(labels, return_counts=True)[1] if len(labels) else np.array([0])
    need = smallest_class(fractions)
    shares = f"data.val_fraction={fractions.val}, data.test_fraction={fractions.test}"
    return (
        f"the {split} split is empty: the data has {len(labels)} samples in {len(counts)} "
        f"class(es), at most {int(counts.max())} in one, and each class gives val and test "
        f"round(n * fraction) of its n samples; with {shares} the smallest data that works has "
        f"a class of {need} samples: add data (or give val and test files of their own)"
    )


def smallest_class(fractions: Fractions) -> int:
    """The fewest samples one class needs for non-empty train, val and test splits."""
    for n in range(1, 100_000):
        n_val, n_test = round(n * fractions.val), round(n * fractions.test)
        val_ok = fractions.val == 0 or n_val >= 1
        test_ok = fractions.test == 0 or n_test >= 1
        if val_ok and test_ok and n - n_val - n_test >= 1:
            return n
    return 100_000


def subsample(indices: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of ``indices`` of at most ``max_samples`` (None keeps all)."""
    if max_samples is None:
        return indices
    if int(max_samples) < 1:
        raise FtlabError(
            f"data.max_train_samples={max_samples} must be a positive number or null (all)"
        )
    if max_samples >= len(indices):
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), size=int(max_samples), replace=False)
    return indices[np.sort(chosen)]


def label_set_split(
    targets: np.ndarray, fractions: Fractions, seed: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Split multi-hot ``targets`` ``[N, C]``: stratified on each sample's set of labels, then
    each label moved into a split that lacks it (one positive from train, while train keeps
    one). Returns the parts and one line per label that cannot be in every split (too few
    positives): the caller logs them, the split goes on without it."""
    targets = np.asarray(targets)
    combos = np.unique(targets.astype(np.int64), axis=0, return_inverse=True)[1].reshape(-1)
    parts = stratified_split(combos, fractions, seed)
    missing: list[str] = []
    rng = np.random.default_rng(seed)
    for label in range(targets.shape[1]):
        for name in [n for n in parts if n != "train"]:
            if targets[parts[name], label].any():
                continue
            donors = parts["train"][targets[parts["train"], label] > 0]
            if len(donors) < 2:
                total = int((targets[:, label] > 0).sum())
                missing.append(f"label {label} has {total} positive samples: none in {name}")
                continue
            moved = rng.choice(donors)
            parts["train"] = parts["train"][parts["train"] != moved]
            parts[name] = np.sort(np.append(parts[name], moved))
    return parts, missing


def quantile_split(
    targets: np.ndarray, fractions: Fractions, seed: int, bins: int = 10
) -> dict[str, np.ndarray]:
    """Split float ``targets`` (``[N]`` or ``[N, D]``) stratified on quantile bins of their
    first column, so every split spans the range of values."""
    values = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)[:, 0]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return stratified_split(np.searchsorted(edges, values, side="right"), fractions, seed)


def random_split(targets: np.ndarray, fractions: Fractions, seed: int) -> dict[str, np.ndarray]:
    """A seeded random split, blind to the targets."""
    return stratified_split(np.zeros(len(targets), dtype=np.int64), fractions, seed)
