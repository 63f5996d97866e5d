"""Compile: training step time with ``compile=true`` against without, on the same ViT.

Two real CLI runs (``python train.py``, :func:`common.train_cli`), one process each:
vit_tiny_patch16_224 (random init) on MNIST at 224 px, batch 16, full fine-tuning, a few dozen
optimizer steps, no validation, checkpoints, logger or test. ``common.Probe`` records each step's
seconds (on_train_batch_start to on_train_batch_end: forward, backward, optimizer step). The first
steps of the compiled run include compiling (reported apart, ``compile_s``); the ratio compares
the medians of the steps after the first ``WARMUP`` of each run. On a CPU, torch's inductor
generates C++: the machine needs a C++ compiler (``compile=true`` says so in one line otherwise).
"""

from __future__ import annotations

import argparse
import statistics

from common import report, train_cli

RUN = [
    "model=vit",
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "data=mnist",
    "data.batch_size=16",
    "freeze=none",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer=cpu",
    "test=false",
    "seed=0",
    "logger=none",
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "+callbacks.bench.exit_at_end=true",  # skip the post-fit validate and evaluations
]
WARMUP = 3  # steps left out of each median: compilation, and the first steps' allocations


def measure(compile_: bool, steps: int) -> dict:
    run = train_cli([*RUN, f"data.max_train_samples={16 * steps}", f"compile={compile_}"])
    times = run["probe"]["step_s"]
    if len(times) <= WARMUP:
        raise RuntimeError(f"compile={compile_}: only {len(times)} steps ran")
    return {
        "median_step_s": statistics.median(times[WARMUP:]),
        "first_steps_s": sum(times[:WARMUP]),
    }


def run(quick: bool = False) -> list[dict]:
    steps = 8 if quick else 30
    eager, compiled = measure(False, steps), measure(True, steps)
    ratio = compiled["median_step_s"] / eager["median_step_s"]
    return [
        report(
            "compile",
            "compile=true / false: median step time",
            ratio,
            "ratio",
            "report only (inductor's CPU kernels vary by machine)",
            None,
            eager_step_s=round(eager["median_step_s"], 4),
            compiled_step_s=round(compiled["median_step_s"], 4),
            compile_s=round(compiled["first_steps_s"] - eager["first_steps_s"], 2),
            steps=steps,
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    run(parser.parse_args().quick)
