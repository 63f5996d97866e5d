"""Host syncs and collectives per training step: ftlab against plain Lightning, same module.

A host sync is a device-to-host read the host must wait for: ``.item()``, ``bool(t)``,
``float(t)``, which all run ``aten::_local_scalar_dense``. On a GPU each one drains the queue of
launched kernels, so a per-step sync stalls every step. A collective (all-reduce, broadcast,
barrier) under DDP is a round trip between every rank, and usually a sync too.

Both sides train the same ``FinetuneModule`` built from the same composed config
(``model=test_cnn data=digits freeze=none``): ftlab through the real CLI, ``python train.py``,
with all its callbacks, plain Lightning as ``Trainer(**cfg.trainer)`` with only a CSV logger
(ftlab's default) and no progress bar (ftlab shows none outside a terminal). A callback,
:class:`StepProfile`, runs ``torch.profiler`` from the start of training batch ``skip`` to the
start of batch ``skip + steps`` on every rank and counts the ops by name. Lightning writes
its logs every ``trainer.log_every_n_steps`` (10) steps, which reads the logged values back
(syncs); the window is 20 steps, so both sides log twice in it.
Reads of CPU memory that are no device sync on a GPU either (torch's optimizers reading their
step counts, DDP's reducer reading its map of used parameters) are counted apart.

On a CPU the profiler sees every ``_local_scalar_dense`` but not the syncs CUDA hides inside
ops whose output size depends on the data (``nonzero``, ``unique``, ``bincount``,
``masked_select``): those are counted apart as ``data_dependent`` ops. ``.cpu()``,
``.tolist()`` and ``.numpy()`` of a CPU tensor copy nothing and cannot be seen on a CPU.

Cases: one process (``trainer=cpu``) and two DDP ranks over gloo (``trainer=ddp_cpu``), with
FaultGuard's default ``faults.check_every=10``: two checks fall inside the window. The value is
ftlab's count minus Lightning's, per step (mean over ranks); ``extra_step_syncs`` lists that
difference step by step, for each rank, so a check shows where it falls and any other step
must read 0.

    python benchmarks/bench_syncs.py                        # the bench
    python benchmarks/bench_syncs.py --quick                # 10 steps
    python benchmarks/bench_syncs.py plain OUT SKIP STEPS OVERRIDES...  # one plain run (internal)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import compose, quiet, report, train_cli

# Ops whose output size depends on the data: on CUDA each waits for the device to know it.
DATA_DEPENDENT = (
    "aten::nonzero",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",
    "aten::masked_select",
)
SYNC = "aten::_local_scalar_dense"
# The backend's work: every collective passes here once, from Python (where the profiler also
# records a c10d:: op around it) or from DDP's gradient buckets.
COLLECTIVE_PREFIXES = ("gloo:", "nccl:")
# torch's optimizers read their step counts with .item(). Those counts stay on the CPU unless
# capturable or fused (torch.optim), so they are no device sync on a GPU either: counted apart,
# as ``optimizer_reads``, when the Python code that asked for the read is in torch.optim. (Not by
# the Optimizer.step range: Lightning runs the forward and backward inside it, in the closure.)
OPTIMIZER_CODE = "torch/optim/"
# Reads from C++ during the backward pass, with no Python frame of their own: under DDP with
# find_unused_parameters, the reducer reads its CPU-side map of used parameters, one per
# parameter (torch's reducer.cpp; host memory, no device sync). Counted apart, as
# ``backward_reads``.
BACKWARD_CODE = "_engine_run_backward"
STEP = "StepProfile#"  # the range around each profiled step

SETUP = [
    "model=test_cnn",
    "data=digits",
    "data.image_size=32",
    "data.batch_size=16",
    "freeze=none",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=2",
    "test=false",
]


class StepProfile(L.Callback):
    """Counts the ops of training steps ``skip`` to ``skip + steps - 1`` (0-based batches of
    the fit) by name, with ``torch.profiler`` on the CPU, and writes them as JSON to
    ``<path>.rank<global rank>``. A step runs from its ``on_train_batch_start`` to the next
    one: its forward, backward, optimizer step, every hook after it and what Lightning does
    between batches (logging, its own checks), and the next batch's fetch. Each step is a
    ``record_function`` range, so ``step_syncs`` says which step synced."""

    def __init__(self, path: str, skip: int = 3, steps: int = 20) -> None:
        self.path, self.skip, self.steps = path, skip, steps
        self.seen = 0
        self.profiler: torch.profiler.profile | None = None
        self.step: torch.profiler.record_function | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.step is not None:
            self.step.__exit__(None, None, None)
            self.step = None
        if self.seen == self.skip:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True
            )
            self.profiler.__enter__()
        elif self.seen == self.skip + self.steps:
            self._write(trainer)
        if self.profiler is not None:
            self.step = torch.profiler.record_function(f"{STEP}{self.seen - self.skip}")
            self.step.__enter__()
        self.seen += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if self.step is not None:
            self.step.__exit__(None, None, None)
            self.step = None
        if self.profiler is not None:  # the fit ended inside the window
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        assert self.profiler is not None
        self.profiler.__exit__(None, None, None)
        events = self.profiler.events()
        self.profiler = None
        steps = self.seen - self.skip
        names = Counter(event.name for event in events)
        step_syncs = [0] * steps
        optimizer_reads = backward_reads = 0
        for event in events:
            if event.name == SYNC:
                ranges = _ranges(event)
                caller = next((r for r in ranges if ".py(" in r), "")  # innermost Python frame
                if OPTIMIZER_CODE in caller:
                    optimizer_reads += 1
                elif caller.endswith(BACKWARD_CODE):
                    backward_reads += 1
                else:
                    step = next((r for r in ranges if r.startswith(STEP)), None)
                    if step is not None:  # else outside the steps: on another thread
                        step_syncs[int(step.removeprefix(STEP))] += 1
        record = {
            "rank": trainer.global_rank,
            "steps": steps,
            "syncs": names[SYNC] - optimizer_reads - backward_reads,
            "step_syncs": step_syncs,
            "optimizer_reads": optimizer_reads,
            "backward_reads": backward_reads,
            "collectives": sum(n for k, n in names.items() if k.startswith(COLLECTIVE_PREFIXES)),
            "data_dependent": sum(names[k] for k in DATA_DEPENDENT),
            "ops": {
                k: n
                for k, n in sorted(names.items())
                if k == SYNC or k in DATA_DEPENDENT or k.startswith(COLLECTIVE_PREFIXES)
            },
        }
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(record))


def _ranges(event) -> list[str]:
    """The names of the ops, ranges and (``with_stack``) Python frames an event ran inside,
    innermost first."""
    names = []
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def profile_args(path: Path, skip: int, steps: int) -> list[str]:
    return [
        "+callbacks.syncs._target_=bench_syncs.StepProfile",
        f"+callbacks.syncs.path={path}",
        f"+callbacks.syncs.skip={skip}",
        f"+callbacks.syncs.steps={steps}",
    ]


def read_ranks(path: Path) -> list[dict]:
    ranks = sorted(path.parent.glob(f"{path.name}.rank*"))
    if not ranks:
        raise RuntimeError(f"no step profile written to {path}.rank*")
    return [json.loads(p.read_text()) for p in ranks]


def run_ftlab(overrides: Sequence[str], skip: int, steps: int) -> list[dict]:
    """``python train.py`` with :class:`StepProfile`: one record per rank."""
    with tempfile.TemporaryDirectory(prefix="ftlab-syncs-") as tmp:
        out = Path(tmp) / "ftlab"
        train_cli([*overrides, *profile_args(out, skip, steps)], workdir=tmp, probe=False)
        return read_ranks(out)


def run_plain(overrides: Sequence[str], skip: int, steps: int) -> list[dict]:
    """Plain Lightning on the same module, in a child process (DDP's launcher re-runs it)."""
    with tempfile.TemporaryDirectory(prefix="ftlab-syncs-") as tmp:
        out = Path(tmp) / "plain"
        command = [sys.executable, __file__, "plain", str(out), str(skip), str(steps), *overrides]
        path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}:\n{(done.stdout + done.stderr)[-3000:]}")
        return read_ranks(out)


