"""The Hydra edge: a composed run config turned into ftlab's plain objects.

``train`` and ``evaluate`` call these; below them nothing imports Hydra or OmegaConf. Each
function reads one config group and returns what the library takes: a backbone, a data module,
the module (built whole, plan included), loggers, callbacks and the Trainer. ``instantiate`` is
used here only, on the groups that name a class (``model``, ``module``, ``optimizer``,
``scheduler``, ``logger``, ``callbacks``, ``trainer``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import IterableDataset

from ftlab.data import build_data
from ftlab.data.base import ClassificationDataModule
from ftlab.devices import compile_backbone
from ftlab.errors import FtlabError
from ftlab.finetuning import Plan
from ftlab.finetuning.optimization import Optimization
from ftlab.finetuning.spec import FreezeSpec
from ftlab.init_from import start_from
from ftlab.loggers import logger_kwargs
from ftlab.module import FinetuneModule
from ftlab.options import named_class
from ftlab.sweeps import wandb_context
from ftlab.tasks import build_task
from ftlab.tasks.base import Task

log = logging.getLogger("ftlab")

# ftlab's own keys inside the optimizer and scheduler configs; torch never sees them.
OPTIMIZER_KEYS = ("layer_decay", "lr_range")
SCHEDULER_KEYS = ("interval", "monitor")
# conf/module/classifier.yaml's keys besides _target_: a module of one's own rarely takes them.
CLASSIFIER_KEYS = {"head", "label_smoothing", "mixup", "cutmix"}


def plain(node: Any) -> Any:
    """A config node as plain, resolved values (dicts, lists, scalars)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def backbone(cfg: DictConfig) -> Any:
    """The ``model`` group: ``ftlab.backbones.build_backbone`` with its options."""
    return instantiate(cfg.model)  # model.init_from is applied to the module (model_and_data)


def task(cfg: DictConfig) -> Task:
    """The ``task`` group (ftlab.tasks; classification when the config has none)."""
    return build_task(plain(cfg.get("task")))


def data(
    cfg: DictConfig, input_spec: Any, run_task: Task | None = None
) -> ClassificationDataModule:
    """The ``data`` group for the backbone's input spec (plain values: ftlab.data.build_data),
    split the way the task says."""
    built = build_data(plain(cfg.data), input_spec)
    built.splitter = (run_task or task(cfg)).split
    return built


def check_targets(run_task: Task, dm: ClassificationDataModule) -> None:
    """The task's target contract on the first training sample, in one line before training."""
    train = dm._ready().train
    if isinstance(train, IterableDataset):  # a stream has no first sample to look at up front
        return
    if len(train) and isinstance(train[0], tuple | list) and len(train[0]) == 2:  # type: ignore[arg-type]
        run_task.check_targets(
            torch.as_tensor(train[0][1]), dm.num_classes, f"data={type(dm).__name__}"
        )


def optimization(cfg: DictConfig) -> Optimization:
    """The ``optimizer`` and ``scheduler`` groups: the plan's lrs and the two factories."""
    optimizer = plain(cfg.optimizer)
    own = {k: optimizer.pop(k) for k in OPTIMIZER_KEYS if k in optimizer}
    scheduler = plain(cfg.scheduler)
    options = {k: scheduler.pop(k) for k in SCHEDULER_KEYS if k in scheduler}
    return Optimization(
        lr=optimizer.get("lr"),
        weight_decay=float(optimizer.get("weight_decay") or 0.0),
        layer_decay=own.get("layer_decay"),
        lr_range=own.get("lr_range"),
        optimizer=instantiate(optimizer),
        scheduler=instantiate(scheduler) if scheduler.get("_target_") else None,
        interval=options.get("interval", "step"),
        monitor=options.get("monitor"),
    )


