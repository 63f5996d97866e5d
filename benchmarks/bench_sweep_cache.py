"""Frozen work shared across a sweep: the features of a frozen backbone computed once for all jobs.

sweep
    A 12-job linear-probe sweep, 4 learning rates x 3 seeds (``hparams_search=optuna``,
    ``hydra.sweeper.algorithm=grid``, ``hydra.sweeper.seeds=[0,1,2]``), run by two sweeper
    processes on one study, so that two jobs run at a time, with an empty feature cache shared
    by both (``paths.cache_dir``): EfficientNet-Lite0 (ImageNet weights) on MNIST at 64 px,
    1,000 training digits (300 with ``--quick``), 2 epochs, each process on one thread.
    The first job to need the features computes them under a lock; the others wait, then read
    them (``ftlab.finetuning.features``).

    Against: one feature computation plus 12 head fits, both taken from the sweep's own jobs:
    the computing job's feature time (``feature_cache.seconds`` in its metrics.json) plus, for
    every job, its run time minus its feature time (waiting and reading included there, so the
    sum is what 12 fits cost with the features already at hand). Ratio: the sweep's wall time
    (both processes started, both ended) over that sum. Target <= 1.5. It also records how many
    jobs computed features: 1 when the lock holds, up to 12 without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, report

from ftlab.cli import conf_dir

SEARCH_CONFIG = Path(conf_dir()) / "hparams_search" / "optuna.yaml"

BENCH = "sweep_cache"
TARGET = 1.5
LRS = "choice(0.0001,0.0003,0.001,0.003)"
SEEDS = "[0,1,2]"
RUN = [
    "model=efficientnet_lite0",
    "data=mnist",
    "data.image_size=64",
    "freeze=linear_probe",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "test=false",
    "logger=none",
]


def fixed_params() -> list[str]:
    """The other searched keys of conf/hparams_search/optuna.yaml, fixed: a grid of lrs only."""
    params = yaml.safe_load(SEARCH_CONFIG.read_text())
    keys = params["hydra"]["sweeper"]["params"]
    fixed = {"optimizer.weight_decay": "0.05"}
    return [f"{k}={fixed.get(k, '0.0')}" for k in keys if k != "optimizer.lr"]


def sweep(workdir: Path, samples: int, workers: int = 2) -> tuple[float, list[dict]]:
    """Run the sweep with ``workers`` sweeper processes; its wall time and the 12 jobs' metrics."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=optuna",
        *RUN,
        f"data.max_train_samples={samples}",
        f"optimizer.lr={LRS}",
        *fixed_params(),
        "hydra.sweeper.algorithm=grid",
        "~hydra.sweeper.sampler.n_startup_trials",
        f"hydra.sweeper.seeds={SEEDS}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweep.dir={workdir / 'sweep'}",
        f"paths.cache_dir={workdir / 'cache'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    logs = [(workdir / f"worker{i}.log").open("w") for i in range(workers)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    codes = [p.wait(timeout=3600) for p in procs]
    wall = time.perf_counter() - start
    for log in logs:
        log.close()
    if any(codes):
        tail = "".join((workdir / f"worker{i}.log").read_text()[-2000:] for i in range(workers))
        raise RuntimeError(f"a sweep worker exited {codes}:\n{tail}")
    jobs = [json.loads(p.read_text()) for p in sorted((workdir / "sweep").glob("*/metrics.json"))]
    return wall, jobs


def run(quick: bool = False) -> list[dict]:
    samples = 300 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as out:
        wall, jobs = sweep(Path(out), samples)
    if len(jobs) != 12:
        raise RuntimeError(f"the sweep ran {len(jobs)} jobs, not 12")
    caches = [job["feature_cache"] for job in jobs]
    computing = [c for c in caches if "computed" in c["sources"].values()]
    compute_s = sum(c["seconds"] for c in computing)
    fits = [job["wall_time_s"] - c["seconds"] for job, c in zip(jobs, caches, strict=True)]
    alone = compute_s + sum(fits)
    ratio = wall / alone
    return [
        report(
            BENCH,
            "12-job probe sweep / (1 compute + 12 fits)",
            ratio,
            "ratio",
            f"<= {TARGET:g}",
            ratio <= TARGET and len(computing) == 1,
            sweep_wall_s=round(wall, 2),
            feature_compute_s=round(compute_s, 2),
            head_fits_s=[round(f, 2) for f in fits],
            jobs_that_computed_features=len(computing),
            waited_or_read_s=[round(c["seconds"], 2) for c in caches],
            samples=samples,
            quick=quick,
            workers=2,
            overrides=RUN,
        )
    ]


if __name__ == "__main__":
    from common import quiet

    quiet()
    run(quick="--quick" in sys.argv)
