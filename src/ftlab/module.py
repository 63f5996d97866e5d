"""ftlab's LightningModules: the protocol every module follows, and the classifier.

:class:`FinetuneModule` is a pretrained backbone, a new head and a freezing plan. It is built
whole: the plan (which parameters train when, at which lr) is made in ``__init__`` from the
freeze spec and the learning rates, and the module attaches its own phase callback
(``configure_callbacks``), so a plain ``L.Trainer().fit(module, data)`` applies the schedule.

A module of your own (``module._target_=mypkg.MyModule``) subclasses it and overrides what
differs; everything else (schedules, discriminative lrs, LoRA, resume, the DDP rank checksums,
the feature cache, ``metrics.json``) comes with the base:

- ``make_head(num_features, num_classes) -> nn.Module``: the new head (linear by default;
  ``num_classes`` is the number of target names, ``data.classes``);
- ``loss(outputs, targets) -> Tensor``: the training objective (the task's by default:
  cross-entropy for ``task=classification``, ftlab.tasks);
- ``metrics() -> dict[str, Metric]``: torchmetrics logged as ``val/<name>`` and
  ``test/<name>``; ``train_metrics()`` those of the training steps (``metrics()`` by default);
- ``cache_blocker() -> str | None``: why the steps need the inputs themselves, if they do
  (the feature cache is then off for the run and the reason logged);
- ``fit_data(datamodule, data, trainer, cache_dir) -> LightningDataModule``: what
  ``trainer.fit`` reads (``datamodule`` by default; distillation adds cached teacher logits);
  ``report() -> dict``: what ``metrics.json`` records under ``module``.

The batches are ``(inputs, targets)`` from an ftlab data module; what ``targets`` hold is the
task's contract (ftlab.tasks.base; docs/tasks.md). Extra constructor keywords are the
``module.*`` config keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from ftlab.adapters import add_lora, add_peft, is_adapter_param
from ftlab.errors import FtlabError
from ftlab.finetuning import HEAD, Plan, build_plan
from ftlab.finetuning.auto_rgn import AutoRGN
from ftlab.finetuning.callback import PhaseCallback
from ftlab.finetuning.features import FEATURES
from ftlab.finetuning.freezing import bn_params, param_groups, set_bn_modes
from ftlab.finetuning.optimization import Optimization
from ftlab.finetuning.plan import LORA
from ftlab.finetuning.spec import FreezeSpec
from ftlab.record import ModelRecord, parse_head
from ftlab.tasks import build_task
from ftlab.tasks.base import Task

STAGES = ("train", "val", "test")
# Constructor arguments ftlab builds itself (from the config, or the checkpoint's record): never
# saved as hyperparameters.
BUILT_ARGS = ("backbone", "freeze", "optimization", "task")


def make_head(
    num_features: int, num_classes: int, kind: str = "linear", dropout: float = 0.0, hidden: int = 0
) -> nn.Module:
    """A new classifier sized for the data's classes: ``linear``, or ``mlp`` (one hidden GELU
    layer of width ``hidden``); ``dropout`` before each linear layer."""
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(num_features, hidden), nn.GELU()]
        if dropout > 0:
            layers = [nn.Dropout(dropout), *layers, nn.Dropout(dropout)]
        return nn.Sequential(*layers, nn.Linear(hidden, num_classes))
    linear = nn.Linear(num_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


class FinetuneModule(L.LightningModule):
    """Backbone + new head, trained by a freezing plan. See the module docstring for the protocol.

    Args:
        backbone: an ftlab backbone (ftlab.backbones.build_backbone).
        num_classes: the data's classes (the head's width, for the default head).
        freeze: the freezing schedule (a name, a ``freeze`` config or a FreezeSpec); None builds
            a module for inference only (no plan, no optimizer).
        optimization: learning rates, optimizer and scheduler (AdamW at 1e-3 when None).
        classes: the class names, recorded in checkpoints (default: ``0 .. num_classes-1``).
        head: the head's shape ``{kind: linear|mlp, dropout, hidden}`` (the default head).
        task: what it learns (ftlab.tasks: a Task, a ``task`` config or a name; None:
            classification). The default loss and metrics are the task's.
    """

    kind = "custom"  # the checkpoint record's module kind: eval.py restores ftlab's own only

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        freeze: FreezeSpec | Mapping[str, Any] | str | None = "none",
        optimization: Optimization | None = None,
        classes: Sequence[Any] | None = None,
        head: Mapping[str, Any] | None = None,
        task: Task | Mapping[str, Any] | str | None = None,
    ) -> None:
        super().__init__()
        self.task: Task = task if isinstance(task, Task) else build_task(task)
        self.log_prefix = ""  # "best/" while train.py validates the best checkpoint
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head_settings = parse_head(
            dict(head or {"kind": "linear"}), "module.head", "module.head"
        )
        self.freeze = FreezeSpec.parse(freeze) if freeze is not None else None
        # Adapters before the head and the plan, so that they get their layer group.
        lora = add_lora(backbone, self.freeze) if self.freeze is not None else None
        peft = add_peft(backbone, self.freeze) if self.freeze is not None else None
        self.head = self.make_head(backbone.num_features, self.num_classes)
        self.optimization = optimization or Optimization()
        self.plan: Plan | None = None
        self.phases: PhaseCallback | None = None
        # Where the weights came from when not the backbone's own (init_from: ftlab.compose).
        self.started_from: dict[str, Any] | None = None
        if self.freeze is not None:
            self.plan = build_plan(
                self.freeze,
                self.layer_groups(),
                dict(self.named_parameters()),
                self.optimization.lrs(),
                self.no_weight_decay(),
                bn_params(self),
            )
            self.phases = PhaseCallback(self.plan)
        # freeze=auto_rgn scales the plan's lrs as it trains: a second callback of the module's.
        self.auto_rgn: AutoRGN | None = AutoRGN.for_spec(self.freeze, self.plan)
        self.record = self._record(list(classes) if classes else list(range(num_classes)), lora)
        if self.record is not None and peft is not None:
            self.record = replace(self.record, peft=peft)
        self._metrics = nn.ModuleDict(  # keys are attributes: "train" would shadow nn.Module.train
            {
                "train_": MetricCollection(dict(self.train_metrics()), prefix="train/"),
                "val_": MetricCollection(dict(self.metrics()), prefix="val/"),
                "test_": MetricCollection(dict(self.metrics()), prefix="test/"),
            }
        )

    # -- the protocol: override in a module of your own ---------------------------------------

    def make_head(self, num_features: int, num_classes: int) -> nn.Module:
        """The new head on the backbone's pooled features."""
        settings = self.head_settings
        return make_head(
            num_features,
            num_classes,
            settings["kind"],
            settings["dropout"],
            settings.get("hidden", 0),
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective (also logged as ``<stage>/loss``): the task's by default."""
        return self.task.loss(outputs, targets)

    def metrics(self) -> Mapping[str, Metric]:
        """Fresh torchmetrics for validation and test, by name: the task's by default."""
        return self.task.metrics(self.num_classes)

    def train_metrics(self) -> Mapping[str, Metric]:
        """Fresh torchmetrics for the training steps (those of :meth:`metrics` by default)."""
        return self.metrics()

    def cache_blocker(self) -> str | None:
        """Why the training steps need the inputs themselves (no cached features), or None."""
        return None

    def fit_data(
        self,
        datamodule: L.LightningDataModule,
        data: L.LightningDataModule,
        trainer: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> L.LightningDataModule:
        """What ``trainer.fit`` reads: ``datamodule`` (the run's ``data``, or the feature cache
        standing in for it) by default. A module whose training steps need more per sample
        wraps it; ``trainer`` holds the Trainer's keyword arguments, ``cache_dir`` the run's
        cache folder (ftlab.distillation adds the teacher's cached logits)."""
        return datamodule

    def report(self) -> dict[str, Any]:
        """What ``metrics.json`` records under ``module`` about the module's own work."""
        return {}

    def logged_metrics(self) -> list[str]:
        """Every name the steps log (``train/loss``, ``val/acc``, ...): what
        ``optimized_metric`` and the checkpoint's monitor may name."""
        names = [f"train/{n}" for n in ("loss", *self.train_metrics())]
        return names + [f"{s}/{n}" for s in ("val", "test") for n in ("loss", *self.metrics())]

    def check_optimized_metric(self, names: Any) -> None:
        """Refuse, before training, an ``optimized_metric`` (a name or a list) that these
        steps never log, in one line naming the ones they do. Names outside the steps'
        stages (e.g. ``trainable_params``, a search objective from metrics.json) pass."""
        logged = self.logged_metrics()
        for name in [names] if isinstance(names, str) else list(names or []):
            if str(name).split("/")[0] in STAGES and name not in logged:
                ours = [n for n in logged if n.startswith("val/")]
                suggestion = self.task.metric if self.task.metric in ours else ours[-1]
                raise FtlabError(
                    f"optimized_metric={name} is not among this module's metrics "
                    f"{', '.join(ours)}: set optimized_metric={suggestion}"
                )

    # -- layer groups and the plan -------------------------------------------------------------

    def layer_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """The backbone's groups (input first) plus the head, with module-level names.

        LoRA adapters form one group ``lora`` just below the head: the backbone groups keep
        only their base weights, so a plan can train the adapters and the base weights apart.
        """
        groups = [
            (g.name, tuple(f"backbone.{p}" for p in g.param_names))
            for g in self.backbone.layer_groups()
        ]
        adapters = tuple(p for _, names in groups for p in names if is_adapter_param(p))
        if adapters:
            groups = [(g, tuple(p for p in ps if not is_adapter_param(p))) for g, ps in groups]
            groups.append((LORA, adapters))
        head = tuple(f"head.{n}" for n, _ in self.head.named_parameters())
        return [*groups, (HEAD, head)]

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning adds these to the Trainer's own at fit, validate and test: the schedule
        # applies without the caller knowing about it. One instance, so its record survives.
        return [c for c in (self.phases, self.auto_rgn) if c is not None]

    def configure_optimizers(self) -> Any:
        if self.plan is None:
            raise FtlabError(f"{type(self).__name__} was built with freeze=None: it cannot train")
        groups = param_groups(self.plan, dict(self.named_parameters()))
        return self.optimization.configure(groups, self.trainer)

    # -- forward and steps ---------------------------------------------------------------------

    def forward(self, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, Mapping) and FEATURES in inputs:
            # Cached backbone outputs (ftlab.finetuning.features), only valid while it is frozen.
            if self.training and self.backbone_trains():
                raise RuntimeError("cached features reached a phase that trains the backbone")
            return self.head(inputs[FEATURES])
        return self.head(self.task.pool(self.backbone(inputs)))

    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> FinetuneModule:
        # Every switch to training mode leaves frozen BatchNorm layers in eval mode, and a wholly
        # frozen backbone too (dropout off): a fixed feature extractor, equal to cached features.
        super().train(mode)
        set_bn_modes(self, all_eval=self.plan is not None and self.plan.bn == "eval")
        if mode and not self.backbone_trains():
            self.backbone.eval()
        return self

    def step(
        self, inputs: Any, targets: torch.Tensor, stage: str, loss_targets: Any = None
    ) -> torch.Tensor:
        """Forward, loss (against ``loss_targets`` when given, e.g. mixed soft labels) and
        logging; the metrics always compare with ``targets``."""
        outputs = self(inputs)
        loss = self.loss(outputs, targets if loss_targets is None else loss_targets)
        metrics = self._metrics[f"{stage}_"]
        metrics.update(*self.task.predictions(outputs.detach(), targets))
        # The best checkpoint's validation after fit logs as best/val/* (log_prefix), so that a
        # CSV reader does not take it for one more epoch's val/*.
        prefix = self.log_prefix if stage == "val" else ""
        on_step = stage == "train"
        # Lightning reads a progress-bar value back to the host at every step (a sync on a
        # GPU), bar or no bar: the running loss goes there only while a bar shows it.
        bar = self._trainer is not None and self._trainer.progress_bar_callback is not None
        self.log(
            f"{prefix}{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=bar or not on_step,
            sync_dist=not on_step,
            batch_size=targets.shape[0],
        )
        if prefix:
            metrics = {f"{prefix}{name}": metric for name, metric in metrics.items()}
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(*batch, "train")

    def validation_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        self.step(*batch, "val")

    def test_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        self.step(*batch, "test")

    # -- checkpoints -----------------------------------------------------------------------------

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: Any = None,
        logger: bool = True,
    ) -> None:
        """Lightning's, with the arguments ftlab builds and records itself left out.

        The backbone (an nn.Module, in the state dict), the freeze spec and the optimization
        (frozen dataclasses, which Lightning's ``apply_to_collection`` refuses when it logs
        them: ``FrozenInstanceError``) and the task (in the record) are not hyperparameters
        a checkpoint holds; the record rebuilds them. What is left is plain values (a module of
        your own's arguments, ``num_classes``, ``classes``, ``head``), which
        :meth:`load_from_checkpoint` passes back.
        """
        import inspect

        own = [ignore] if isinstance(ignore, str) else list(ignore or [])
        frame = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, ignore=[*own, *BUILT_ARGS], frame=frame, logger=logger)

    def _record(self, classes: list[Any], lora: dict[str, Any] | None) -> ModelRecord | None:
        """What checkpoints say about this model (ftlab.record): eval.py rebuilds it from that."""
        backbone = getattr(self.backbone, "record", None)
        if backbone is None:  # a backbone not built by ftlab: nothing to rebuild it from
            return None
        return ModelRecord(
            backbone=backbone,
            classes=classes,
            head=self.head_settings,
            lora=lora,
            module=self.kind,
            task=self.task.record(),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only: the model is rebuilt from them through ftlab's own builders.
        checkpoint["ftlab"] = self.record.to_dict() if self.record else {}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> FinetuneModule:
        """This class, trained weights loaded, from a checkpoint ftlab wrote (LoRA included).

        Lightning's own version calls ``cls(**hyper_parameters)``, which cannot hold a backbone
        without pickling code. The checkpoint's plain record says how to rebuild the backbone,
        its adapters and the head (ftlab.record; read with ``weights_only``, nothing in the file
        is called); the class is the caller's choice. ``kwargs`` are the class's own arguments
        (e.g. a module of your own's); the module comes back for inference (``freeze=None``),
        in eval mode, on ``map_location`` (a device) when given.
        """
        from ftlab.checkpoints import load_checkpoint

        path = str(checkpoint_path)
        ckpt = load_checkpoint(path, key="checkpoint_path")
        # What save_hyperparameters() kept (plain values): the constructor gets them back, and
        # a value the caller passes wins, as in Lightning.
        saved = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items()}
        for key in (*BUILT_ARGS, "num_classes", "classes", "head"):  # from the record
            saved.pop(key, None)
        module = cls.from_checkpoint(ckpt, path, **{**saved, **kwargs})
        if map_location is not None:
            module.to(map_location)
        return module.eval()

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict[str, Any], path: str = "?", **kwargs: Any
    ) -> FinetuneModule:
        """This class from a checkpoint read by :func:`ftlab.checkpoints.load_checkpoint` (its
        record parsed): the backbone by ftlab's own builders, its adapters, the head, the
        weights. ``path`` names the file in errors."""
        from ftlab.checkpoints import check_state
        from ftlab.record import restore_backbone

        record: ModelRecord = ckpt["ftlab"]
        backbone = restore_backbone(record.backbone)
        if record.lora:  # the same adapters as in training, so that the state dict fits
            from ftlab.adapters import inject_lora

            inject_lora(backbone, record.lora)
        if record.peft:  # a peft method's adapters, from the fixed method table
            from ftlab.adapters.peft_methods import inject_peft

            inject_peft(backbone, record.peft, f"{path}: ftlab.peft")
        if record.task["name"] != "classification":  # a module of one's own may not take it
            kwargs.setdefault("task", record.task)
        module = cls(
            backbone,
            len(record.classes),
            freeze=None,
            classes=record.classes,
            head=record.head,
            **kwargs,
        )
        module.record = record
        check_state(ckpt, module, path)  # e.g. saved by another timm version that renamed layers
        module.load_state_dict(ckpt["state_dict"])
        return module


