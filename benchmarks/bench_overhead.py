"""Overhead: an ftlab training epoch against a hand-written PyTorch loop doing the same work,
and plain Lightning against the same hand loop, timed the same way in the same run.

Same module class, param groups, data tensors, batch size and threads; no logging, validation
or checkpoints in any. ftlab's side is one ``Trainer.fit`` over ``1 + repeats`` epochs with the
callbacks a run trains with at every step: the plan's PhaseCallback and FaultGuard (nan/inf and
SIGTERM, checked every ``faults.check_every`` = 10 steps). Plain Lightning's side is the same
fit with neither: the same module with phase 0's parameters made trainable before ``fit``.
Before each Lightning step (of either side) a callback runs one hand-written step (forward,
cross-entropy, zero_grad, backward, AdamW step) on a twin module with its own optimizer, so the
two alternate step by step in one process and the load on this shared machine, which swings
several-fold within a minute, hits both alike. A Lightning step is the time from the end of one
hand step to the start of the next: the batch fetch, the training and optimizer step, and
every Lightning and ftlab hook in between, so an epoch's time includes the work at one epoch
boundary. The first epoch is warm-up. The value is the median over the other steps of
(Lightning step / the hand step just before it), robust to load bursts; ``epoch_ratio`` is the
median over epochs of (Lightning epoch / hand epoch), which also carries the epoch-boundary
work. The two sides of a case run one after the other, each against its own hand steps.
Target for ftlab/hand <= 1.05; Lightning/hand is reported, as what the framework itself costs.

Each record also gives ``fit_fixed_s``: the once-per-fit work outside the epochs (Trainer
construction, configure_optimizers, entering phase 0 with its parameter checksum, the final
checksum, teardown), and ``checksum_s``, one checksum of the trainable parameters. An earlier
version of this bench made a new Trainer for every epoch, so every "epoch" paid these once-per-
fit costs, which grow with the trainable parameters (full fine-tuning) and with machine load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from common import build_module, elapsed, quiet, report
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ftlab.faults import FaultGuard
from ftlab.finetuning.freezing import apply_trainable, checksum, param_groups

CASES = {
    # name: (timm model, image size, batch size, batches per epoch)
    "resnet18@64": ("resnet18", 64, 32, 6),
    "vit_tiny@224": ("vit_tiny_patch16_224", 224, 16, 3),
}
TARGET = 1.05
SIDES = ("ftlab", "Lightning")


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


def measure(
    model: str, size: int, batch: int, steps: int, freeze: str, repeats: int, side: str
) -> dict:
    """One fit of ``side`` ("ftlab" or "Lightning"), alternating with hand steps."""
    torch.manual_seed(0)
    data = TensorDataset(
        torch.randn(batch * steps, 3, size, size), torch.randint(0, 10, (batch * steps,))
    )
    loader = DataLoader(data, batch_size=batch)
    ours, hand = build_module(model, freeze, size), build_module(model, freeze, size)
    apply_trainable(hand, hand.plan.trainable(0))
    optimizer = torch.optim.AdamW(param_groups(hand.plan, dict(hand.named_parameters())))
    alternate = Alternate(hand, loader, optimizer)
    # Alternate first: its marks sit outside PhaseCallback's phase entry and final checksum.
    callbacks: list[L.Callback] = [alternate]
    run_dir = Path(tempfile.mkdtemp(prefix="ftlab-overhead-"))  # FaultGuard's, on SIGTERM only
    if side == "ftlab":  # the module adds its own PhaseCallback (configure_callbacks)
        callbacks += [FaultGuard(run_dir, ours.plan)]
    else:  # what PhaseCallback does at phase 0's entry, done once before fit; no callback
        apply_trainable(ours, ours.plan.trainable(0))
        ours.phases = None
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
        callbacks=callbacks,
    )
    trainer.fit(ours, train_dataloaders=loader)
    shutil.rmtree(run_dir, ignore_errors=True)
    fixed = (alternate.first_epoch_start - start) + (time.perf_counter() - alternate.train_end)
    pairs = [(e, h, f) for e, h, f in alternate.pairs if e > 0]  # epoch 0: warm-up
    epochs = sorted({e for e, _, _ in pairs})
    hand_epochs = [sum(h for e, h, _ in pairs if e == k) for k in epochs]
    side_epochs = [sum(f for e, _, f in pairs if e == k) for k in epochs]
    trainable = ours.plan.trainable(0)
    key = side.lower()
    return {
        "ratio": statistics.median(f / h for _, h, f in pairs),
        "epoch_ratio": statistics.median(
            f / h for f, h in zip(side_epochs, hand_epochs, strict=True)
        ),
        f"{key}_step_s": statistics.median(f for _, _, f in pairs),
        "hand_step_s": statistics.median(h for _, h, _ in pairs),
        f"{key}_epochs_s": [round(x, 4) for x in side_epochs],
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
        steps = max(2, steps // 2) if quick else steps
        for freeze in ("none", "linear_probe"):
            ratios = {}
            for side in SIDES:
                m = measure(model, size, batch, steps, freeze, repeats, side)
                ratio = ratios[side] = m.pop("ratio")
                # What the earlier one-Trainer-per-epoch bench timed: an epoch plus one fit's
                # fixed work (its phase-0 checksum included).
                side_epoch = statistics.median(m[f"{side.lower()}_epochs_s"])
                hand_epoch = statistics.median(m["hand_epochs_s"])
                per_fit = (side_epoch + m["fit_fixed_s"] + m["checksum_s"]) / hand_epoch
                # The ftlab side runs first: the Lightning record carries their quotient.
                extra = {}
                if side == "Lightning":
                    extra = {"ftlab_over_lightning": round(ratios["ftlab"] / ratio, 4)}
                records.append(
                    report(
                        "overhead",
                        f"{name} {'full' if freeze == 'none' else 'frozen'} {side}/hand",
                        ratio,
                        "ratio",
                        f"<= {TARGET}" if side == "ftlab" else "",
                        ratio <= TARGET if side == "ftlab" else None,
                        **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
                        **extra,
                        one_fit_per_epoch_ratio=round(per_fit, 3),
                        batch=batch,
                        batches_per_epoch=steps,
                        repeats=repeats,
                        threads=torch.get_num_threads(),
                    )
                )
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and batches")
    run(parser.parse_args().quick)
