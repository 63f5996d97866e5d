"""Honesty checks over the committed results: the README says what the reports say.

Every number in a README table whose source is a committed report under benchmarks/results/
(named in the text before the table: ``ftlab-report ... --out <dir>``, a bench script, or a
results file) is compared with that report, to the precision the README shows; so are the
numbers of a few sentences that quote reports. Every committed report must record its command,
ftlab's commit, the date and the machine; the reports written before ftlab-report recorded
them are listed, each with its reason, and the list only shrinks.

The comparisons are functions of the README's text, so the test that edits a number in a copy
of it proves they can fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The results moved from the README to the docs site; every page is read (a results sentence
# or table may sit on any of them), and the results page's tables must each name a report.
RESULTS_PAGE = ROOT / "docs" / "results.md"
PAGE_MARK = "<!-- page: "


def published() -> str:
    """The README and every docs page, each opened by a ``<!-- page: <path> -->`` line."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(f"{PAGE_MARK}{p.relative_to(ROOT)} -->\n{p.read_text()}" for p in pages)


RESULTS = ROOT / "benchmarks" / "results"

# How the text before a table names its source, in order of precedence.
SOURCE_PATTERNS = [
    (re.compile(r"--out (benchmarks/results/[\w.-]+)"), None),  # an ftlab-report folder
    (re.compile(r"[Rr]eport: `(benchmarks/results/[\w.-]+)/`"), None),  # benchmarks/results.py
    (re.compile(r"bench_distill\.py --mnist-report"), "benchmarks/results/distill_mnist.json"),
    (re.compile(r"`(benchmarks/results/[\w.-]+\.json)`"), None),
]

# Tables of the results page with no committed report behind them, and why.
UNSOURCED = {
    "| weights | test accuracy | val accuracy | wall time | command |": (
        "the quickstart runs: `make train`'s own output, no report is committed"
    ),
}

# The strategy tables: a README row is a setting of the final sweep (strategy, wise_ft; ("soup",
# s) is soup_greedy_<s>.json), a README column a metric of report.csv or ("tuning", ...) of
# tuning.csv.
STRATEGY_ROWS = {
    "scratch (random init)": ("scratch", ""),
    "linear probe, random-init backbone": ("random_linear_probe", ""),
    "linear probe (L-BFGS)": ("linear_probe", ""),
    "full fine-tuning": ("full", ""),
    "gradual unfreezing": ("gradual", ""),
    "layer-wise lr decay": ("layer_decay", ""),
    "LP-FT": ("lp_ft", ""),
    "LoRA": ("lora", ""),
    "DoRA": ("dora", ""),
    "IA³": ("ia3", ""),
    "BitFit": ("bitfit", ""),
    "EMA of full fine-tuning": ("ema", ""),
    "WiSE-FT of full, α by val": ("full", "best α"),
    "WiSE-FT of LP-FT, α by val": ("lp_ft", "best α"),
    "greedy soup of full's sweep": ("soup", "full"),
    "greedy soup of LP-FT's sweep": ("soup", "lp_ft"),
    "self-distillation (teacher: best full job)": ("distill", ""),
}
STRATEGY_COLUMNS = {
    "test acc": "test/acc",
    "rotation": "ood/rotation_3/acc",
    "gaussian noise": "ood/gaussian_noise_3/acc",
    "sklearn digits": "ood/digits/acc",
    "typos": "ood/typos_3/acc",
    "truncation": "ood/truncation_5/acc",
    "trainable": "trainable_params",
    "tuning jobs": ("tuning", "tune_jobs"),
    "tuning CPU h": ("tuning", "tune_cpu_h"),
}
SURGICAL_COLUMNS = {
    "first block": "first_block",
    "middle block": "middle_block",
    "last block": "last_block",
    "head": "head",
    "full": "full",
    "Auto-RGN": "auto_rgn",
}
SURGICAL_ROWS = {
    "Gaussian noise (input)": "gaussian_noise",
    "rotation (input)": "rotation",
    "permuted labels (output)": "permuted_labels",
}
DISTILL_ROWS = {
    "teacher: EfficientNet-Lite0, 2,000 digits (seed 0)": (
        "teacher (EfficientNet-Lite0, 2,000 digits)"
    ),
    "student alone: MobileNetV2, 1,000 digits": "student alone (MobileNetV2, 1,000 digits)",
    "student distilled (α = 0.5, T = 4)": "student distilled (MobileNetV2, 1,000 digits)",
}
DISTILL_COLUMNS = {
    "test acc": "test",
    "rotation": "rotation",
    "gaussian noise": "gaussian noise",
    "sklearn digits": "sklearn digits",
}
PEFT_ROWS = {  # README method -> peft.json methods (LoRA is measured both ways it is spelled)
    "full fine-tuning": ["full fine-tuning"],
    "BitFit": ["bitfit"],
    "LoRA": ["lora (freeze=lora, r=8)", "lora"],
    "DoRA": ["dora"],
    "IA³": ["ia3"],
    "LoHa": ["loha"],
    "LoKr": ["lokr"],
    "AdaLoRA": ["adalora"],
    "prompt / prefix tuning": [],  # its cells say "refused" (TEXT_CELLS): nothing measured
}
PEFT_COLUMNS = {"ViT-S/16": "vit_small_patch16_224", "MiniLM": "all-MiniLM-L6-v2"}
TEXT_COLUMNS = {"config line", "adapter written", "chosen on val"}  # words, not numbers
TEXT_CELLS = {"refused", "—"}  # a number's place held by a word or a dash: nothing to back

