"""The model card (``README.md``) of an export: layout, data, classes, freezing schedule,
metrics, commands and the ftlab version."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ftlab
from ftlab.exports.job import TOLERANCE, Export, head_layers
from ftlab.runinfo import RunInfo


def model_card(job: Export, command: str) -> str:
    """``README.md``: layout, data, classes, schedule, metrics, commands and ftlab version."""
    record, run, backbone = job.record, job.run, job.record.backbone
    lines = [
        "---",
        f"library_name: {job.library}",
        "tags: [ftlab, fine-tuned]",
        "---",
        f"# {backbone.name} fine-tuned with ftlab",
        "",
        f"**Layout: {job.written}** (`export={job.layout}`).",
        "",
        "```python",
        job.usage,
        "```",
        "",
        "## Model",
        f"- base: {backbone.kind} `{backbone.name}`, {_weights(backbone)} "
        f"(`{backbone.weights_id}`)",
        f"- pooling: {getattr(job.backbone, 'pooling', None) or 'timm global pool'}; head: "
        + " → ".join(f"Linear({m.in_features}, {m.out_features})" for m in head_layers(job)),
        f"- checked: max |logit − ftlab's| = {job.max_diff:.3g} on a batch of "
        f"{job.expected.shape[0]} (tolerance {TOLERANCE:g})",
        *[f"- {note}" for note in job.notes],
    ]
    if record.lora:
        lora = record.lora
        lines.append(
            f"- LoRA r={lora['r']} alpha={lora['alpha']:g} on {len(lora['target_modules'])} "
            "modules, merged into the weights"
        )
    if record.peft:
        targets = record.peft["config"]["target_modules"]
        lines.append(f"- peft {record.peft['method']} on {len(targets)} modules, merged in")
    lines += ["", "## Data", *_data_lines(job), "", "## Freezing schedule", *_phase_lines(run)]
    lines += ["", "## Metrics", *_metric_lines(job), "", "## Reproduce", "```bash"]
    if run.overrides or run.config:
        lines.append(" ".join(["python train.py", *run.overrides]))
    lines += [command, "```", "", f"Written by ftlab {ftlab.__version__}.", ""]
    return "\n".join(lines)


def _weights(backbone: Any) -> str:
    if not backbone.pretrained:
        return "random init"
    return f"weights `{backbone.weights}`" if backbone.weights else "weights from the hub"


def _data_lines(job: Export) -> list[str]:
    data = job.run.metrics.get("data") or {}
    target = data.get("target") if isinstance(data, Mapping) else None
    target = target or (job.run.data("_target_") or "unknown (no metrics.json beside it)")
    shown = ", ".join(str(c) for c in job.classes[:50])
    more = f" … ({len(job.classes)} in all)" if len(job.classes) > 50 else ""
    lines = [f"- data: `{target}`", f"- classes ({len(job.classes)}): {shown}{more}"]
    for key in ("image_size", "max_length", "max_train_samples"):
        if job.run.data(key) is not None:
            lines.append(f"- data.{key}: {job.run.data(key)}")
    return lines


def _phase_lines(run: RunInfo) -> list[str]:
    phases = run.metrics.get("phases")
    if not isinstance(phases, list) or not phases:
        freeze = run.config.get("freeze")
        name = freeze.get("name") if isinstance(freeze, Mapping) else None
        return [f"- freeze={name}" if name else "- not recorded (no metrics.json beside it)"]
    lines = ["| epoch | unfrozen | trainable | lr |", "|---|---|---|---|"]
    for phase in phases:
        if not isinstance(phase, Mapping):
            continue
        lrs = phase.get("lr") or {}
        rates = sorted({f"{v:g}" for v in lrs.values()}) if isinstance(lrs, Mapping) else []
        unfrozen = ", ".join(str(g) for g in phase.get("unfrozen") or [])
        lines.append(
            f"| {phase.get('start_epoch', phase.get('epoch'))} | {unfrozen} | "
            f"{phase.get('trainable_params', '')} | {', '.join(rates)} |"
        )
    return lines


def _metric_lines(job: Export) -> list[str]:
    metrics = job.run.metrics
    if not metrics:
        return ["- not recorded (no metrics.json beside the checkpoint)"]
    lines = ["| set | acc | f1 | loss |", "|---|---|---|---|"]
    sets = [("val", metrics.get("val")), ("test", metrics.get("test"))]
    sets += [(f"OOD: {k}", v) for k, v in (metrics.get("ood") or {}).items()]
    for name, values in sets:
        if isinstance(values, Mapping) and values:
            cells = [_number(values.get(k)) for k in ("acc", "f1", "loss")]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    best = metrics.get("best_checkpoint")
    if best and Path(str(best)).resolve() != job.ckpt_path.resolve():
        lines.append(
            f"\nThese are the run's metrics of its best checkpoint ({Path(str(best)).name}); "
            f"this export is of {job.ckpt_path.name}."
        )
    return lines


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""
