"""Start-up: how long before ftlab does anything useful.

compose
    Wall time of ``python train.py --cfg job`` (Hydra composes and prints the config; ftlab's
    CLI imports no torch for that), the median of ``repeats`` runs after one warm-up run (the
    operating system's file cache). One more run under ``python -X importtime`` checks that
    torch was not imported. Target <= 2 s.
first step
    Process start to the first ``on_train_batch_start`` of the default experiment
    (``python train.py experiment=quickstart``: EfficientNet-Lite0 with its packaged ImageNet
    weights, MNIST at 96 px, gradual unfreezing), read by :class:`common.Probe`, which exits
    the process there. Split into imports + composition + model and data (process start to
    Lightning's ``setup``), then to ``on_train_start`` (Trainer setup and, since phase 0 trains
    the head alone, computing the cached train features), then to the first step. Measured
    with a fresh ``paths.cache_dir`` (features computed) and again with the features the first
    run wrote (loaded from disk). Report only.
tiny job against plain Lightning
    Process start to the first training step of a tiny job, ftlab's CLI
    (``python train.py model=test_cnn data=digits data.image_size=32 data.batch_size=16
    freeze=none``) against ``startup_plain.py``, a plain Lightning script doing the same work
    (same timm model, data, optimizer, CSV logger and checkpoint callback; no Hydra, no
    ftlab). The two alternate (ABBA order) after one warm-up round; the value is the median of
    the paired differences, wall time. The children's CPU time (user + system) is reported
    too: it is less sensitive to other work on the machine. A last run of each under
    ``python -X importtime`` lists the modules ftlab imports beyond the plain script.
    Target: ftlab within 1 s of plain Lightning.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import HERE, ROOT, report, train_cli

COMPOSE = [sys.executable, str(ROOT / "train.py"), "--cfg", "job"]
COMPOSE_TARGET = 2.0
FIRST_STEP = ["experiment=quickstart", "+callbacks.bench.exit_at_first_step=true"]
# The tiny job, the same on both sides (startup_plain.py holds the plain Lightning version).
TINY = [
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=16",
    "freeze=none",
    "trainer.accelerator=cpu",
    "+callbacks.bench.exit_at_first_step=true",
]
PLAIN = HERE / "startup_plain.py"
TINY_TARGET = 1.0  # seconds ftlab may add to plain Lightning's time to the first step


def compose_time(repeats: int) -> list[dict]:
    def once(extra: list[str] = ()) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        done = subprocess.run(
            [*COMPOSE[:1], *extra, *COMPOSE[1:]], cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0 or "freeze:" not in done.stdout:
            raise RuntimeError(f"--cfg job failed ({done.returncode}): {done.stderr[-2000:]}")
        return time.perf_counter() - start, done

    once()  # warm-up: the file cache
    times = [once()[0] for _ in range(repeats)]
    _, traced = once(["-X", "importtime"])
    modules = [line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()]
    torch_imported = any(m == "torch" or m.startswith("torch.") for m in modules)
    seconds = statistics.median(times)
    return [
        report(
            "startup",
            "python train.py --cfg job",
            seconds,
            "s",
            f"<= {COMPOSE_TARGET:g}",
            seconds <= COMPOSE_TARGET and not torch_imported,
            runs_s=[round(t, 3) for t in times],
            imports_torch=torch_imported,
            modules_imported=len(modules),
        )
    ]


def first_step(workdir: str) -> dict:
    run = train_cli(FIRST_STEP, workdir=workdir)
    probe = run["probe"]
    if not probe or "first_step_time" not in probe:
        raise RuntimeError(f"no first step recorded:\n{run['stdout'][-2000:]}")
    start = run["start_time"]
    return {
        "total_s": probe["first_step_time"] - start,
        "to_setup_s": probe["setup_time"] - start,
        "setup_to_train_start_s": probe["train_start_time"] - probe["setup_time"],
        "train_start_to_first_step_s": probe["first_step_time"] - probe["train_start_time"],
    }


def first_step_time() -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as workdir:
        # The same workdir holds paths.cache_dir: the second run loads what the first computed.
        for case in ("features computed", "features from disk"):
            parts = first_step(workdir)
            records.append(
                report(
                    "startup",
                    f"quickstart to first step ({case})",
                    parts["total_s"],
                    "s",
                    "report only",
                    None,
                    **{k: round(v, 3) for k, v in parts.items()},
                    command="python train.py experiment=quickstart",
                )
            )
    return records


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tiny_ftlab(workdir: str) -> dict[str, float]:
    cpu = _children_cpu_s()
    run = train_cli(TINY, workdir=workdir)
    probe = run["probe"] or {}
    if "first_step_time" not in probe:
        raise RuntimeError(f"no first step recorded:\n{run['stdout'][-2000:]}")
    return {
        "wall_s": probe["first_step_time"] - run["start_time"],
        "cpu_s": _children_cpu_s() - cpu,
        "to_setup_s": probe["setup_time"] - run["start_time"],
    }


def _tiny_plain(workdir: str) -> dict[str, Any]:
    record = Path(workdir) / f"plain-{time.time_ns()}.json"
    command = [sys.executable, str(PLAIN), str(record), f"{workdir}/plain-{time.time_ns()}"]
    cpu, start = _children_cpu_s(), time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not record.is_file():
        raise RuntimeError(f"{PLAIN.name} exited {done.returncode}: {done.stderr[-2000:]}")
    times = json.loads(record.read_text())
    return {
        "wall_s": times["first_step_time"] - start,
        "cpu_s": _children_cpu_s() - cpu,
        "to_setup_s": times["setup_time"] - start,
        "stderr": done.stderr,
    }


def _imported(importtime_stderr: str) -> dict[str, int]:
    """``{module: self microseconds}`` from ``python -X importtime``'s report."""
    out = {}
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            self_us, _, name = line.split("|")
            out[name.strip()] = int(self_us.split(":")[1])
    return out