# Sentences that quote reports: a regex over the README (whitespace collapsed) whose groups
# are numbers, and where each number comes from: (report folder, table, row, column).
# table "csv" is report.csv (row: strategy or None for a one-setting sweep); "alpha" is
# report.md's "WiSE-FT by α" table (row: (strategy, α)).
CLAIMS = [
    (
        r"on noise \((\S+) vs (\S+)\) and digits \((\S+) vs (\S+)\), tied on rotation \((\S+) vs "
        r"(\S+), within seed noise\), but lost 2\.4 points in distribution \((\S+) vs (\S+),",
        [
            ("mnist", "csv", "lp_ft", "ood/gaussian_noise_3/acc"),
            ("mnist", "csv", "full", "ood/gaussian_noise_3/acc"),
            ("mnist", "csv", "lp_ft", "ood/digits/acc"),
            ("mnist", "csv", "full", "ood/digits/acc"),
            ("mnist", "csv", "lp_ft", "ood/rotation_3/acc"),
            ("mnist", "csv", "full", "ood/rotation_3/acc"),
            ("mnist", "csv", "lp_ft", "test/acc"),
            ("mnist", "csv", "full", "test/acc"),
        ],
    ),
    (
        r"val picked `frozen` at (\S+) over `eval` at (\S+)\)\. At the tuning seed, full "
        r"fine-tuning with `freeze\.bn=eval` at the same lr scored (\S+) test and (\S+) under "
        r"noise",
        [
            ("mnist", "tune_jobs", ("full", 2), "val/acc"),
            ("mnist", "tune_jobs", ("full", 3), "val/acc"),
            ("mnist", "tune_jobs", ("full", 3), "test/acc"),
            ("mnist", "tune_jobs", ("full", 3), "ood/gaussian_noise_3/acc"),
        ],
    ),
    (
        r"near chance \((\S+) test\).*?α = 0\.5 does beat both ends under noise \((\S+) vs (\S+) "
        r"and (\S+)\) but at (\S+) test accuracy\.",
        [
            ("mnist", "alpha", ("full", "0"), "test_acc"),
            ("mnist", "alpha", ("full", "0.5"), "ood_gaussian_noise_3_acc"),
            ("mnist", "alpha", ("full", "0"), "ood_gaussian_noise_3_acc"),
            ("mnist", "alpha", ("full", "1"), "ood_gaussian_noise_3_acc"),
            ("mnist", "alpha", ("full", "0.5"), "test_acc"),
        ],
    ),
    (
        r"α = 0\.75 beats both ends on digits \((\S+) vs (\S+)/(\S+)\) but costs 2\.8 points of "
        r"test accuracy \((\S+) vs (\S+)\)",
        [
            ("mnist", "alpha", ("lp_ft", "0.75"), "ood_digits_acc"),
            ("mnist", "alpha", ("lp_ft", "0"), "ood_digits_acc"),
            ("mnist", "alpha", ("lp_ft", "1"), "ood_digits_acc"),
            ("mnist", "alpha", ("lp_ft", "0.75"), "test_acc"),
            ("mnist", "alpha", ("lp_ft", "1"), "test_acc"),
        ],
    ),
    (
        r"\(full: test (\S+), noise (\S+); LP-FT: (\S+), (\S+)\)\. Adding full fine-tuning's "
        r"second-best job took val from (\S+) to",
        [
            ("mnist", "soup", ("full", "soup"), "test"),
            ("mnist", "soup", ("full", "soup"), "gaussian_noise_3"),
            ("mnist", "soup", ("lp_ft", "soup"), "test"),
            ("mnist", "soup", ("lp_ft", "soup"), "gaussian_noise_3"),
            ("mnist", "soup", ("full", "soup"), "val"),
        ],
    ),
]

