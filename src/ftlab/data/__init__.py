"""ftlab data options: one LightningDataModule per ``conf/data/<name>.yaml``.

Each is built by :func:`build_data` for the backbone's ``input_spec`` and yields batches
``(inputs, labels)``; see :class:`~ftlab.data.base.ClassificationDataModule` for the common keys.
"""

from collections.abc import Mapping
from typing import Any

from ftlab.data.base import ClassificationDataModule, Splits
from ftlab.data.bbc_news import BBCNewsDataModule
from ftlab.data.hf_dataset import HFDatasetDataModule, HFImageDataModule, HFTextDataModule
from ftlab.data.image_folder import ImageFolderDataModule
from ftlab.data.images import ImageDataModule
from ftlab.data.in_memory import DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from ftlab.data.target_domain import MNISTTargetDataModule
from ftlab.data.text import TextDataModule
from ftlab.data.text_csv import TextCSVDataModule
from ftlab.errors import FtlabError
from ftlab.options import named_class
from ftlab.specs import ImageSpec, TextSpec

__all__ = [
    "BBCNewsDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "HFDatasetDataModule",
    "HFImageDataModule",
    "HFTextDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "MNISTTargetDataModule",
    "Splits",
    "TextCSVDataModule",
    "TextDataModule",
    "build_data",
]


def data_class(target: str | type) -> type[ClassificationDataModule]:
    """The data module class a data config's ``_target_`` names (a dotted path, or the class)."""
    cls = named_class(target, ClassificationDataModule)
    if cls is None:
        raise FtlabError(
            f"data._target_={target} is not a data module class: give the dotted path of a "
            "ftlab.data.ClassificationDataModule subclass, e.g. ftlab.data.DigitsDataModule"
        )
    return cls


def build_data(
    config: Mapping[str, Any], input_spec: ImageSpec | TextSpec
) -> ClassificationDataModule:
    """The data module of a data config (``conf/data/*.yaml`` as plain values) for a backbone's
    ``input_spec``: ``_target_`` names the class, the other keys are its arguments.

    Data configs are flat (a class and its keyword values), so this needs no Hydra: the class
    is imported and checked to be a data module, so a config cannot call anything else.
    ``ood`` (evaluation-only test sets, ftlab.evaluation.ood) is not a constructor key.
    """
    options = {k: v for k, v in config.items() if k not in ("_target_", "ood")}
    try:
        return data_class(config.get("_target_", ""))(input_spec=input_spec, **options)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise FtlabError(f"data: {err}".replace("__init__() ", "")) from None
