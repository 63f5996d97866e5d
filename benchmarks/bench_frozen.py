"""Frozen work: what ftlab saves while only the head trains on a frozen backbone.

probe epoch
    A linear-probe epoch on cached features against one on images, same backbone and data:
    real CLI runs (``python train.py model=efficientnet_lite0 data=mnist data.image_size=64
    data.max_train_samples=1000 freeze=linear_probe trainer.max_epochs=3``, 1,000 train and 750
    val images, batch 32), ``freeze.cache_features=true`` and ``false``, each with a fresh
    ``paths.cache_dir`` so that no earlier invocation's disk cache is loaded (checked: the
    cached run must report its features as computed). An epoch is on_train_epoch_start to
    on_train_epoch_end: its train batches plus its validation, both on features when cached.
    The features (train and val) are computed before the first epoch; that one-off cost is
    reported as the cache build. The first epoch of each run is left out as warm-up. Runs
    alternate uncached/cached ``repeats`` times; ratio of the medians of the pooled epochs,
    and the same for the train part alone (epoch minus validation).
phase-0 step
    A step of gradual unfreezing's phase 0 (the head alone trains; the backbone is frozen, in eval
    mode, and no backward runs through it) against a full fine-tuning step: same model, data and
    batch (EfficientNet-Lite0 at 64 px, batch 32), ftlab's real module, optimizer and
    PhaseCallback fitted by a Lightning Trainer, no feature cache, so that the phase-0 step
    runs the backbone forward. on_train_batch_start to on_train_batch_end (forward, backward,
    optimizer step), the first steps of each fit dropped as warm-up, fits alternated; ratio of
    median step times. Target >= 2: a full step is the backbone's forward plus a backward
    about twice its cost plus AdamW over every weight, the phase-0 step the forward alone (no
    autograd graph) plus a linear head, so about 3x is the expectation and 2x leaves room for
    the fixed per-step cost (Lightning hooks, logging, metrics).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from common import Probe, compose, fit_ftlab, quiet, report, train_cli

PROBE_RUN = [
    "model=efficientnet_lite0",
    "data=mnist",
    "data.image_size=64",
    "freeze=linear_probe",
    "test=false",
    "seed=0",
    # Epoch time is the training work: no checkpoint files or logger; the process exits when
    # training ends (no post-fit validate or evaluations).
    "logger=none",
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "+callbacks.bench.exit_at_end=true",
]
STEP_RUN = [
    "model=efficientnet_lite0",
    "data=mnist",
    "data.image_size=64",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "seed=0",
]
PHASE0 = ["freeze=gradual", "freeze.cache_features=false"]
FULL = ["freeze=none"]
PROBE_TARGET, STEP_TARGET = 10.0, 2.0
WARMUP_STEPS = 2


def probe_epochs(repeats: int, quick: bool) -> list[dict]:
    samples, epochs_per_run = (300, 2) if quick else (1000, 3)
    overrides = [
        *PROBE_RUN,
        f"data.max_train_samples={samples}",
        f"trainer.max_epochs={epochs_per_run}",
    ]
    epochs: dict[bool, list[float]] = {True: [], False: []}
    trains: dict[bool, list[float]] = {True: [], False: []}  # epoch minus its validation
    first: dict[bool, list[float]] = {True: [], False: []}
    builds: list[float] = []
    for _ in range(repeats):
        for cached in (False, True):
            run = train_cli([*overrides, f"freeze.cache_features={str(cached).lower()}"])
            cache = run["probe"]["feature_cache"] or {"used": False}
            if cache["used"] != cached:
                raise RuntimeError(f"feature cache used={cache['used']}, not {cached}: {cache}")
            if cached:
                if set(cache["sources"].values()) != {"computed"}:
                    raise RuntimeError(f"features were not computed afresh: {cache['sources']}")
                builds.append(cache["seconds"])
            probe = run["probe"]
            epochs[cached] += probe["epoch_s"][1:]
            pairs = zip(probe["epoch_s"][1:], probe["val_s"][1:], strict=True)
            trains[cached] += [epoch - val for epoch, val in pairs]
            first[cached].append(probe["epoch_s"][0])
    cached_s, uncached_s = statistics.median(epochs[True]), statistics.median(epochs[False])
    ratio = uncached_s / cached_s
    train_ratio = statistics.median(trains[False]) / statistics.median(trains[True])
    common = {"repeats": repeats, "quick": quick, "overrides": overrides}
    return [
        report(
            "frozen",
            "probe epoch uncached/cached",
            ratio,
            "ratio",
            f">= {PROBE_TARGET:g}",
            ratio >= PROBE_TARGET,
            cached_epoch_s=round(cached_s, 4),
            uncached_epoch_s=round(uncached_s, 4),
            train_part_ratio=round(train_ratio, 3),
            cached_epochs_s=[round(x, 4) for x in epochs[True]],
            uncached_epochs_s=[round(x, 4) for x in epochs[False]],
            first_epoch_cached_s=[round(x, 4) for x in first[True]],
            first_epoch_uncached_s=[round(x, 4) for x in first[False]],
            **common,
        ),
        report(
            "frozen",
            "feature cache build (train+val, one-off)",
            statistics.median(builds),
            "s",
            "report only",
            None,
            builds_s=[round(x, 4) for x in builds],
            **common,
        ),
    ]


def step_times(repeats: int, steps: int) -> list[dict]:
    times: dict[str, list[float]] = {"phase0": [], "full": []}
    backbone_grads: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as out:
        for _ in range(repeats):
            for name, freeze in (("phase0", PHASE0), ("full", FULL)):
                cfg = compose([*STEP_RUN, *freeze, f"trainer.limit_train_batches={steps}"], out)
                probe = Probe()
                module, _ = fit_ftlab(cfg, [probe])
                times[name] += probe.record["step_s"][WARMUP_STEPS:]
                backbone_grads[name] = sum(p.grad is not None for p in module.backbone.parameters())
    if backbone_grads["phase0"]:
        raise RuntimeError("phase 0 computed gradients for backbone parameters")
    phase0, full = statistics.median(times["phase0"]), statistics.median(times["full"])
    ratio = full / phase0
    return [
        report(
            "frozen",
            "step full/gradual-phase0",
            ratio,
            "ratio",
            f">= {STEP_TARGET:g}",
            ratio >= STEP_TARGET,
            phase0_step_s=round(phase0, 4),
            full_step_s=round(full, 4),
            steps_per_fit=steps,
            warmup_steps=WARMUP_STEPS,
            repeats=repeats,
            backbone_params_with_grad=backbone_grads,
            overrides=STEP_RUN,
        )
    ]


def run(quick: bool = False) -> list[dict]:
    quiet()
    records = probe_epochs(repeats=1, quick=quick)
    records += step_times(repeats=2 if quick else 3, steps=6 if quick else 10)
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    run(parser.parse_args().quick)
