"""``trainer.accelerator`` / ``trainer.devices`` checked against the machine before any work.

Lightning accepts ``accelerator=cpu devices=999`` and spawns 999 processes, answers
``accelerator=gpu`` on a machine without one with "No supported gpu backend found!", and a
negative CPU count with a TypeError; these checks say which key to change instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import torch

from ftlab.errors import FtlabError

GPU_NAMES = ("gpu", "cuda")
# Accelerators Lightning runs only with a package of their own (its error is a traceback
# naming a version requirement, from inside the Trainer's construction).
NEEDS_PACKAGE = {"tpu": "torch_xla", "hpu": "habana_frameworks"}


def cpu_cores() -> int:
    """Cores this process may run on (the container's or job's cpuset, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_devices(trainer: Mapping[str, Any]) -> None:
    """Raise :class:`FtlabError` when ``trainer.devices`` asks for more than the machine has."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    devices = trainer.get("devices", "auto")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator in GPU_NAMES and gpus == 0:
        raise FtlabError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False): use trainer=cpu or trainer.accelerator=cpu"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise FtlabError(
            "trainer.accelerator=mps but Apple's MPS is not available here: "
            "use trainer.accelerator=cpu"
        )
    for name, package in NEEDS_PACKAGE.items():
        if accelerator == name and importlib.util.find_spec(package) is None:
            raise FtlabError(
                f"trainer.accelerator={accelerator} needs the {package} package, which is not "
                "installed here: use trainer.accelerator=cpu (or gpu on a CUDA machine)"
            )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not gpus)
    precision = str(trainer.get("precision", "32-true"))
    if on_cpu and precision in ("16-mixed", "16"):
        # Lightning silently runs bf16-mixed instead (float16 autocast is for GPUs), and the
        # record would still say 16-mixed.
        raise FtlabError(
            f"trainer.precision={precision} on the CPU: Lightning would run bf16-mixed instead "
            "(float16 autocast is for GPUs); set trainer.precision=bf16-mixed or 32-true"
        )
    if accelerator in GPU_NAMES or (accelerator == "auto" and gpus):
        _check_count(accelerator, devices, gpus, "GPU")
    elif accelerator == "cpu" or (accelerator == "auto" and not torch.backends.mps.is_available()):
        _check_count(accelerator, devices, cpu_cores(), "CPU core")
    # tpu, mps and custom accelerators: Lightning's own checks.


def _check_count(accelerator: str, devices: Any, available: int, unit: str) -> None:
    where = f"trainer.devices={devices} with trainer.accelerator={accelerator}"
    if devices is None or str(devices).strip().lower() == "auto":
        return
    if isinstance(devices, str) and "," in devices:  # Lightning's "0,1" index syntax
        devices = [int(d) for d in devices.split(",") if d.strip()]
    if isinstance(devices, list | tuple):
        unknown = [d for d in devices if not 0 <= int(d) < available]
        if unknown and unit == "GPU":
            raise FtlabError(
                f"{where}: this machine has {available} GPU(s), numbered 0..{available - 1}, "
                f"so there is no GPU {unknown[0]}: pick indices below {available}"
            )
        return
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise FtlabError(
            f"{where}: give a count, -1 (all) or auto, e.g. trainer.devices=1"
        ) from None
    if count == -1 and unit == "GPU":
        return
    if count < 1:
        raise FtlabError(f"{where}: give a count of at least 1 (or auto), e.g. trainer.devices=1")
    if count > available:
        raise FtlabError(
            f"{where} asks for {count} {unit}s but this machine has {available}: "
            f"set trainer.devices to at most {available} (one process per device)"
        )


def compile_backbone(backbone: torch.nn.Module, accelerator: str | None) -> None:
    """``compile=true``: ``torch.compile`` the backbone's library model in place (parameter
    names, and so checkpoints and the plan, stay those of the uncompiled model).

    torch compiles lazily, at the first forward; what it needs is checked here so that a
    machine that cannot compile says so in one line before training, not in a traceback from
    inside the first step: a Python that dynamo supports, and for the CPU a C++ compiler
    (inductor generates C++), for a GPU Triton.
    """
    import shutil

    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise FtlabError(
            "compile=true: torch.compile does not support this Python or platform: set "
            "compile=false"
        )
    gpu = str(accelerator or "auto").lower() in (*GPU_NAMES, "auto") and torch.cuda.is_available()
    if gpu:
        from torch.utils._triton import has_triton

        if not has_triton():
            raise FtlabError(
                "compile=true needs Triton on a GPU: pip install triton, or compile=false"
            )
    elif not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise FtlabError(
            "compile=true on the CPU needs a C++ compiler (torch's inductor generates C++): "
            "install g++ (apt-get install g++), or set compile=false"
        )
    backbone.model.compile()
