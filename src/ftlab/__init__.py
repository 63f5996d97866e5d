"""ftlab: compose, run and sweep fine-tuning experiments on pretrained backbones.

The library runs without Hydra; these are its public names (imported on first use, so that
``import ftlab`` stays free of torch)::

    import lightning as L
    import ftlab

    backbone = ftlab.build_backbone("test_vit", pretrained=False)
    data = ftlab.build_data({"_target_": "ftlab.data.DigitsDataModule"}, backbone.input_spec)
    module = ftlab.Classifier(
        backbone, data.num_classes, freeze="gradual", optimization=ftlab.Optimization(lr=3e-4)
    )
    L.Trainer(max_epochs=3).fit(module, data)  # the module applies its schedule itself
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "build_backbone": "ftlab.backbones",
    "build_data": "ftlab.data",
    "FreezeSpec": "ftlab.finetuning.spec",
    "Optimization": "ftlab.finetuning.optimization",
    "Plan": "ftlab.finetuning.plan",
    "build_plan": "ftlab.finetuning.plan",
    "FinetuneModule": "ftlab.module",
    "Classifier": "ftlab.module",
    "Distiller": "ftlab.distillation",
    "FeatureCache": "ftlab.finetuning.features",
    "RunEvaluation": "ftlab.evaluation",
    "load_checkpoint": "ftlab.checkpoints",
    "restore_module": "ftlab.checkpoints",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
