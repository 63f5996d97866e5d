"""Overhead: an ftlab training epoch against a hand-written PyTorch loop doing the same work.

Same module, param groups, data tensors, batch size and threads; no logging or checkpoints in
either. Cases run interleaved in one process; the ratio of medians is reported.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from common import build_module, interleaved, report
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ftlab.finetuning.callback import PhaseCallback
from ftlab.finetuning.freezing import apply_trainable, param_groups

CASES = {
    # name: (timm model, image size, batch size, batches per epoch)
    "resnet18@64": ("resnet18", 64, 32, 12),
    "vit_tiny@224": ("vit_tiny_patch16_224", 224, 16, 4),
}
TARGET = 1.05


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def ftlab_epoch(module, loader) -> float:
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[PhaseCallback(module.plan), timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def hand_epoch(module, loader, optimizer) -> float:
    start = time.perf_counter()
    module.train()  # frozen BatchNorm stays in eval mode, as in ftlab
    for x, y in loader:
        loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(repeats: int = 5) -> list[dict]:
    torch.set_num_threads(torch.get_num_threads())
    records = []
    for name, (model, size, batch, steps) in CASES.items():
        for freeze in ("none", "linear_probe"):
            torch.manual_seed(0)
            data = TensorDataset(
                torch.randn(batch * steps, 3, size, size), torch.randint(0, 10, (batch * steps,))
            )
            loader = DataLoader(data, batch_size=batch)
            ours, hand = build_module(model, freeze, size), build_module(model, freeze, size)
            apply_trainable(hand, hand.plan.trainable(0))
            optimizer = torch.optim.AdamW(param_groups(hand.plan, dict(hand.named_parameters())))
            seconds: dict[str, list[float]] = {"ftlab": [], "hand": []}

            def run_ftlab(m=ours, ld=loader, s=seconds):
                s["ftlab"].append(ftlab_epoch(m, ld))

            def run_hand(m=hand, ld=loader, o=optimizer, s=seconds):
                s["hand"].append(hand_epoch(m, ld, o))

            run_ftlab(), run_hand()  # warm-up: allocator, kernels, first-step optimizer state
            seconds["ftlab"].clear(), seconds["hand"].clear()
            interleaved({"ftlab": run_ftlab, "hand": run_hand}, repeats)
            ratio = sorted(seconds["ftlab"])[repeats // 2] / sorted(seconds["hand"])[repeats // 2]
            records.append(
                report(
                    "overhead",
                    f"{name} {'full' if freeze == 'none' else 'frozen'} ftlab/hand",
                    ratio,
                    "ratio",
                    f"<= {TARGET}",
                    ratio <= TARGET,
                    ftlab_s=sorted(seconds["ftlab"])[repeats // 2],
                    hand_s=sorted(seconds["hand"])[repeats // 2],
                    repeats=repeats,
                )
            )
    return records


if __name__ == "__main__":
    run()
