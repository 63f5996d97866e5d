"""Shared pieces of the benchmarks: the result line, a model with its plan, and timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def report(bench: str, case: str, value: float, unit: str, target: str, ok: bool | None, **extra):
    """Print one JSON line (machine) and one human line; return the record."""
    record = {
        "bench": bench,
        "case": case,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "ok": ok,
        **extra,
    }
    print(json.dumps(record), flush=True)
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"# {bench:9s} {case:42s} {value:10.4g} {unit:8s} target {target}{verdict}", flush=True)
    return record


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def elapsed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each case, run in turns so that machine noise hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(elapsed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def build_module(model: str, freeze: str, image_size: int, num_classes: int = 10, **opt):
    """A FinetuneModule with its plan, as ``train`` builds it (timm, random init)."""
    from ftlab.backbones import build_backbone
    from ftlab.finetuning import build_plan
    from ftlab.finetuning.freezing import bn_params
    from ftlab.module import FinetuneModule, make_head

    backbone = build_backbone(model, source="timm", pretrained=False)
    head = make_head(backbone.num_features, num_classes)
    module = FinetuneModule(backbone, head, num_classes)
    module.plan = build_plan(
        {"name": freeze},
        module.layer_groups(),
        dict(module.named_parameters()),
        {"lr": 1e-3, "weight_decay": 0.05, **opt},
        module.no_weight_decay(),
        bn_params(module),
    )
    module.optimizer_factory = lambda groups: torch.optim.AdamW(groups, lr=1e-3)
    return module


def write_results(name: str, records: list[dict]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "results": records}, indent=2) + "\n")
    return path
