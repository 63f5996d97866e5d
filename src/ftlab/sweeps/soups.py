"""Model soups (Wortsman et al., ICML 2022): ``ftlab-soup <sweep dir> --recipe uniform|greedy``.

A soup is the plain average of the fine-tuned weights of several runs that started from the same
pretrained weights. ``uniform`` averages every completed job; ``greedy`` takes the jobs in order
of their val accuracy and keeps each one only if the soup's val accuracy does not drop.

The jobs' best checkpoints are read with :func:`ftlab.checkpoints.load_checkpoint` (plain
tensors, a parsed record; nothing in a file chooses code). They must share the backbone, its
pretrained start (``weights_id``), the classes, the head and adapters and the state's keys and
shapes; a job that differs is named and the soup refused in one line. Failed, pruned or
interrupted jobs, and jobs without a best checkpoint, are skipped and counted.

The soup is evaluated on the best job's val and test splits and OOD sets (its composed
``.hydra/config.yaml``: ``data``, ``data.ood``, the trainer's batch limits, the seed), as is the
best single job, so the two compare on the same batches. Written into the sweep directory:
``soup_<recipe>.ckpt`` (the record and state dict ``eval.py ckpt_path=...`` reads),
``soup_<recipe>.json`` and ``soup_<recipe>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftlab.checkpoints import load_checkpoint, state_differences
from ftlab.data import build_data
from ftlab.errors import FtlabError
from ftlab.evaluation.loop import evaluate
from ftlab.evaluation.ood import build_ood_sets
from ftlab.outputs import write_json
from ftlab.record import ModelRecord
from ftlab.runinfo import RunInfo
from ftlab.sweeps.report import job_dirs, read_job

log = logging.getLogger("ftlab")

RECIPES = ("uniform", "greedy")
State = dict[str, torch.Tensor]


@dataclass
class Job:
    """A completed job of the sweep: its directory, best checkpoint and val accuracy."""

    name: str
    path: Path
    checkpoint: Path
    val_acc: float


def collect(sweep: Path) -> tuple[list[Job], dict[str, str]]:
    """The completed jobs with a best checkpoint (best val accuracy first) and the skipped
    ones with why."""
    if not sweep.is_dir():
        raise FtlabError(f"{sweep}: no such sweep directory")
    jobs, skipped = [], {}
    for path in job_dirs(sweep):
        status = read_job(path)["status"]  # metrics.json's, else status.json's, else missing
        metrics = json.loads((path / "metrics.json").read_text()) if status == "completed" else {}
        best = metrics.get("best_checkpoint")
        if status != "completed" or not best:
            skipped[path.name] = status if status != "completed" else "no best checkpoint"
            continue
        checkpoint = Path(best)
        if not checkpoint.is_file():  # a sweep directory that was moved: the job's own copy
            checkpoint = path / "checkpoints" / checkpoint.name
        acc = metrics.get("val", {}).get("acc")
        if not checkpoint.is_file() or acc is None:
            skipped[path.name] = "best checkpoint missing" if acc is not None else "no val/acc"
            continue
        jobs.append(Job(path.name, path, checkpoint, float(acc)))
    if not jobs:
        raise FtlabError(
            f"{sweep}: no completed job with a best checkpoint to make a soup of "
            f"({len(skipped)} skipped): pass a multirun directory (outputs/multirun/<date>/<time>)"
        )
    # Ties keep the sweep's order, so a rerun picks the same soup.
    return sorted(jobs, key=lambda j: -j.val_acc), skipped


def _signature(record: ModelRecord) -> dict[str, Any]:
    """What jobs must share to be averaged."""
    return {
        "model": f"{record.backbone.kind}:{record.backbone.name}",
        "pretrained start (weights_id)": record.backbone.weights_id,
        "classes": record.classes,
        "head": record.head,
        "LoRA adapters": record.lora,
        "peft adapters": record.peft,
        "module": record.module,
    }


def check_compatible(jobs: list[Job], ckpts: dict[str, Any]) -> None:
    """Refuse, naming them, the jobs whose model differs from the one most jobs share (ties: the
    best job's by val)."""
    keys = [repr(_signature(ckpts[j.name]["ftlab"])) for j in jobs]
    base = jobs[max(range(len(jobs)), key=lambda i: (keys.count(keys[i]), -i))]
    first = ckpts[base.name]
    ours = _signature(first["ftlab"])
    differ: dict[str, list[str]] = {}
    for job in (j for j in jobs if j is not base):
        ckpt = ckpts[job.name]
        theirs = _signature(ckpt["ftlab"])
        what = next((k for k in ours if ours[k] != theirs[k]), None)
        if what is not None:
            reason = f"{what} ({_short(theirs[what])} vs {_short(ours[what])})"
        else:
            shapes = state_differences(ckpt["state_dict"], first["state_dict"])
            reason = f"state dict: {shapes}" if shapes else ""
        if reason:
            differ.setdefault(reason, []).append(job.name)
    if differ:
        reason, names = next(iter(differ.items()))
        others = sum(len(n) for n in differ.values()) - len(names)
        more = f" (and {others} more jobs in other ways)" if others else ""
        raise FtlabError(
            f"{'jobs' if len(names) > 1 else 'job'} {', '.join(names)} "
            f"{'differ' if len(names) > 1 else 'differs'} from job {base.name} "
            f"in {reason}{more}: a soup averages fine-tunings of one backbone "
            "from one pretrained start on the same classes; soup a sweep whose jobs share them"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Pot:
    """A running sum of state dicts: the soup of what was added, without holding every job."""

    def __init__(self, state: State) -> None:
        # Float tensors are summed in float64 and averaged back to their dtype; integer buffers
        # (BatchNorm's num_batches_tracked) are counters, not weights: the first job's are kept.
        self.fixed = {k: v for k, v in state.items() if not v.is_floating_point()}
        self.total = {k: v.double() for k, v in state.items() if v.is_floating_point()}
        self.dtypes = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
        self.count = 1

    def with_(self, state: State | None = None) -> State:
        """The soup, with ``state`` added to it when given (the pot is not changed)."""
        count = self.count + (state is not None)
        soup = {
            k: ((v + state[k].double()) if state is not None else v).div(count).to(self.dtypes[k])
            for k, v in self.total.items()
        }
        return {**soup, **self.fixed}

    def add(self, state: State) -> None:
        for k, v in self.total.items():
            v.add_(state[k].double())
        self.count += 1


class Scorer:
    """Scores weights on the best job's val, test and OOD sets, as the sweep's jobs did."""

    def __init__(self, job: Job, ckpt: dict[str, Any], device: torch.device) -> None:
        from ftlab.module import Classifier

        record: ModelRecord = ckpt["ftlab"]
        if record.module != Classifier.kind:
            raise FtlabError(
                f"job {job.name}: its module is {record.module}; soups score single-label "
                "classifiers (module=classifier)"
            )
        from ftlab.tasks import build_task

        build_task(record.task).require("soups", f"job {job.name}")  # soups rank by accuracy
        config = _job_config(job)
        self.module = Classifier.from_checkpoint(ckpt, str(job.checkpoint)).to(device).eval()
        spec = self.module.backbone.input_spec
        self.data = build_data(config["data"], spec)
        self.data.prepare_data()
        self.data.setup("fit")
        if list(self.data.classes) != list(record.classes):
            raise FtlabError(
                f"job {job.name}: its data now has classes {list(self.data.classes)[:10]}, its "
                f"checkpoint {record.classes[:10]}: soup it where its data is unchanged"
            )
        trainer = config.get("trainer") or {}
        self.sets: list[tuple[str, Any, Any]] = [
            ("val", self.data.val_dataloader(), trainer.get("limit_val_batches")),
            ("test", self.data.test_dataloader(), trainer.get("limit_test_batches")),
        ]
        ood = build_ood_sets(config["data"].get("ood"), self.data, spec, int(config["seed"]))
        self.sets += [(s.name, s.loader, trainer.get("limit_test_batches")) for s in ood]
        self.ood_names = [s.name for s in ood]

    def score(self, state: State, only_val: bool = False) -> dict[str, dict[str, float]]:
        """``{val: {acc, f1, loss}, test: ..., <ood set>: ...}`` of the weights ``state``."""
        self.module.load_state_dict(state)
        sets = self.sets[:1] if only_val else self.sets
        return {
            name: evaluate(self.module, loader, self.data.num_classes, limit)
            for name, loader, limit in sets
        }


def _job_config(job: Job) -> dict[str, Any]:
    """The job's composed config (data, trainer limits, seed) as plain values."""
    # Only what the soup reads: other keys may name Hydra's runtime (${hydra:...}).
    limits = ("limit_val_batches", "limit_test_batches")
    keys = {"data": None, **{f"trainer.{k}": None for k in limits}, "seed": 0}
    found = RunInfo.of(job.path).resolved(job.name, keys)
    if not isinstance(found["data"], dict):
        raise FtlabError(f"job {job.name}: {job.path}/.hydra/config.yaml has no data config")
    return {
        "data": found["data"],
        "trainer": {k: found[f"trainer.{k}"] for k in limits},
        "seed": found["seed"],
    }


def make_soup(sweep: str | Path, recipe: str, device: str = "auto") -> dict[str, Any]:
    """Cook the soup of the sweep's jobs, score it and the best job, write the files; returns
    what ``soup_<recipe>.json`` holds."""
    if recipe not in RECIPES:
        raise FtlabError(f"--recipe {recipe}: use one of {', '.join(RECIPES)}")
    started = time.perf_counter()
    sweep = Path(sweep)
    jobs, skipped = collect(sweep)
    ckpts = {j.name: _load(j) for j in jobs}
    check_compatible(jobs, ckpts)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    best = jobs[0]
    scorer = Scorer(best, ckpts[best.name], torch.device(device))
    best_scores = scorer.score(ckpts[best.name]["state_dict"])
    pot = Pot(ckpts[best.name]["state_dict"])
    ingredients, steps = [best.name], []
    soup_val = best_scores["val"]["acc"]
    for job in jobs[1:]:
        state = ckpts[job.name]["state_dict"]
        if recipe == "uniform":
            pot.add(state)
            ingredients.append(job.name)
            continue
        val = scorer.score(pot.with_(state), only_val=True)["val"]["acc"]
        kept = val >= soup_val  # the paper's rule: keep it unless val accuracy drops
        steps.append(
            {"job": job.name, "job_val_acc": job.val_acc, "soup_val_acc": val, "kept": kept}
        )
        log.info(
            "greedy soup: job %s -> val acc %.4f (%s)",
            job.name,
            val,
            "kept" if kept else "left out",
        )
        if kept:
            pot.add(state)
            ingredients.append(job.name)
            soup_val = val
    soup = pot.with_()
    soup_scores = scorer.score(soup)
    path = sweep / f"soup_{recipe}.ckpt"
    record = ckpts[best.name]["ftlab"]
    _save(
        {
            "state_dict": soup,
            "ftlab": record.to_dict(),
            "soup": {"recipe": recipe, "jobs": ingredients},
        },
        path,
    )
    result = {
        "recipe": recipe,
        "ingredients": ingredients,
        "jobs": len(jobs),
        "skipped": skipped,
        "soup": soup_scores,
        "best_job": {"job": best.name, **best_scores},
        "gain": {name: soup_scores[name]["acc"] - best_scores[name]["acc"] for name in soup_scores},
        "greedy": steps if recipe == "greedy" else None,
        "checkpoint": str(path),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    write_json(sweep / f"soup_{recipe}.json", result)
    _write_text(sweep / f"soup_{recipe}.md", to_markdown(result))
    return result


def _load(job: Job) -> dict[str, Any]:
    return load_checkpoint(str(job.checkpoint), key=f"{job.name}/metrics.json best_checkpoint")


def _save(payload: dict[str, Any], path: Path) -> None:
    """Whole or absent: written beside, then renamed."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_markdown(result: dict[str, Any]) -> str:
    """The soup against the best single job, accuracy per set."""
    names = list(result["soup"])
    lines = [
        f"# {result['recipe']} soup of {len(result['ingredients'])} of {result['jobs']} jobs",
        "",
        f"Ingredients: {', '.join(result['ingredients'])}; best single job: "
        f"{result['best_job']['job']}; skipped: {len(result['skipped'])}.",
        "",
        "| | " + " | ".join(f"{n} acc" for n in names) + " |",
        "|---|" + "---|" * len(names),
        "| soup | " + " | ".join(f"{result['soup'][n]['acc']:.4f}" for n in names) + " |",
        f"| best job ({result['best_job']['job']}) | "
        + " | ".join(f"{result['best_job'][n]['acc']:.4f}" for n in names)
        + " |",
        "| soup − best | " + " | ".join(f"{result['gain'][n]:+.4f}" for n in names) + " |",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlab-soup <sweep_dir> --recipe uniform|greedy``."""
    parser = argparse.ArgumentParser(prog="ftlab-soup", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory: outputs/multirun/<date>/<time>")
    parser.add_argument("--recipe", choices=RECIPES, default="greedy")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda:0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = make_soup(args.sweep_dir, args.recipe, args.device)
    except FtlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sweep = Path(args.sweep_dir)
    print((sweep / f"soup_{args.recipe}.md").read_text(), end="")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} jobs: {result['skipped']}")
    print(f"wrote {result['checkpoint']}, {sweep / f'soup_{args.recipe}.json'}, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
