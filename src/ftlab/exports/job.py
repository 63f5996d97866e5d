"""One export in progress (:class:`Export`) and what every writer shares: the sample batch it
is checked on, ftlab's logits on it, the head's layers, and the tolerance of the check."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ftlab.errors import FtlabError
from ftlab.record import ModelRecord
from ftlab.runinfo import RunInfo

TOLERANCE = 1e-4  # the largest |logit difference| an export may show against ftlab (float32)
SAMPLE_TEXTS = (
    "The central bank raised interest rates again this quarter.",
    "A late goal settled the cup final.",
    "The new phone ships with a faster chip and a larger battery, reviewers said.",
    "Parliament debated the budget until midnight.",
)
SAMPLE_BATCH = 4


@dataclass
class Export:
    """One export in progress: the restored model and what the card needs."""

    layout: str
    ckpt_path: Path
    out: Path
    module: nn.Module
    backbone: nn.Module
    record: ModelRecord
    run: RunInfo
    inputs: Any = None  # the batch the export is checked on
    expected: Tensor | None = None  # ftlab's logits on it, before LoRA was merged
    dest: Path | None = None  # where ``out`` is moved once checked: the paths on the card
    # Filled by the writer:
    written: str = ""  # the layout's name on the card
    library: str = ""
    usage: str = ""  # how to load it, a code block for the card
    notes: list[str] = field(default_factory=list)
    max_diff: float = math.nan

    @property
    def shown(self) -> Path:
        """The folder the user loads (``dest``); the writers write to ``out``."""
        return self.dest or self.out

    @property
    def classes(self) -> list[Any]:
        return list(self.record.classes)

    def check(self, logits: Tensor | Any, what: str) -> None:
        """Compare the loaded export's logits with ftlab's; refuse a mismatch."""
        got = torch.as_tensor(logits, dtype=torch.float32).reshape(self.expected.shape)
        self.max_diff = float((got - self.expected).abs().max())
        if not self.max_diff <= TOLERANCE:
            raise FtlabError(
                f"export={self.layout}: {what} gives logits {self.max_diff:.3g} away from ftlab's "
                f"(tolerance {TOLERANCE:g}); report it with ckpt_path={self.ckpt_path}"
            )


def predict(module: nn.Module, backbone: nn.Module, inputs: Any) -> Tensor:
    """ftlab's logits: the head on the backbone's pooled features."""
    return module.head(backbone(inputs)).float()


def sample_inputs(backbone: nn.Module, run: RunInfo) -> Any:
    """A batch like the training data: images at the run's size, or tokenized sentences."""
    spec = backbone.input_spec
    if backbone.modality == "image":
        size = int(run.data("image_size") or spec.size)
        generator = torch.Generator().manual_seed(0)
        return torch.randn(SAMPLE_BATCH, spec.channels, size, size, generator=generator)
    return dict(
        spec.tokenizer(
            list(SAMPLE_TEXTS),
            padding=True,
            truncation=True,
            max_length=max_length(backbone, run),
            return_tensors="pt",
        )
    )


def max_length(backbone: nn.Module, run: RunInfo) -> int:
    """The token limit the run trained with (``data.max_length``), else the backbone's."""
    return int(run.data("max_length") or backbone.input_spec.max_length)


def head_layers(job: Export) -> list[nn.Linear]:
    """The head's linear layers, input first (dropout is off in an export)."""
    return [m for m in job.module.head.modules() if isinstance(m, nn.Linear)]


def one_linear(job: Export, fix: str) -> nn.Linear:
    layers = head_layers(job)
    if len(layers) != 1:
        raise FtlabError(
            f"export={job.layout}: ckpt_path={job.ckpt_path} has a {len(layers)}-layer head "
            f"({job.record.head.get('kind', '?') if isinstance(job.record.head, Mapping) else '?'})"
            f" and this layout holds one linear layer: {fix}"
        )
    return layers[0]


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its steps
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
