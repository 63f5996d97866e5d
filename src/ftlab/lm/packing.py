"""Batches of tokenized examples: padded rows, or packed rows (``data.packing=true``).

Packing puts several examples in one row, first-fit in order, so fewer tokens are padding. No
example may see another: each restarts its ``position_ids`` at 0, a ``segment`` id per token
names its example, and :func:`block_causal_mask` turns the segments into a block-diagonal
causal 4-D mask on the device (an additive float mask, which both ``sdpa`` and ``eager``
attention read; transformers passes a 4-D mask through unchanged). Each example's first
label is dropped, since the token before it belongs to another example; an unpacked row never
predicts its first token either, so the losses are the same.

Padding-free variable-length attention (``flash_attention_2`` on a GPU) needs only the
``position_ids``: the module leaves the mask out for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ftlab.lm.formats import IGNORE, Tokenized


@dataclass
class Collate:
    """``list[Tokenized] -> {input_ids, labels, attention_mask | segments+position_ids}``."""

    pad_id: int
    packing: bool = False
    max_length: int = 512

    def __call__(self, examples: Sequence[Tokenized]) -> dict[str, Tensor]:
        if self.packing:
            return pack(examples, self.max_length, self.pad_id)
        return pad(examples, self.pad_id)


def pad(examples: Sequence[Tokenized], pad_id: int) -> dict[str, Tensor]:
    """One example a row, right-padded to the longest."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit: example indices per row, in order, each row at most ``max_length`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        n = min(n, max_length)
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    return rows


def pack(examples: Sequence[Tokenized], max_length: int, pad_id: int) -> dict[str, Tensor]:
    """Several examples a row; ``segments`` (per token, -1 on padding) and ``position_ids``
    reset at every example."""
    rows = pack_rows([len(e) for e in examples], max_length)
    width = max(sum(min(len(examples[i]), max_length) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    segments = torch.full_like(ids, -1)
    positions = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            e = examples[i]
            n = min(len(e), max_length)
            ids[r, at : at + n] = torch.tensor(e.input_ids[:n])
            labels[r, at : at + n] = torch.tensor(e.labels[:n])
            labels[r, at] = IGNORE  # predicted from the previous example's last token
            segments[r, at : at + n] = s
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "segments": segments, "position_ids": positions}


def block_causal_mask(segments: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, 1, T, T]`` additive mask: a token sees earlier tokens of its own example only.
    Padding (segment -1) sees itself, so no softmax row is empty (its labels are ignored)."""
    same = segments[:, :, None] == segments[:, None, :]
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=segments.device)
    allowed = (same & causal) | eye
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def padding_share(batch: dict[str, Tensor]) -> tuple[int, int]:
    """(padding tokens, all tokens) of a collated batch."""
    if "segments" in batch:
        real = int((batch["segments"] >= 0).sum())
    else:
        real = int(batch["attention_mask"].sum())
    return batch["input_ids"].numel() - real, batch["input_ids"].numel()


def model_inputs(batch: dict[str, Tensor], dtype: torch.dtype, varlen: bool) -> dict[str, Tensor]:
    """What the backbone reads from a batch: packed rows get their block-diagonal mask (or,
    with ``varlen`` attention, only their position ids)."""
    if "segments" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    out = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if not varlen:
        out["attention_mask"] = block_causal_mask(batch["segments"], dtype)
    return out


def token_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token cross-entropy ``[B, T-1]`` of next-token prediction (0 where ignored)."""
    shifted = labels[:, 1:]
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        shifted.flatten(),
        ignore_index=IGNORE,
        reduction="none",
    )
    return flat.view(shifted.shape)