CLAIMS += [
    (
        r"the head alone wins \((\S+) vs (\S+) for the last block.*?the last block beats the first "
        r"\((\S+) vs (\S+); (\S+) vs (\S+)\), and under noise only tuning everything recovers "
        r"\(full (\S+), Auto-RGN (\S+)\)",
        [
            ("surgical", "surgical", ("permuted_labels", "head"), None),
            ("surgical", "surgical", ("permuted_labels", "last_block"), None),
            ("surgical", "surgical", ("gaussian_noise", "last_block"), None),
            ("surgical", "surgical", ("gaussian_noise", "first_block"), None),
            ("surgical", "surgical", ("rotation", "last_block"), None),
            ("surgical", "surgical", ("rotation", "first_block"), None),
            ("surgical", "surgical", ("gaussian_noise", "full"), None),
            ("surgical", "surgical", ("gaussian_noise", "auto_rgn"), None),
        ],
    ),
    (
        r"within seed noise under rotation \((\S+) vs (\S+)\), and −0\.397 with permuted labels "
        r"\((\S+)\)",
        [
            ("surgical", "surgical", ("rotation", "auto_rgn"), None),
            ("surgical", "surgical", ("rotation", "last_block"), None),
            ("surgical", "surgical", ("permuted_labels", "auto_rgn"), None),
        ],
    ),
]

# Committed reports written before their writer recorded command, commit, date and machine.
# Not back-filled: the facts were not recorded then, and inventing them would be the lie
# these checks exist to catch. Rerunning a report (make results) must drop its entry.
WITHOUT_PROVENANCE = {
    **{
        f"{bench}.json": "benchmarks/common.py write_results records machine and date, "
        "not the command or ftlab's commit"
        for bench in (
            "compile",
            "frozen",
            "overhead",
            "peft",
            "startup",
            "sweep_cache",
            "syncs",
        )
    },
}
MACHINE_KEYS = ("cpu", "cores", "torch")


@dataclass
class Table:
    """A README markdown table: its header, rows, and the text between it and the table or
    heading before it (where its source is named)."""

    section: str  # the "## " heading it is under
    page: str  # the file it is in (README.md, docs/results.md, ...)
    lead: str
    header: list[str]
    rows: list[list[str]]
    header_line: str


