"""The plain Lightning script that ``bench_startup`` times against ftlab: the same tiny job
(timm's ``test_resnet``, random init; sklearn's digits at 32 px, batch 16; AdamW; a CSV logger
and a best-checkpoint callback, as ftlab's defaults have; no sanity-check batches, as ftlab's
trainer config) written the way a user would, without
ftlab, Hydra or any config.

python benchmarks/startup_plain.py <record.json> <output dir>

It writes ``{"setup_time", "first_step_time"}`` (``time.time()``) to ``record.json`` at the first
``on_train_batch_start`` and exits there, as :class:`common.Probe` does for ftlab.
"""

import json
import os
import sys
import time

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

SIZE, BATCH = 32, 16
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
        self.acc = MulticlassAccuracy(10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.acc(self.model(x), y)
        self.log("val/acc", self.acc)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def digits() -> tuple[DataLoader, DataLoader]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
    x = (x - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[: int(0.7 * len(y))], order[int(0.7 * len(y)) : int(0.85 * len(y))]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=BATCH, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=BATCH),
    )


class FirstStep(L.Callback):
    def __init__(self, path: str) -> None:
        self.path, self.record = path, {}

    def setup(self, trainer, pl_module, stage) -> None:
        self.record.setdefault("setup_time", time.time())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["first_step_time"] = time.time()
        with open(self.path, "w") as f:
            json.dump(self.record, f)
        os._exit(0)


if __name__ == "__main__":
    record_path, out = sys.argv[1], sys.argv[2]
    L.seed_everything(0)
    train_loader, val_loader = digits()
    trainer = L.Trainer(
        default_root_dir=out,
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=CSVLogger(out),
        callbacks=[
            ModelCheckpoint(f"{out}/checkpoints", monitor="val/acc", mode="max"),
            FirstStep(record_path),
        ],
        # As ftlab's trainer config: no sanity-check batches, no model summary, no bar (ftlab
        # shows none when stdout is not a terminal, as here).
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(Classifier(), train_loader, val_loader)
