"""ftlab data options: one LightningDataModule per ``conf/data/<name>.yaml``.

Each is built by :func:`build_data` for the backbone's ``input_spec`` and yields batches
``(inputs, labels)``; see :class:`~ftlab.data.base.ClassificationDataModule` for the common keys.
"""

from typing import Any

from hydra.utils import instantiate

from ftlab.data.base import ClassificationDataModule, Splits
from ftlab.data.bbc_news import BBCNewsDataModule
from ftlab.data.image_folder import ImageFolderDataModule
from ftlab.data.images import ImageDataModule
from ftlab.data.in_memory import DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from ftlab.data.text import TextDataModule
from ftlab.data.text_csv import TextCSVDataModule
from ftlab.specs import ImageSpec, TextSpec

__all__ = [
    "BBCNewsDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "Splits",
    "TextCSVDataModule",
    "TextDataModule",
    "build_data",
]


def build_data(cfg: Any, input_spec: ImageSpec | TextSpec) -> ClassificationDataModule:
    """Instantiate ``cfg.data`` for a backbone's ``input_spec``.

    The spec goes in through a partial: passed to ``instantiate`` directly, Hydra would turn the
    dataclass (and its tokenizer) into a DictConfig.
    """
    if "ood" in cfg:  # evaluation-only test sets (ftlab.evaluation.ood), not a constructor key
        cfg = {key: value for key, value in cfg.items() if key != "ood"}
    return instantiate(cfg, _partial_=True)(input_spec=input_spec)
