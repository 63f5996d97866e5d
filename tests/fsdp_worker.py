"""Two gloo ranks train a tiny timm ViT under trainer=fsdp (ftlab.sharding), several scenarios
in one launch (a launch costs two interpreters' imports); rank 0 writes what it saw as JSON.

    python tests/fsdp_worker.py OUT_DIR [--strategy fsdp|ddp]

Run by tests/test_fsdp.py. Lightning's launcher starts rank 1 by running this script again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ftlab.backbones import build_backbone
from ftlab.finetuning.freezing import checksum
from ftlab.finetuning.optimization import Optimization
from ftlab.module import Classifier
from ftlab.sharding import ShardedStrategy, consolidate, trainable_grad_bytes


class Data(L.LightningDataModule):
    def __init__(self, n: int = 32, size: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)


class Watch(L.Callback):
    """Per layer group, a checksum of the full weights at train start and each epoch's end;
    the optimizer's lr per param group and the gradient bytes this rank holds."""

    def __init__(self) -> None:
        self.sums: list[dict[str, str]] = []
        self.lrs: list[dict[str, float]] = []
        self.grad_bytes: list[int] = []
        self.trainable: list[list[str]] = []

    def _sums(self, module: Classifier) -> dict[str, str]:
        return {name: checksum(module, set(params)) for name, params in module.layer_groups()}

    def on_train_start(self, trainer, module) -> None:
        self.sums.append(self._sums(module))

    def on_train_epoch_start(self, trainer, module) -> None:
        opt = trainer.optimizers[0]
        self.lrs.append({g["name"]: float(g["lr"]) for g in opt.param_groups})
        self.trainable.append(sorted(n for n, p in module.named_parameters() if p.requires_grad))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if len(self.grad_bytes) < len(self.lrs):  # once per epoch
            self.grad_bytes.append(trainable_grad_bytes(module.parameters()))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.sums.append(self._sums(module))


def module(freeze: dict, seed: int = 0) -> Classifier:
    L.seed_everything(seed, verbose=False)
    backbone = build_backbone("test_vit", source="timm", pretrained=False, img_size=32)
    return Classifier(backbone, 4, freeze=freeze, optimization=Optimization(lr=1e-2))


def strategy(kind: str, **kwargs):
    if kind == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    return ShardedStrategy(process_group_backend="gloo", **kwargs)


def fit(
    kind: str,
    freeze: dict,
    epochs: int,
    root: Path,
    ckpt: str | None = None,
    **kwargs,
) -> tuple[Classifier, Watch, L.Trainer]:
    made = module(freeze)
    watch = Watch()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpts", save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy(kind, **kwargs),
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch, save],
        default_root_dir=root,
        deterministic=True,
    )
    trainer.fit(made, datamodule=Data(), ckpt_path=ckpt, weights_only=True)
    return made, watch, trainer


def record(made: Classifier, watch: Watch, trainer: L.Trainer) -> dict:
    return {
        "sums": watch.sums,
        "lrs": watch.lrs,
        "plan_lrs": {u.name: u.lr for u in made.plan.units},
        "grad_bytes": watch.grad_bytes,
        "trainable": watch.trainable,
        "groups": [name for name, _ in made.layer_groups()],
        "history": made.phases.history,
        "rank_checksums": made.phases.rank_checksums,
        "world_size": trainer.world_size,
        "units": getattr(trainer.strategy, "units", []),
        "trainable_numel": [made.plan.trainable_numel(i) for i in range(len(made.plan.phases))],
        "total": checksum(made),
    }


def main() -> None:
    out = Path(sys.argv[1])
    kind = sys.argv[sys.argv.index("--strategy") + 1] if "--strategy" in sys.argv else "fsdp"
    gradual = {"name": "gradual", "every": 1, "step": 1, "head_solver": "none"}
    results: dict = {}
    results["gradual"] = record(*fit(kind, gradual, 3, out / "full"))
    # Interrupted after 2 epochs, resumed from the sharded last.ckpt for the third.
    fit(kind, gradual, 2, out / "cut")
    last = out / "cut" / "ckpts" / "last.ckpt"
    results["resumed"] = record(*fit(kind, gradual, 3, out / "resume", ckpt=str(last)))
    results["lora"] = record(*fit(kind, {"name": "lora", "r": 4, "alpha": 8}, 2, out / "lora"))
    results["ia3"] = record(*fit(kind, {"name": "peft", "method": "ia3"}, 2, out / "ia3"))
    if kind == "fsdp":
        results["checkpointed"] = record(
            *fit(kind, gradual, 2, out / "ac", activation_checkpointing=True)
        )
    if int(__import__("os").environ.get("LOCAL_RANK", "0")) == 0:
        if kind == "fsdp":
            consolidate(out / "full" / "ckpts" / "last.ckpt", out / "model.ckpt")
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