def plain_lightning(out: str, skip: int, steps: int, overrides: Sequence[str]) -> None:
    """ftlab's module (``compose.model_and_data``: it brings its own phase callback) in
    ``Trainer(**cfg.trainer)``."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    from ftlab.compose import model_and_data

    quiet()
    workdir = Path(out).parent
    cfg = compose(overrides, workdir / "plain-run")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = model_and_data(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(workdir / "plain-run"),
        callbacks=[StepProfile(out, skip, steps)],
        logger=CSVLogger(str(workdir / "plain-run")),
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=data)


KEYS = ("syncs", "collectives", "optimizer_reads", "backward_reads", "data_dependent")


def per_step(records: list[dict], key: str) -> float:
    """The mean over ranks of ``key`` per profiled step (ranks run the same steps)."""
    return sum(r[key] / r["steps"] for r in records) / len(records)


CASES = {"1 process": ["trainer=cpu"], "ddp_cpu, 2 ranks": ["trainer=ddp_cpu"]}
CHECK_EVERY = 10  # conf/train.yaml's faults.check_every


def measure(extra: Sequence[str], skip: int, steps: int) -> dict:
    """Both sides over the same steps; ``extra_step_syncs``: what ftlab adds at each step."""
    overrides = [*SETUP, f"trainer.limit_train_batches={skip + steps + 2}", *extra]
    ours = [*overrides, f"faults.check_every={CHECK_EVERY}"]
    ftlab, plain = run_ftlab(ours, skip, steps), run_plain(overrides, skip, steps)
    return {
        "ftlab": {k: per_step(ftlab, k) for k in KEYS},
        "plain": {k: per_step(plain, k) for k in KEYS},
        "extra_step_syncs": [
            [a - b for a, b in zip(f["step_syncs"], p["step_syncs"], strict=True)]
            for f, p in zip(ftlab, plain, strict=True)
        ],
        "ftlab_ops": ftlab[0]["ops"],
        "plain_ops": plain[0]["ops"],
        "ranks": len(ftlab),
    }


def run(quick: bool = False) -> list[dict]:
    quiet()
    skip, steps = 3, 10 if quick else 20
    # The target: no more syncs per step than Lightning, and at most one more sync and one more
    # collective per check_every steps (FaultGuard's check).
    allowed = 1 / CHECK_EVERY
    records = []
    for name, extra in CASES.items():
        m = measure(extra, skip, steps)
        ours, plain = m["ftlab"], m["plain"]
        syncs = ours["syncs"] - plain["syncs"]
        collectives = ours["collectives"] - plain["collectives"]
        for what, value in (("syncs", syncs), ("collectives", collectives)):
            records.append(
                report(
                    "syncs",
                    f"{name}: ftlab - Lightning, {what}/step",
                    value,
                    "per step",
                    f"<= {allowed:g}",
                    value <= allowed + 1e-9,
                    **{f"ftlab_{k}_per_step": round(v, 4) for k, v in ours.items()},
                    **{f"plain_{k}_per_step": round(v, 4) for k, v in plain.items()},
                    extra_step_syncs=m["extra_step_syncs"],
                    ftlab_ops=m["ftlab_ops"],
                    plain_ops=m["plain_ops"],
                    steps=steps,
                    ranks=m["ranks"],
                    check_every=CHECK_EVERY,
                )
            )
    return records


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        out, skip, steps, *overrides = sys.argv[2:]
        plain_lightning(out, int(skip), int(steps), overrides)
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="a shorter window")
        run(parser.parse_args().quick)
