"""Overhead: an ftlab training epoch against a hand-written PyTorch loop doing the same work.

Same module class, param groups, data tensors, batch size and threads; no logging, validation
or checkpoints in either. ftlab's side is one ``Trainer.fit`` over ``1 + repeats`` epochs with
the plan's PhaseCallback, as a run trains. Before each of its steps a callback runs one
hand-written step (forward, cross-entropy, zero_grad, backward, AdamW step) on a twin module
with its own optimizer, so the two sides alternate step by step in one process and the load
on this shared machine, which swings several-fold within a minute, hits both alike. An ftlab
step is the time from the end of one hand step to the start of the next: the batch fetch, the
training and optimizer step, and every Lightning and ftlab hook in between, so an epoch's
time includes the work at one epoch boundary. The first epoch is warm-up. The value is the
median over the other steps of (ftlab step / the hand step just before it), robust to load
bursts; ``epoch_ratio`` is the median over epochs of (ftlab epoch / hand epoch), which also
carries the epoch-boundary work. Target <= 1.05.

Each record also gives ``fit_fixed_s``: the once-per-fit work outside the epochs (Trainer
construction, configure_optimizers, entering phase 0 with its parameter checksum, the final
checksum, teardown), and ``checksum_s``, one checksum of the trainable parameters. An earlier
version of this bench made a new Trainer for every epoch, so every "epoch" paid these once-per-
fit costs, which grow with the trainable parameters (full fine-tuning) and with machine load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from common import build_module, elapsed, quiet, report
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ftlab.finetuning.callback import PhaseCallback
from ftlab.finetuning.freezing import apply_trainable, checksum, param_groups

CASES = {
    # name: (timm model, image size, batch size, batches per epoch)
    "resnet18@64": ("resnet18", 64, 32, 6),
    "vit_tiny@224": ("vit_tiny_patch16_224", 224, 16, 3),
}
TARGET = 1.05


def hand_step(module, batch, optimizer) -> None:
    x, y = batch
    loss = F.cross_entropy(module(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Alternate(L.Callback):
    """Runs one hand-written step before each ftlab step and records the pairs.

    An ftlab step is the time from the end of one hand step to the start of the next: the
    batch fetch, the training and optimizer step and every hook in between, so the work at an
    epoch boundary counts in the next epoch's first step. Each is paired with the hand step
    that ran just before it.
    """

    def __init__(self, hand, loader, optimizer) -> None:
        self.hand, self.loader, self.optimizer = hand, loader, optimizer
        self.pairs: list[tuple[int, float, float]] = []  # (epoch, hand step s, ftlab step s)
        self.mark: float | None = None
        self.last_hand = 0.0
        self.first_epoch_start = self.train_end = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.mark is None:
            self.first_epoch_start = time.perf_counter()
        self.batches = iter(self.loader)
        self.hand.train()  # frozen BatchNorm and a frozen backbone stay in eval mode, as in ftlab

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        start = time.perf_counter()
        if self.mark is not None:
            self.pairs.append((trainer.current_epoch, self.last_hand, start - self.mark))
        hand_step(self.hand, next(self.batches), self.optimizer)
        self.mark = time.perf_counter()
        self.last_hand = self.mark - start

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_end = time.perf_counter()


def measure(model: str, size: int, batch: int, steps: int, freeze: str, repeats: int) -> dict:
    torch.manual_seed(0)
    data = TensorDataset(
        torch.randn(batch * steps, 3, size, size), torch.randint(0, 10, (batch * steps,))
    )
    loader = DataLoader(data, batch_size=batch)
    ours, hand = build_module(model, freeze, size), build_module(model, freeze, size)
    apply_trainable(hand, hand.plan.trainable(0))
    optimizer = torch.optim.AdamW(param_groups(hand.plan, dict(hand.named_parameters())))
    alternate = Alternate(hand, loader, optimizer)
    start = time.perf_counter()
    trainer = L.Trainer(
        max_epochs=1 + repeats,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        # Alternate first: its marks sit outside PhaseCallback's phase entry and final checksum.
        callbacks=[alternate, PhaseCallback(ours.plan)],
    )
    trainer.fit(ours, train_dataloaders=loader)
    fixed = (alternate.first_epoch_start - start) + (time.perf_counter() - alternate.train_end)
    pairs = [(e, h, f) for e, h, f in alternate.pairs if e > 0]  # epoch 0: warm-up
    epochs = sorted({e for e, _, _ in pairs})
    hand_epochs = [sum(h for e, h, _ in pairs if e == k) for k in epochs]
    ftlab_epochs = [sum(f for e, _, f in pairs if e == k) for k in epochs]
    trainable = ours.plan.trainable(0)
    return {
        "ratio": statistics.median(f / h for _, h, f in pairs),
        "epoch_ratio": statistics.median(
            f / h for f, h in zip(ftlab_epochs, hand_epochs, strict=True)
        ),
        "ftlab_step_s": statistics.median(f for _, _, f in pairs),
        "hand_step_s": statistics.median(h for _, h, _ in pairs),
        "ftlab_epochs_s": [round(x, 4) for x in ftlab_epochs],
        "hand_epochs_s": [round(x, 4) for x in hand_epochs],
        "pairs": len(pairs),
        "fit_fixed_s": fixed,
        # Phase 0's entry checksum ran in the warm-up epoch: timed again here.
        "checksum_s": elapsed(lambda: checksum(ours, trainable)),
        "trainable_params": sum(p.numel() for n, p in ours.named_parameters() if n in trainable),
    }


def run(quick: bool = False) -> list[dict]:
    quiet()
    repeats = 2 if quick else 4
    records = []
    for name, (model, size, batch, steps) in CASES.items():
        for freeze in ("none", "linear_probe"):
            m = measure(model, size, batch, max(2, steps // 2) if quick else steps, freeze, repeats)
            ratio = m.pop("ratio")
            # What the earlier one-Trainer-per-epoch bench timed: an epoch plus one fit's fixed
            # work (its phase-0 checksum included).
            ftlab_epoch = statistics.median(m["ftlab_epochs_s"])
            hand_epoch = statistics.median(m["hand_epochs_s"])
            per_fit = (ftlab_epoch + m["fit_fixed_s"] + m["checksum_s"]) / hand_epoch
            records.append(
                report(
                    "overhead",
                    f"{name} {'full' if freeze == 'none' else 'frozen'} ftlab/hand",
                    ratio,
                    "ratio",
                    f"<= {TARGET}",
                    ratio <= TARGET,
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
                    one_fit_per_epoch_ratio=round(per_fit, 3),
                    batch=batch,
                    batches_per_epoch=max(2, steps // 2) if quick else steps,
                    repeats=repeats,
                    threads=torch.get_num_threads(),
                )
            )
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and batches")
    run(parser.parse_args().quick)