def readme_tables(text: str) -> list[Table]:
    """Every markdown table of ``text``, indented ones (inside a list item) too."""
    tables, lead, section, page = [], [], "", ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(PAGE_MARK):
            page, section, lead = line.removeprefix(PAGE_MARK).removesuffix(" -->"), "", []
        elif line.startswith(("# ", "## ")):
            section, lead = line, []
        elif line.startswith("### "):
            lead = [line]
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].strip().startswith("|-"):
            body = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                body.append(cells(lines[i]))
                i += 1
            tables.append(Table(section, page, "\n".join(lead), cells(line), body, line))
            lead = []
            continue
        lead.append(lines[i])
        i += 1
    return tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def source_of(table: Table) -> Path | None:
    for pattern, fixed in SOURCE_PATTERNS:
        if match := pattern.search(table.lead):
            return ROOT / (fixed or match.group(1))
    return None


SUFFIXES = {"k": 1e3, "M": 1e6, "%": 1.0}


def shown(text: str) -> list[tuple[float, float]]:
    """The numbers of a cell as (value, half a unit of its last digit): ``0.588 ± 0.009`` is
    [(0.588, 0.0005), (0.009, 0.0005)]; ``3.384 M`` is [(3.384e6, 500)]."""
    numbers = []
    for part in text.replace("*", "").split("±"):
        match = re.fullmatch(r"\s*(-?\d+(?:\.(\d+))?)\s*([kM%]?)\s*", part)
        if match is None:
            raise ValueError(f"not a number: {text!r}")
        scale = SUFFIXES.get(match.group(3), 1.0)
        decimals = len(match.group(2) or "")
        numbers.append((float(match.group(1)) * scale, 0.5 * 10**-decimals * scale))
    return numbers


def agrees(cell: str, values: list[float], slack: float = 0.0) -> bool:
    """Whether a README cell rounds from the report's values (mean, then std if shown);
    ``slack`` widens the interval by the report's own rounding when it is a rounded copy."""
    numbers = shown(cell)
    if len(numbers) > len(values):
        return False
    return all(
        abs(value - actual) <= half + slack + 1e-9
        for (value, half), actual in zip(numbers, values, strict=False)
    )


def compare(
    table: Table,
    source: str,
    rows: dict[str, Any],
    columns: dict[str, Any],
    lookup: Callable[[Any, Any], tuple[list[float], float] | None],
) -> list[str]:
    """Every cell of ``table`` against ``lookup(row key, column key)`` (the report's mean and
    std, and its own rounding), the README's row and column names mapped by ``rows`` and
    ``columns``; a name without a mapping is a problem (so no cell goes unchecked), a
    ``lookup`` of None a cell with nothing to compare."""
    problems = []
    unknown = [n for n in table.header[1:] if n not in columns and n not in TEXT_COLUMNS]
    problems += [f"{source}: README column {n!r} has no mapping in the test" for n in unknown]
    for row in table.rows:
        if row[0] not in rows:
            problems.append(f"{source}: README row {row[0]!r} has no mapping in the test")
            continue
        for name, cell in zip(table.header[1:], row[1:], strict=True):
            if name not in columns or cell in TEXT_CELLS:
                continue
            found = lookup(rows[row[0]], columns[name])
            if found is None:
                problems.append(f"{source}: {row[0]} / {name}: not in the report")
            elif not agrees(cell, *found):
                problems.append(f"{source}: {row[0]} / {name}: README {cell}, report {found[0]}")
    return problems


def check_sweep_table(table: Table, folder: Path) -> list[str]:
    """A strategies table against its folder's report.csv, tuning.csv and soup_greedy.json."""
    report = pd.read_csv(folder / "report.csv", keep_default_na=False, na_values=[""])
    report["wise_ft"] = report.get("wise_ft", pd.Series("", index=report.index)).fillna("")
    tuning_file = folder / "tuning.csv"
    tuning = pd.read_csv(tuning_file).set_index("strategy") if tuning_file.exists() else None

    def lookup(setting: tuple[str, str], metric: Any) -> tuple[list[float], float] | None:
        strategy, wise_ft = setting
        if isinstance(metric, tuple):  # the search's cost: one number per strategy
            if tuning is None or strategy not in tuning.index:
                return None
            return [float(tuning.loc[strategy, metric[1]])], 0.0
        if strategy == "soup":  # one model: no std
            soup_file = folder / f"soup_greedy_{wise_ft}.json"
            if not soup_file.exists() or not metric.endswith("/acc"):
                return None
            soup = json.loads(soup_file.read_text())["soup"]
            split = metric.split("/")[-2] if metric.startswith("ood/") else metric.split("/")[0]
            return ([soup[split]["acc"]], 0.0) if split in soup else None
        found = report[(report["strategy"] == strategy) & (report["wise_ft"] == wise_ft)]
        if len(found) != 1:
            return None
        return [found.iloc[0][f"{metric}_mean"], found.iloc[0][f"{metric}_std"]], 0.0

    return compare(table, folder.name, STRATEGY_ROWS, STRATEGY_COLUMNS, lookup)


