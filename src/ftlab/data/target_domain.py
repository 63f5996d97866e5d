"""MNIST as a target domain for two-stage adaptation (surgical fine-tuning's experiments).

A model fine-tuned on MNIST (stage one) is adapted with a few labels of a shifted MNIST
(stage two, ``model.init_from``). Lee et al. (ICLR 2023) tell the shifts apart by where they
act: an input-level shift changes the pixels (``shift: gaussian_noise:3``, every split
corrupted as ``data.ood`` corrupts the test split), an output-level shift changes what the
labels mean (``permute_labels: true``, digit d labelled (d + 1) mod 10: no label keeps its
meaning). Both can be combined.
"""

from __future__ import annotations

from typing import Any

from ftlab.data.base import Splits
from ftlab.data.in_memory import ImageArrays, MNISTDataModule
from ftlab.data.shifts import DEFAULT_SEVERITY, IMAGE_SHIFTS, SEVERITIES, ShiftedImages
from ftlab.errors import FtlabError

# Each split draws its corruption from its own seed, so train and test noise differ.
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def parse_shift(shift: str | None) -> tuple[str, int] | None:
    """``"gaussian_noise:3"`` -> ``("gaussian_noise", 3)``; None stays None."""
    if shift in (None, ""):
        return None
    name, _, severity = str(shift).partition(":")
    severity = severity or str(DEFAULT_SEVERITY)
    if name not in IMAGE_SHIFTS:
        raise FtlabError(
            f"data.shift={shift}: unknown shift '{name}': use one of {', '.join(IMAGE_SHIFTS)}"
        )
    if not severity.isdigit() or int(severity) not in SEVERITIES:
        raise FtlabError(f"data.shift={shift}: the severity must be an integer from 1 to 5")
    return name, int(severity)


class MNISTTargetDataModule(MNISTDataModule):
    """MNIST with every split shifted (``shift``) and/or its labels permuted (``permute_labels``).

    The split, ``max_train_samples`` and class names are MNIST's, so a stage-one MNIST model's
    head loads (``model.init_from``) and the same digits are held out.
    """

    def __init__(
        self, *args: Any, shift: str | None = None, permute_labels: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shift = parse_shift(shift)
        self.permute_labels = bool(permute_labels)

    def _load(self) -> ImageArrays:
        data = super()._load()
        if self.permute_labels:
            data.labels = (data.labels + 1) % len(data.classes)
        return data

    def _build(self) -> Splits:
        splits = super()._build()
        if self.shift is None:
            return splits
        name, severity = self.shift
        shifted = {
            split: ShiftedImages(
                getattr(splits, split), name, severity, seed, self.spec.mean, self.spec.std
            )
            for split, seed in SPLIT_SEEDS.items()
        }
        return Splits(**shifted, classes=splits.classes)

    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "shift": list(self.shift) if self.shift else None,
            "permute_labels": self.permute_labels,
        }


__all__ = ["MNISTTargetDataModule", "parse_shift"]
