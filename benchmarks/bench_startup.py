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
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, report, train_cli

COMPOSE = [sys.executable, str(ROOT / "train.py"), "--cfg", "job"]
COMPOSE_TARGET = 2.0
FIRST_STEP = ["experiment=quickstart", "+callbacks.bench.exit_at_first_step=true"]


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


def run(quick: bool = False) -> list[dict]:
    return compose_time(repeats=3 if quick else 5) + first_step_time()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    run(parser.parse_args().quick)
