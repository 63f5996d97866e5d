"""What a run was started with (``<run dir>/run.json``), and what a resume must match.

At a run's first start ftlab records its composed settings (every config key but Hydra's own)
and the option chosen for each config group. ``resume=true`` (or a requeued SLURM job) is
refused, before anything is written, when it differs from that record in anything but
:data:`MAY_CHANGE`: another model, data (its option and every key that decides the samples,
which is what the data's fingerprint is made of), task/module, freezing schedule, optimizer,
scheduler, seed, batch size, devices. The line names the first differences. A run started
before this record existed is compared with its ``.hydra/config.yaml`` and ``hydra.yaml``.

Plain values only, no torch: the check costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError

RECORD = "run.json"

# Keys (and whole groups) a resume may change: how long the run goes on, what runs after fit,
# where it logs and how often it saves. Everything else decides the steps the run takes.
MAY_CHANGE = (
    "resume",
    "ckpt_path",
    "task_name",
    "plan",
    "test",
    "eval",
    "wise_ft",
    "faults",
    "paths",
    "logger",
    "callbacks",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.limit_test_batches",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",
)


def may_change(key: str) -> bool:
    """Whether a resume may give ``key`` (dotted) another value."""
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``group.key`` entries; lists stay whole values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flat(value, f"{name}.")
        else:
            out[name] = value
    return out


def start_record(settings: Mapping[str, Any], choices: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` holds: the settings (Hydra's own left out) and the group choices."""
    plain = {k: v for k, v in settings.items() if k != "hydra"}
    picked = {k: v for k, v in choices.items() if not str(k).startswith("hydra")}
    return {"settings": plain, "choices": picked}


def write_record(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Record a run's start (rank 0, once its directory is claimed)."""
    path = run_dir / RECORD
    tmp = path.with_name(f".{RECORD}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's start record: ``run.json``, else Hydra's files of its start; None if neither."""
    path = run_dir / RECORD
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        settings = yaml.safe_load(config.read_text()) or {}
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        hydra = yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else {}
        choices = ((hydra or {}).get("hydra") or {}).get("runtime", {}).get("choices") or {}
    except yaml.YAMLError:
        return None
    return start_record(settings, choices)


def differences(started: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What ``now`` changes of ``started`` beyond :data:`MAY_CHANGE`: group choices first
    (``data=digits, not mnist``), then keys (``data.batch_size=16, not 8``)."""
    found = []
    chosen, choosing = started.get("choices") or {}, now.get("choices") or {}
    for group in sorted(set(chosen) | set(choosing)):
        if may_change(str(group).replace("/", ".")):
            continue
        if chosen.get(group) != choosing.get(group):
            found.append(f"{group}={chosen.get(group)}, not {choosing.get(group)}")
    old, new = flat(started.get("settings") or {}), flat(now.get("settings") or {})
    for key in sorted(set(old) | set(new)):
        if may_change(key) or old.get(key) == new.get(key):
            continue
        # Keys that appear or vanish with a group choice already named say nothing new; an
        # unresolved ${...} (an old run's .hydra/config.yaml) cannot be compared.
        vanished = key not in old or key not in new
        if vanished and any(d.startswith(key.split(".")[0] + "=") for d in found):
            continue
        if "${" in str(old.get(key)):
            continue
        found.append(
            f"{key}={_show(old.get(key, '<unset>'))}, not {_show(new.get(key, '<unset>'))}"
        )
    return found


def check_resume_matches(run_dir: Path, now: Mapping[str, Any]) -> None:
    """Refuse a resume whose settings differ from the run's start (see the module doc)."""
    started = read_record(run_dir)
    if started is None:
        return  # nothing recorded (hydra.output_subdir=null): ckpt_path's model check remains
    found = differences(started, now)
    if found:
        shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise FtlabError(
            f"resume=true: hydra.run.dir={run_dir} was started with {shown}: resume it with the "
            "settings it was started with (a resume may change only how long it runs, "
            "trainer.max_epochs/max_steps/max_time, and its logging, callbacks, paths and "
            "evaluations after fit: docs/reliability.md), or give this run another hydra.run.dir"
        )


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