def imports_added(workdir: str) -> dict[str, float]:
    """Modules ftlab's tiny job imports that the plain script does not, by top-level package:
    ``{package: self seconds under -X importtime}`` (inflated by the tracing itself)."""
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # python -X importtime, for the children
    try:
        plain = _imported(_tiny_plain(workdir)["stderr"])
        ftlab = _imported(train_cli(TINY, workdir=workdir)["stderr"])
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]
    added: Counter[str] = Counter()
    for name in set(ftlab) - set(plain):
        added[name.split(".")[0]] += ftlab[name] / 1e6
    return {name: round(seconds, 3) for name, seconds in added.most_common()}


def tiny_vs_plain(repeats: int) -> list[dict]:
    sides = {"ftlab": _tiny_ftlab, "plain": _tiny_plain}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    load = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as workdir:
        for round_ in range(repeats + 1):  # round 0 warms the file cache and is dropped
            order = list(sides) if round_ % 2 else list(reversed(sides))  # ABBA
            for name in order:
                times = sides[name](workdir)
                if round_:
                    runs[name].append({k: round(v, 3) for k, v in times.items() if k != "stderr"})
            load.append(round(os.getloadavg()[0], 2))
        added = imports_added(workdir)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    paired = [f["wall_s"] - p["wall_s"] for f, p in zip(runs["ftlab"], runs["plain"], strict=True)]
    value = statistics.median(paired)
    return [
        report(
            "startup",
            "tiny job to first step, ftlab - plain Lightning",
            value,
            "s",
            f"<= {TINY_TARGET:g}",
            value <= TINY_TARGET,
            ftlab_wall_s=median("ftlab", "wall_s"),
            plain_wall_s=median("plain", "wall_s"),
            ftlab_cpu_s=median("ftlab", "cpu_s"),
            plain_cpu_s=median("plain", "cpu_s"),
            ftlab_to_setup_s=median("ftlab", "to_setup_s"),
            plain_to_setup_s=median("plain", "to_setup_s"),
            paired_wall_differences_s=[round(d, 3) for d in paired],
            runs=runs,
            load_average_1min=load,
            imports_added_s=added,
            command="python train.py " + " ".join(TINY[:-1]) + f" vs python {PLAIN.name}",
        )
    ]


def run(quick: bool = False) -> list[dict]:
    return (
        compose_time(repeats=3 if quick else 5)
        + tiny_vs_plain(repeats=2 if quick else 6)
        + first_step_time()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    run(parser.parse_args().quick)
