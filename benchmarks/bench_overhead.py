"""Overhead: an ftlab training epoch against a hand-written PyTorch loop doing the same work.

Same module class, param groups, data tensors, batch size and threads; no logging, validation
or checkpoints in either. ftlab's side is one ``Trainer.fit`` over ``1 + repeats`` epochs with
the plan's PhaseCallback, as a run trains; at the start of each of its epochs a callback runs
one hand-written epoch on a twin module with its own AdamW, so the two alternate epoch by epoch
in one process and load on the machine hits both alike. An ftlab epoch is the time from the end
of one hand epoch to the start of the next (or to ``on_train_end``): its batches and all of
Lightning's and ftlab's work between epochs. The first epoch of each side is warm-up; the
ratio of the medians is reported. Target <= 1.05.

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
    "vit_tiny@224": ("vit_tiny_patch16_224", 224, 16, 2),
}
TARGET = 1.05


def hand_epoch(module, loader, optimizer) -> None:
    module.train()  # frozen BatchNorm and a frozen backbone stay in eval mode, as in ftlab
    for x, y in loader:
        loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class Alternate(L.Callback):
    """Runs a hand-written epoch before each ftlab epoch; times both sides."""

    def __init__(self, hand_run) -> None:
        self.hand_run = hand_run
        self.ftlab: list[float] = []
        self.hand: list[float] = []
        self.mark: float | None = None
        self.first_epoch_start = self.train_end = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        if self.mark is None:
            self.first_epoch_start = now
        else:
            self.ftlab.append(now - self.mark)
        self.hand.append(elapsed(self.hand_run))
        self.mark = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_end = time.perf_counter()
        self.ftlab.append(self.train_end - self.mark)


def measure(model: str, size: int, batch: int, steps: int, freeze: str, repeats: int) -> dict:
    torch.manual_seed(0)
    data = TensorDataset(
        torch.randn(batch * steps, 3, size, size), torch.randint(0, 10, (batch * steps,))
    )
    loader = DataLoader(data, batch_size=batch)
    ours, hand = build_module(model, freeze, size), build_module(model, freeze, size)
    apply_trainable(hand, hand.plan.trainable(0))
    optimizer = torch.optim.AdamW(param_groups(hand.plan, dict(hand.named_parameters())))
    alternate = Alternate(lambda: hand_epoch(hand, loader, optimizer))
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
    ftlab_s, hand_s = alternate.ftlab[1:], alternate.hand[1:]
    trainable = ours.plan.trainable(0)
    return {
        "ftlab_s": statistics.median(ftlab_s),
        "hand_s": statistics.median(hand_s),
        "ftlab_epochs_s": [round(x, 4) for x in ftlab_s],
        "hand_epochs_s": [round(x, 4) for x in hand_s],
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
            ratio = m["ftlab_s"] / m["hand_s"]
            # What the earlier one-Trainer-per-epoch bench timed: an epoch plus one fit's fixed
            # work (its phase-0 checksum included).
            per_fit = (m["ftlab_s"] + m["fit_fixed_s"] + m["checksum_s"]) / m["hand_s"]
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