def module(cfg: DictConfig, backbone: Any, data: ClassificationDataModule) -> FinetuneModule:
    """The ``module`` group (ftlab.module.Classifier by default, or the user's own class), built
    whole: its plan comes from ``freeze`` and the optimizer's lrs."""
    options = plain(cfg.module)
    target = options.pop("_target_", None)
    cls = _module_class(target)
    run_task = task(cfg)
    if run_task.name != "classification" or _takes(cls, "task"):
        options["task"] = run_task  # a module of one's own without the argument: classification
    try:
        return cls(
            backbone=backbone,
            num_classes=data.num_classes,
            classes=list(data.classes),
            freeze=FreezeSpec.parse(plain(cfg.freeze)),
            optimization=optimization(cfg),
            **options,
        )
    except TypeError as err:
        if "argument" not in str(err):
            raise
        hint = "see its arguments in conf/module"
        if "unexpected keyword" in str(err) and options.keys() & CLASSIFIER_KEYS:
            hint = "for your own module start from module=custom, not the classifier's keys"
        raise FtlabError(f"module ({target}): {_short_error(err)}; {hint}") from None


def model_and_data(cfg: DictConfig) -> tuple[FinetuneModule, ClassificationDataModule]:
    """The run's module, built whole, and its data, set up for fit: what ``train`` trains."""
    built = backbone(cfg)
    run_task = task(cfg)
    dm = data(cfg, built.input_spec, run_task)
    dm.prepare_data()
    dm.setup("fit")
    check_targets(run_task, dm)
    if cfg.get("compile"):
        compile_backbone(built, cfg.trainer.get("accelerator"))
    made = module(cfg, built, dm)
    if cfg.model.get("init_from"):  # another run's fine-tuned weights: a new run, not a resume
        made.started_from = start_from(made, str(cfg.model.init_from))
    return made, dm


def _takes(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (by name, or through ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _short_error(err: TypeError) -> str:
    """``Regressor.__init__() got an unexpected ...`` without the ``__init__()``."""
    return str(err).replace(".__init__()", "").replace("__init__() ", "")


def _module_class(target: Any) -> type[FinetuneModule]:
    cls = named_class(target, FinetuneModule)
    if cls is None:
        raise FtlabError(
            f"module._target_={target} is not a LightningModule class ftlab can train: subclass "
            "ftlab.module.FinetuneModule (README: Your own module) and give its dotted path"
        )
    return cls


def loggers(cfg: DictConfig) -> list[Logger]:
    """The ``logger`` group's entries; wandb offline without a key, grouped by sweep."""
    built: list[Logger] = []
    sweep = wandb_context()
    for conf in (cfg.get("logger") or {}).values():
        if isinstance(conf, Mapping) and conf.get("_target_"):
            built.append(instantiate(conf, **logger_kwargs(plain(conf), sweep)))
    return built


def callbacks(cfg: DictConfig, logging: bool = True) -> list[L.Callback]:
    """The ``callbacks`` group's entries. Without a logger (``logger=none``) the lr monitor is
    left out: Lightning refuses a LearningRateMonitor that has nowhere to log."""
    built = [
        instantiate(conf)
        for conf in (cfg.get("callbacks") or {}).values()
        if isinstance(conf, Mapping) and conf.get("_target_")
    ]
    if not logging:
        dropped = [c for c in built if isinstance(c, LearningRateMonitor)]
        if dropped:
            log.info("logger=none: the lr monitor is off (it logs to a logger)")
        built = [c for c in built if c not in dropped]
    return built


def trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """The ``trainer`` group's keyword arguments, plus what the run adds (callbacks, loggers)."""
    return instantiate(cfg.trainer, **kwargs)


def overrides() -> list[str]:
    """The running job's command-line overrides ([] outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_settings(cfg: DictConfig, plan: Plan | None) -> dict[str, Any]:
    """What the loggers record about the run: the resolved config (paths left out), the config
    group chosen for each of model, data, freeze, module, ... and the plan's phase starts."""
    from hydra.core.hydra_config import HydraConfig

    settings: dict[str, Any] = plain(cfg)
    for machine_specific in ("paths", "hydra"):
        settings.pop(machine_specific, None)
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        settings["choice"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    if plan is not None:
        settings["schedule"] = {
            "phases": len(plan.phases),
            "starts": [p.epoch for p in plan.phases],
        }
    return settings