class Classifier(FinetuneModule):
    """ftlab's own module for any task (``task=...``, ftlab.tasks): the new head, the task's
    loss and metrics. For single-label classification (the default) also cross-entropy's label
    smoothing and timm's Mixup / CutMix on the training images.

    Args:
        label_smoothing: cross-entropy's label smoothing.
        mixup: timm ``Mixup``'s ``mixup_alpha`` (0: off).
        cutmix: timm ``Mixup``'s ``cutmix_alpha`` (0: off). With either on, the training steps
            see mixed images, so the feature cache is off.
        (the rest: :class:`FinetuneModule`)
    """

    kind = "classifier"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        freeze: FreezeSpec | Mapping[str, Any] | str | None = "none",
        optimization: Optimization | None = None,
        classes: Sequence[Any] | None = None,
        head: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        task: Task | Mapping[str, Any] | str | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, freeze, optimization, classes, head, task)
        self.label_smoothing = float(label_smoothing)
        self.mixer = None
        if self.task.name != "classification" and (label_smoothing or mixup or cutmix):
            raise FtlabError(
                "module.label_smoothing / module.mixup / module.cutmix act on class labels; "
                f"task={self.task.name} has none: set them to 0"
            )
        if mixup > 0 or cutmix > 0:
            if getattr(backbone, "modality", "image") != "image":
                raise FtlabError(
                    "module.mixup / module.cutmix mix images; this backbone reads text: set them "
                    "to 0"
                )
            from timm.data import Mixup

            # timm smooths the mixed targets itself; the loss adds no second smoothing to them.
            self.mixer = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=self.label_smoothing,
                num_classes=num_classes,
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task.name != "classification":
            return super().loss(outputs, targets)
        if targets.is_floating_point():  # soft targets from Mixup, smoothed already
            return F.cross_entropy(outputs, targets)
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def train_metrics(self) -> Mapping[str, Metric]:
        # The task's: for classification micro accuracy only, without a per-step host sync.
        return self.task.train_metrics(self.num_classes)

    def cache_blocker(self) -> str | None:
        if self.mixer is not None:
            return "module.mixup/module.cutmix mix the training images in every step"
        return None

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        # timm's Mixup pairs each sample with its mirror in the batch and needs an even count:
        # an odd last batch trains unmixed. The metrics compare the mixed images' predictions
        # with their first labels.
        if self.mixer is None or not torch.is_tensor(inputs) or len(labels) % 2:
            return self.step(inputs, labels, "train")
        mixed, soft = self.mixer(inputs, labels)
        return self.step(mixed, labels, "train", loss_targets=soft)