def check_surgical_table(table: Table, folder: Path) -> list[str]:
    """The surgical table (target x strategy, test accuracy) against surgical.csv."""
    report = pd.read_csv(folder / "surgical.csv")

    def lookup(target: str, strategy: str) -> tuple[list[float], float] | None:
        found = report[(report["target"] == target) & (report["plan_strategy"] == strategy)]
        if len(found) != 1:
            return None
        return [found.iloc[0]["test/acc_mean"], found.iloc[0]["test/acc_std"]], 0.0

    return compare(table, folder.name, SURGICAL_ROWS, SURGICAL_COLUMNS, lookup)


def check_distill_table(table: Table, path: Path) -> list[str]:
    """The distillation table against distill_mnist.json's rows."""
    rows = json.loads(path.read_text())["rows"]

    def lookup(key: str, column: str) -> tuple[list[float], float] | None:
        stats = rows.get(key, {}).get(column)
        return None if stats is None else ([stats["mean"], stats["std"]], 0.0)

    return compare(table, path.name, DISTILL_ROWS, DISTILL_COLUMNS, lookup)


def check_peft_table(table: Table, path: Path) -> list[str]:
    """The PEFT table's trainable shares (%) against peft.json, every spelling of a method."""
    results = json.loads(path.read_text())["results"]

    def lookup(methods: list[str], model: str) -> tuple[list[float], float] | None:
        shares = [
            r["trainable_share"] * 100
            for r in results
            if r["model"] == model and r["method"] in methods
        ]
        if not shares or max(shares) - min(shares) > 1e-9:
            return None  # absent, or the spellings disagree
        return [shares[0]], 5e-5  # peft.json rounds the share to 6 decimals: 1e-4 %

    return compare(table, path.name, PEFT_ROWS, PEFT_COLUMNS, lookup)


CHECKERS = {
    "report.csv": check_sweep_table,
    "distill_mnist.json": check_distill_table,
    "peft.json": check_peft_table,
}


def table_problems(text: str) -> list[str]:
    """Every README table with a committed source, checked against it; unsourced tables of
    the results page must be listed in UNSOURCED."""
    problems = []
    for table in readme_tables(text):
        source = source_of(table)
        if source is None:
            if table.page == str(RESULTS_PAGE.relative_to(ROOT)) and (
                table.header_line not in UNSOURCED
            ):
                problems.append(f"README table {table.header_line!r} names no committed report")
            continue
        if source.is_dir() and (source / "surgical.csv").exists():
            problems += check_surgical_table(table, source)
        elif source.is_dir():
            problems += CHECKERS["report.csv"](table, source)
        elif source.name in CHECKERS:
            problems += CHECKERS[source.name](table, source)
        else:
            problems.append(f"README table {table.header_line!r}: no checker for {source.name}")
    return problems


def claim_problems(text: str) -> list[str]:
    """The sentences of CLAIMS, their numbers against the reports."""
    flat = " ".join(text.split())
    problems = []
    for pattern, sources in CLAIMS:
        match = re.search(pattern, flat)
        if match is None:
            problems.append(f"README no longer says /{pattern}/: update CLAIMS")
            continue
        for cell, (folder, kind, row, name) in zip(match.groups(), sources, strict=True):
            values, slack = claim_value(RESULTS / folder, kind, row, name)
            if not agrees(cell, values, slack):
                problems.append(f"{folder} {row} {name}: README {cell}, report {values}")
    return problems


