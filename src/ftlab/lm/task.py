"""``task=causal_lm`` on the task seam (ftlab.tasks): its options, default metric and the
evaluations that apply. The steps themselves are the CausalLM module's (ftlab.lm.module): the
targets are the batch's token labels, not a head's classes, so the seam's split, loss and
metrics hooks are not used by it (the data module splits examples by a fixed seed)."""

from __future__ import annotations

from typing import Any, ClassVar

from ftlab.lm.formats import check_loss_on
from ftlab.tasks.base import Task


class CausalLMTask(Task):
    """Next-token prediction on the answer's tokens (``loss_on``), optionally chat-rendered."""

    name: ClassVar[str] = "causal_lm"
    metric: ClassVar[str] = "val/loss"
    mode: ClassVar[str] = "min"
    evaluations: ClassVar[frozenset[str]] = frozenset({"forgetting"})

    def __init__(self, loss_on: str = "auto", chat: bool = False) -> None:
        self.loss_on = check_loss_on(loss_on)
        self.chat = bool(chat)

    def options(self) -> dict[str, Any]:
        return {"loss_on": self.loss_on, "chat": self.chat}
