"""The causal-LM LightningModule: next-token loss on the labelled tokens, perplexity, and greedy
generations scored by exact match and ROUGE-L.

It is an ftlab :class:`~ftlab.module.FinetuneModule`, so every schedule, discriminative lrs,
LoRA and the peft family, the phase callback and the rank checksums come with it. The LM keeps
its pretrained output layer, so the plan's ``head`` group is the backbone's ``final`` group
(last norm, and ``lm_head`` when untied); ftlab adds no new head. Gradual unfreezing thus
starts at the top of the decoder, as ULMFiT does. An adapter run (freeze=lora, freeze=peft)
trains the adapters and that ``head`` group; the export saves the group as peft's
``modules_to_save`` (ftlab.lm.exports), so the adapter folder is the whole change.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric, SumMetric

from ftlab.adapters import is_adapter_param
from ftlab.finetuning import HEAD
from ftlab.finetuning.optimization import Optimization
from ftlab.finetuning.plan import LORA
from ftlab.finetuning.spec import FreezeSpec
from ftlab.lm.formats import IGNORE, prompt_ids, reference
from ftlab.lm.packing import model_inputs, token_losses
from ftlab.lm.prompt_learning import PROMPT_PARAM, is_prompt_method, wrap
from ftlab.lm.scoring import exact_match, rouge_l
from ftlab.module import FinetuneModule

log = logging.getLogger(__name__)


class CausalLM(FinetuneModule):
    """A causal LM fine-tuned by a freezing plan.

    Args:
        backbone: an ftlab causal-LM backbone (ftlab.backbones.hf_causal).
        freeze, optimization: as :class:`~ftlab.module.FinetuneModule`.
        generate: ``{max_new_tokens, samples}``: greedy generations on the first ``samples``
            validation examples at every validation (0 samples: off).
        chat: the data renders prompts with the chat template (so does generation).
    """

    kind = "causal_lm"

    def __init__(
        self,
        backbone: nn.Module,
        freeze: FreezeSpec | Mapping[str, Any] | str | None = "none",
        optimization: Optimization | None = None,
        generate: Mapping[str, Any] | None = None,
        chat: bool = False,
        **ignored: Any,  # num_classes, classes: the classification data contract
    ) -> None:
        spec = FreezeSpec.parse(freeze) if freeze is not None else None
        self.prompt_learning: dict[str, Any] | None = None
        if spec is not None and is_prompt_method(spec.peft):
            # peft's wrapper, not an in-place adapter; the virtual tokens are all that trains:
            # the plan's head group (see layer_groups), a one-phase head-only plan.
            self.prompt_learning = wrap(backbone, spec.peft)
            spec = replace(spec, name="linear_probe", peft=None)
        super().__init__(backbone, 1, spec, optimization, classes=["text"])
        settings = dict(generate or {})
        self.max_new_tokens = int(settings.get("max_new_tokens", 16))
        self.samples = int(settings.get("samples", 8))
        self.chat = bool(chat)
        self.generation_examples: list[dict[str, Any]] = []
        self.generations: list[dict[str, Any]] = []
        self.varlen = "flash" in str(getattr(backbone.model.config, "_attn_implementation", ""))
        self.nll = nn.ModuleDict({s: SumMetric() for s in ("val", "test")})
        self.tokens = nn.ModuleDict({s: SumMetric() for s in ("val", "test")})

    # -- the protocol -----------------------------------------------------------------------

    def make_head(self, num_features: int, num_classes: int) -> nn.Module:
        return nn.Identity()  # the LM's own lm_head is the output layer

    def metrics(self) -> Mapping[str, Metric]:
        return {}

    def cache_blocker(self) -> str | None:
        return "a causal LM's steps read tokens (no cached head features)"

    def layer_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        groups = [
            (g.name, tuple(f"backbone.{p}" for p in g.param_names))
            for g in self.backbone.layer_groups()
        ]
        if self.prompt_learning is not None:
            prompt = tuple(p for _, names in groups for p in names if PROMPT_PARAM in p)
            groups = [(g, tuple(p for p in ps if PROMPT_PARAM not in p)) for g, ps in groups]
            return [*((g, ps) for g, ps in groups if ps), (HEAD, prompt)]
        adapters = tuple(p for _, names in groups for p in names if is_adapter_param(p))
        groups = [(g, tuple(p for p in ps if not is_adapter_param(p))) for g, ps in groups]
        *body, (_, final) = groups
        return [*body, *([(LORA, adapters)] if adapters else []), (HEAD, final)]

    def report(self) -> dict[str, Any]:
        return {"generations": self.generations[: self.samples]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Plain values for ftlab-generate (ftlab.lm.generate reads them back strictly).
        record = self.record
        checkpoint["ftlab_lm"] = {
            "name": self.backbone.name,
            "weights": record.backbone.weights if record else None,
            "lora": record.lora if record else None,
            "peft": record.peft if record else None,
            "prompt_learning": self.prompt_learning,
            "chat": self.chat,
        }

    # -- steps ------------------------------------------------------------------------------

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        return self.backbone(model_inputs(dict(inputs), dtype, self.varlen))

    def _losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token loss, labelled tokens), both on the device: no host sync."""
        losses = token_losses(self(batch), batch["labels"])
        return losses.sum(), (batch["labels"][:, 1:] != IGNORE).sum()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = self._losses(batch)
        loss = total / count.clamp(min=1)
        bar = self._trainer is not None and self._trainer.progress_bar_callback is not None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=bar,
                 batch_size=batch["input_ids"].shape[0])  # fmt: skip
        return loss

    def _eval_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> None:
        total, count = self._losses(batch)
        self.nll[stage].update(total)
        self.tokens[stage].update(count)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        # Token-weighted over the epoch (a batch mean of batch means would weigh short batches
        # like long ones); torchmetrics sums across ranks.
        loss = self.nll[stage].compute() / self.tokens[stage].compute().clamp(min=1)
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=30)), prog_bar=True)
        self.nll[stage].reset()
        self.tokens[stage].reset()
        if self.samples and self.generation_examples:
            scores = self.generate_and_score(self.generation_examples[: self.samples])
            self.log(f"{stage}/exact_match", scores["exact_match"], prog_bar=True)
            self.log(f"{stage}/rougeL", scores["rougeL"])

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # -- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, prompt: Sequence[int]) -> list[int]:
        """Greedy continuation of ``prompt`` (token ids): the new tokens' ids."""
        tok = self.backbone.tokenizer
        ids = torch.tensor([list(prompt)], device=self.device)
        out = self.backbone.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        # With peft's virtual tokens generate may return the new tokens alone.
        n = ids.shape[1]
        echoed = out.shape[1] > n and torch.equal(out[0, :n], ids[0])
        return (out[0, n:] if echoed else out[0]).tolist()

    def generate_text(self, prompt: Sequence[int]) -> str:
        """Greedy continuation of ``prompt``, decoded without special tokens."""
        return self.backbone.tokenizer.decode(self.generate_ids(prompt), skip_special_tokens=True)

    def generate_and_score(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Greedy generations of ``examples`` scored against their answers; the samples are
        kept (``self.generations``) and sent to the loggers as a table."""
        tok = self.backbone.tokenizer
        was_training = self.training
        self.eval()
        rows = []
        for example in examples:
            text = self.generate_text(prompt_ids(tok, example, self.chat))
            answer = reference(example)
            rows.append({
                "prompt": tok.decode(prompt_ids(tok, example, self.chat))[-200:],
                "reference": answer,
                "generation": text,
                "exact_match": exact_match(text, answer),
                "rougeL": rouge_l(text, answer),
            })  # fmt: skip
        if was_training:
            self.train()
        self.generations = rows
        self._log_table(rows)
        n = max(len(rows), 1)
        return {
            "exact_match": sum(r["exact_match"] for r in rows) / n,
            "rougeL": sum(r["rougeL"] for r in rows) / n,
        }

    def _log_table(self, rows: list[dict[str, Any]]) -> None:
        """The samples in every logger that shows tables or text, and as JSON lines in the run."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        columns = ["prompt", "reference", "generation", "exact_match", "rougeL"]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):  # W&B
                table = [[r[c] for c in columns] for r in rows]
                logger.log_table("generations", columns=columns, data=table, step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoard
                lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in columns) + " |"
                          for r in rows]  # fmt: skip
                logger.experiment.add_text("generations", "\n".join(lines), step)
        path = Path(trainer.default_root_dir) / "generations.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")

    @torch.no_grad()
    def perplexity(self, loader: Any, limit: int | None = None) -> float:
        """Token-weighted perplexity over ``loader``'s batches (the first ``limit``)."""
        was_training = self.training
        self.eval()
        total = count = 0.0
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            batch = {k: v.to(self.device) for k, v in batch.items()}
            t, c = self._losses(batch)
            total, count = total + float(t), count + float(c)
        if was_training:
            self.train()
        return math.exp(min(total / max(count, 1.0), 30.0))