def claim_value(folder: Path, kind: str, row: Any, name: str) -> tuple[list, float]:
    """A report's (mean, std) and the slack its own rounding adds. Kinds: "csv" (report.csv,
    row = strategy, or None for a one-setting sweep), "alpha" (report.md's WiSE-FT table, row =
    (strategy, α)), "soup" (soup_greedy.json, row = "soup" or "best_job", name = a split or an
    OOD set), "surgical" (surgical.csv, row = (target, strategy))."""
    if kind == "csv":
        report = pd.read_csv(folder / "report.csv", keep_default_na=False, na_values=[""])
        found = report if row is None else report[report["strategy"] == row]
        if "wise_ft" in found:  # the strategy's own row, not its WiSE-FT best-α row
            found = found[found["wise_ft"].fillna("") == ""]
        assert len(found) == 1, f"{folder.name}: {len(found)} rows for {row}"
        return [found.iloc[0][f"{name}_mean"], found.iloc[0][f"{name}_std"]], 0.0
    if kind == "soup":  # row: (soup_greedy_<strategy>.json, "soup" or "best_job")
        soup = json.loads((folder / f"soup_greedy_{row[0]}.json").read_text())
        return [soup[row[1]][name]["acc"]], 0.0
    if kind == "tune_jobs":  # row: (strategy, job number)
        jobs = pd.read_csv(folder / "tune_jobs.csv")
        found = jobs[(jobs["strategy"] == row[0]) & (jobs["job"] == row[1])]
        assert len(found) == 1, f"{folder.name}: {len(found)} tuning jobs for {row}"
        return [found.iloc[0][name]], 0.0
    if kind == "surgical":
        report = pd.read_csv(folder / "surgical.csv")
        found = report[(report["target"] == row[0]) & (report["plan_strategy"] == row[1])]
        assert len(found) == 1, f"{folder.name}: {len(found)} rows for {row}"
        return [found.iloc[0]["test/acc_mean"], found.iloc[0]["test/acc_std"]], 0.0
    # report.md's α table shows 4 significant digits: their own half unit is the slack.
    tables = readme_tables((folder / "report.md").read_text())
    alpha = next(t for t in tables if "α" in t.header)
    at = alpha.header.index("α")
    cell = next(r for r in alpha.rows if r[0] == row[0] and r[at] == row[1])
    (mean, half), *std = shown(cell[alpha.header.index(name)])
    return [mean, *(s for s, _ in std)], half


def test_readme_tables_match_their_committed_reports() -> None:
    assert table_problems(published()) == []


def test_readme_sentences_quoting_reports_match_them() -> None:
    assert claim_problems(published()) == []


def test_every_sourced_table_is_checked() -> None:
    """The tables this file knows: both strategy tables, distillation and PEFT (a new sourced
    table without a checker fails table_problems)."""
    sources = [source_of(t) for t in readme_tables(published())]
    names = sorted(s.name for s in sources if s is not None)
    assert names == ["bbc", "distill_mnist.json", "mnist", "peft.json", "surgical"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("| 0.853 ± 0.026 |", "| 0.854 ± 0.026 |", "scratch (random init) / test acc"),
        ("| 0.889 ± 0.032 |", "| 0.889 ± 0.042 |", "layer-wise lr decay / gaussian noise"),  # a std
        ("| 0.378 M |", "| 0.379 M |", "LoRA / trainable"),
        ("| 0.948 | 0.687 |", "| 0.949 | 0.687 |", "greedy soup of LP-FT's sweep / test acc"),
        ("| 0.13 |", "| 0.14 |", "LP-FT / tuning CPU h"),
        ("| 0.255% |", "| 0.265% |", "BitFit / ViT-S/16"),
        ("| 0.250 ± 0.136 |", "| 0.260 ± 0.136 |", "student distilled (α = 0.5, T = 4) / sk"),
        ("(0.349 vs 0.198", "(0.359 vs 0.198", "('full', '0.5') ood_gaussian_noise_3_acc"),
        ("scored 0.985 test", "scored 0.975 test", "('full', 3) test/acc"),
    ],
)
def test_an_edited_readme_number_is_caught(old: str, new: str, expected: str) -> None:
    text = published()
    assert text.count(old) == 1, f"the results page changed: pick another number than {old!r}"
    problems = table_problems(text.replace(old, new)) + claim_problems(text.replace(old, new))
    assert len(problems) == 1 and expected in problems[0], problems


