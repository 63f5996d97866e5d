"""The sweep report: what a multirun produced, one row per setting, mean ± std over seeds.

``ftlab-report outputs/multirun/2024-05-01/12-30-00`` writes ``report.csv``, ``report.md``,
``report.png`` and ``provenance.json`` (the command, ftlab's commit, the date and the machine)
into the sweep directory, and for a sweep with OOD sets ``effective_robustness.png`` and
``.csv`` (:mod:`ftlab.sweeps.robustness`). Notebooks get the same tables from
:func:`load_sweep` (one row per job) and :func:`summarize` (one row per setting), and the
figure from :func:`plot_sweep`.

The work is split by job: reading the jobs (:mod:`ftlab.sweeps.jobs`), the tables
(:mod:`~ftlab.sweeps.tables`), report.md (:mod:`~ftlab.sweeps.markdown`), report.png
(:mod:`~ftlab.sweeps.figures`) and provenance.json (:mod:`~ftlab.sweeps.provenance`); this
module writes the files and is the CLI. Its names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ftlab.errors import FtlabError
from ftlab.sweeps import robustness
from ftlab.sweeps.figures import plot_categories, plot_sweep
from ftlab.sweeps.jobs import WISE_FT_KEY, flatten_metrics, job_dirs, load_sweep, read_job
from ftlab.sweeps.markdown import provenance_markdown, to_markdown, wise_ft_markdown
from ftlab.sweeps.provenance import cpu_name, git, provenance
from ftlab.sweeps.tables import best_setting, summarize, wise_ft_curves

__all__ = [
    "PROVENANCE_FILE", "REPORT_FILES", "best_setting", "cpu_name", "flatten_metrics", "git",
    "job_dirs", "load_sweep", "main", "plot_categories", "plot_sweep", "provenance",
    "provenance_markdown", "read_job", "summarize", "to_markdown", "wise_ft_curves",
    "wise_ft_markdown", "write_report",
]  # fmt: skip

REPORT_FILES = ("report.csv", "report.md", "report.png", "provenance.json")


PROVENANCE_FILE = "provenance.json"


def write_report(
    sweep_dir: str | Path,
    metric: str | None = None,
    mode: str | None = None,
    columns: Sequence[str] | None = None,
    wise_ft: bool = False,
    out: str | Path | None = None,
    command: str | None = None,
) -> pd.DataFrame:
    """Write report.csv, report.md, report.png and provenance.json into ``out`` (default: the
    sweep directory), and the effective-robustness plot when the sweep has OOD sets; returns
    the summary, whose ``.attrs["files"]`` names the files written.

    ``columns`` picks report.md's metrics (report.csv keeps all); ``wise_ft`` adds the WiSE-FT
    rows of :func:`load_sweep`; ``command`` is recorded in provenance.json (``ftlab-report``
    passes its own command line).
    """
    jobs = load_sweep(sweep_dir, wise_ft=wise_ft)
    summary = summarize(jobs, metric, mode)
    path = Path(out or sweep_dir)
    path.mkdir(parents=True, exist_ok=True)
    summary.to_csv(path / "report.csv", index=False)
    markdown = to_markdown(summary, jobs, columns)
    if wise_ft:
        settings = [k for k in summary.attrs["settings"] if k != WISE_FT_KEY]
        markdown += wise_ft_markdown(wise_ft_curves(sweep_dir, settings), settings)
    robust = robustness.write_effective_robustness(summary, sweep_dir, path)
    markdown += robustness.markdown(robust)
    record = provenance(sweep_dir, command)
    markdown += provenance_markdown(record)
    (path / "report.md").write_text(markdown)
    (path / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    plot_sweep(summary).figure.savefig(path / "report.png", dpi=120)
    summary.attrs["files"] = [*REPORT_FILES, *(robust.files if robust else [])]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlab-report <sweep_dir> [--metric val/acc] [--mode max]``."""
    parser = argparse.ArgumentParser(prog="ftlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory: outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", help="main metric, e.g. val/acc (default: optimized_metric)")
    parser.add_argument("--mode", choices=("max", "min"), help="default: optimized_mode")
    parser.add_argument(
        "--columns",
        help="comma-separated metrics for report.md, globs allowed: 'test/acc,ood/*/acc'",
    )
    parser.add_argument(
        "--wise-ft",
        action="store_true",
        help="add a row per setting that ran WiSE-FT: its metrics at the best α by val",
    )
    parser.add_argument(
        "--out", help="folder for the report files (default: the sweep directory), e.g. to commit"
    )
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    command = shlex.join(["ftlab-report", *(sys.argv[1:] if argv is None else argv)])
    try:
        summary = write_report(
            args.sweep_dir, args.metric, args.mode, columns, args.wise_ft, args.out, command
        )
    except FtlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.out or args.sweep_dir)
    print((path / "report.md").read_text(), end="")
    print("wrote " + ", ".join(str(path / name) for name in summary.attrs["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