def committed_reports() -> list[Path]:
    """Report folders (holding report.md) and result files under benchmarks/results/, as git
    tracks them (a report nobody committed is nobody's claim); a .md with a .json twin is the
    same report."""
    listed = subprocess.run(
        ["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True
    )
    paths = [ROOT / p for p in listed.stdout.split()] if listed.returncode == 0 else []
    paths = paths or sorted(RESULTS.rglob("*"))  # not a git checkout: what is on disk
    reports = {p.parent for p in paths if p.name == "report.md"}
    reports |= {p for p in paths if p.suffix == ".json" and p.parent == RESULTS}
    reports |= {p for p in paths if p.suffix == ".md" and p.parent == RESULTS}
    return sorted(
        r for r in reports if not (r.suffix == ".md" and r.with_suffix(".json") in reports)
    )


def provenance_of(report: Path) -> dict:
    """Command, commit, date and machine as the report records them ({} where it does not)."""
    if report.is_dir():
        path = report / "provenance.json"
        return json.loads(path.read_text()) if path.exists() else {}
    if report.suffix != ".json":
        return {}
    body = json.loads(report.read_text())
    machine = body.get("machine") or {}
    return {
        "command": body.get("command") or body.get("commands"),
        "ftlab_commit": body.get("ftlab_commit"),
        "date": body.get("date") or machine.get("date"),
        "machine": machine,
    }


def missing_provenance(record: dict) -> list[str]:
    missing = [k for k in ("command", "ftlab_commit", "date") if not record.get(k)]
    machine = record.get("machine") or {}
    return missing + [f"machine.{k}" for k in MACHINE_KEYS if not machine.get(k)]


def test_every_committed_report_records_command_commit_date_and_machine() -> None:
    reports = committed_reports()
    assert reports, "no committed report found under benchmarks/results"
    problems = []
    for report in reports:
        missing = missing_provenance(provenance_of(report))
        if report.name in WITHOUT_PROVENANCE:
            if not missing:
                problems.append(f"{report.name} records its provenance now: drop its exception")
        elif missing:
            problems.append(f"{report.name} does not record {', '.join(missing)}")
        else:
            commit = provenance_of(report)["ftlab_commit"]
            known = subprocess.run(
                ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True
            )
            if known.returncode != 0 and (ROOT / ".git").exists():
                problems.append(f"{report.name}: ftlab commit {commit} is not in this repository")
    stale = set(WITHOUT_PROVENANCE) - {r.name for r in reports}
    problems += [f"{name}: listed in WITHOUT_PROVENANCE but not committed" for name in stale]
    assert problems == []


def test_a_new_report_without_provenance_fails(tmp_path: Path) -> None:
    """The exception list covers the old reports by name only: a new one must record it all."""
    (tmp_path / "report.md").write_text("# Sweep report\n")
    assert tmp_path.name not in WITHOUT_PROVENANCE
    assert missing_provenance(provenance_of(tmp_path)) == [
        "command",
        "ftlab_commit",
        "date",
        "machine.cpu",
        "machine.cores",
        "machine.torch",
    ]
    record = {"command": "ftlab-report x", "ftlab_commit": "abc", "date": "2026-12-01"}
    (tmp_path / "provenance.json").write_text(json.dumps(record | {"machine": {"cpu": "x"}}))
    assert missing_provenance(provenance_of(tmp_path)) == ["machine.cores", "machine.torch"]
