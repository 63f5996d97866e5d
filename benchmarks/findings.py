"""Four published findings, checked against a tuned comparison: held, or did not hold.

Each check is a plain function of the sweep summaries :mod:`benchmarks.results` writes (mean
and std over the final seeds), with its rule stated in the report it writes, so a reader can
redo the verdict from the table. A difference smaller than the larger of the two standard
deviations is called "within seed noise": with 3 seeds it is no evidence either way.

1. ``lp_ft``: LP-FT ≥ full fine-tuning OOD and ≈ ID (Kumar et al., ICLR 2022).
2. ``wise_ft``: an intermediate α beats both ends OOD without losing ID (Wortsman et al., CVPR
   2022).
3. ``soups``: the greedy soup ≥ the best single model of its sweep, ID and OOD (Wortsman et
   al., ICML 2022).
4. ``surgical``: first block > last block for input-level shifts, the head for an output-level
   shift; Auto-RGN against the best single block (Lee et al., ICLR 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ID_TOLERANCE = 0.01  # "≈ ID" / "without losing ID": at most 1 point of test accuracy lower


@dataclass
class Finding:
    """A finding's verdict, its rule and the numbers behind it (markdown)."""

    name: str
    claim: str
    rule: str
    verdict: str  # "held", "did not hold", "held on k of n ...", "not run"
    lines: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join(
            [
                f"### {self.claim}",
                "",
                f"**Verdict: {self.verdict}.** Rule: {self.rule}",
                "",
                *self.lines,
                "",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "claim": self.claim, "rule": self.rule, "verdict": self.verdict}


def ood_sets(summary: pd.DataFrame) -> list[str]:
    """The OOD sets of a summary: ``ood/<set>/acc_mean`` columns."""
    return [c[4:-9] for c in summary.columns if c.startswith("ood/") and c.endswith("/acc_mean")]


def row(summary: pd.DataFrame, strategy: str, wise_ft: str = "") -> pd.Series | None:
    """A strategy's row of the final summary (``wise_ft``: "" or "best α"). A sweep of one
    strategy has no ``strategy`` column: it is among the overrides every job shares."""
    if "strategy" in summary:
        rows = summary[summary["strategy"] == strategy]
    elif summary.attrs.get("fixed", {}).get("strategy") == strategy:
        rows = summary
    else:
        return None
    if "wise_ft" in rows:
        rows = rows[rows["wise_ft"].fillna("") == wise_ft]
    return None if rows.empty else rows.iloc[0]


def mean_std(r: pd.Series, metric: str) -> tuple[float, float]:
    std = r.get(f"{metric}_std", float("nan"))
    return float(r[f"{metric}_mean"]), 0.0 if pd.isna(std) else float(std)


def fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def compare(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``+0.0123 (beyond seed noise)`` or ``(within seed noise)``: a − b against max(std)."""
    delta = a[0] - b[0]
    noise = max(a[1], b[1])
    return f"{delta:+.4f} ({'beyond' if abs(delta) > noise else 'within'} seed noise)"


def lp_ft(summary: pd.DataFrame, task: str) -> Finding:
    claim = f"LP-FT vs full fine-tuning ({task})"
    rule = (
        "held if LP-FT's OOD accuracy, averaged over the OOD sets, is at least full fine-"
        f"tuning's and its test accuracy is at most {ID_TOLERANCE:.0%} lower."
    )
    full, lpft = row(summary, "full"), row(summary, "lp_ft")
    if full is None or lpft is None:
        return Finding("lp_ft", claim, rule, "not run")
    sets = ood_sets(summary)
    lines = [
        "| metric | full fine-tuning | LP-FT | LP-FT − full |",
        "|---|---|---|---|",
    ]
    for metric in ["test/acc", *(f"ood/{s}/acc" for s in sets)]:
        a, b = mean_std(lpft, metric), mean_std(full, metric)
        lines.append(f"| {metric} | {fmt(*b)} | {fmt(*a)} | {compare(a, b)} |")
    ood_full = sum(mean_std(full, f"ood/{s}/acc")[0] for s in sets) / len(sets)
    ood_lpft = sum(mean_std(lpft, f"ood/{s}/acc")[0] for s in sets) / len(sets)
    id_ok = mean_std(lpft, "test/acc")[0] >= mean_std(full, "test/acc")[0] - ID_TOLERANCE
    held = ood_lpft >= ood_full and id_ok
    lines += [
        "",
        f"Mean OOD accuracy: full {ood_full:.4f}, LP-FT {ood_lpft:.4f}. "
        f"Chosen settings: full {_chosen(full)}; LP-FT {_chosen(lpft)}.",
    ]
    return Finding("lp_ft", claim, rule, "held" if held else "did not hold", lines)


def wise_ft(
    curves: pd.DataFrame, summary: pd.DataFrame, task: str, strategy: str = "full"
) -> Finding:
    """``curves``: :func:`ftlab.sweeps.report.wise_ft_curves` of the final sweep; the curve of
    ``strategy`` is judged (θ₀ is the pretrained backbone, the head the fine-tuned one)."""
    claim = (
        f"WiSE-FT of {strategy}: an intermediate α beats both ends OOD without losing ID ({task})"
    )
    rule = (
        "per OOD set, the intermediate α (0 < α < 1) with the best OOD accuracy must beat both "
        f"α = 0 and α = 1 there, with test accuracy at most {ID_TOLERANCE:.0%} below α = 1's; "
        "held if so on every set."
    )
    if "strategy" in curves:
        curves = curves[curves["strategy"] == strategy]
    if curves.empty:
        return Finding("wise_ft", claim, rule, "not run")
    by_alpha = curves.set_index("alpha")
    ends = by_alpha.loc[[0.0, 1.0]]
    middle = by_alpha[(by_alpha.index > 0) & (by_alpha.index < 1)]
    sets = [c[4:-9] for c in curves.columns if c.startswith("ood_") and c.endswith("_acc_mean")]
    lines = [
        "| OOD set | α = 0 | α = 1 | best intermediate α | its OOD | its test | α = 1 test "
        "| beats both ends, keeps ID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    wins = 0
    test1 = float(ends.loc[1.0, "test_acc_mean"])
    for name in sets:
        column = f"ood_{name}_acc_mean"
        alpha = float(middle[column].idxmax())
        ood = float(middle.loc[alpha, column])
        test = float(middle.loc[alpha, "test_acc_mean"])
        ok = ood > ends[column].max() and test >= test1 - ID_TOLERANCE
        wins += ok
        lines.append(
            f"| {name} | {ends.loc[0.0, column]:.4f} | {ends.loc[1.0, column]:.4f} | {alpha:g} "
            f"| {ood:.4f} | {test:.4f} | {test1:.4f} | {'yes' if ok else 'no'} |"
        )
    best = row(summary, strategy, "best α")
    if best is not None:
        lines += [
            "",
            f"The α chosen by val (report row `{strategy} · best α`): test "
            f"{fmt(*mean_std(best, 'test/acc'))}.",
        ]
    verdict = (
        "held"
        if wins == len(sets)
        else ("did not hold" if wins == 0 else f"held on {wins} of {len(sets)} OOD sets")
    )
    return Finding("wise_ft", claim, rule, verdict, lines)


def soups(soup: dict[str, Any], task: str, strategy: str = "full") -> Finding:
    """``soup``: ftlab-soup's ``soup_greedy.json`` of ``strategy``'s tuning sweep."""
    claim = f"Greedy soup of {strategy}'s tuning sweep vs its best single model ({task})"
    rule = "held if the soup's test and every OOD accuracy are at least the best single job's."
    best, mixed = soup["best_job"], soup["soup"]
    names = [k for k in mixed if k not in ("val",)]
    lines = [
        f"Soup of {len(soup['ingredients'])} of {soup['jobs']} jobs "
        f"({', '.join(soup['ingredients'])}); the best single job is {best['job']} (by val).",
        "",
        "| split | best single | greedy soup | soup − best |",
        "|---|---|---|---|",
    ]
    ok = True
    for name in ["val", *names]:
        a, b = float(mixed[name]["acc"]), float(best[name]["acc"])
        if name != "val":
            ok &= a >= b
        lines.append(f"| {name} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
    if len(soup["ingredients"]) == 1:
        lines += [
            "",
            "Only the best job was kept, so the soup is that job: no evidence either way.",
        ]
        return Finding("soups", claim, rule, "held trivially (a soup of one)", lines)
    return Finding("soups", claim, rule, "held" if ok else "did not hold", lines)


# Targets are input-level unless named here.
OUTPUT_LEVEL = {"permuted_labels"}


def surgical(summaries: dict[str, pd.DataFrame]) -> Finding:
    """``summaries``: target -> the final summary of that target's adaptation sweep, whose rows
    are told apart by their final job names' strategy (column ``plan_strategy``)."""
    claim = "Surgical fine-tuning: which block to tune depends on the shift"
    rule = (
        "for an input-level shift (noise, rotation), tuning the first block alone must beat "
        "tuning the last alone; for an output-level shift (permuted labels), tuning the head "
        "alone must beat tuning any single block and full fine-tuning. Held if every target "
        "agrees. Auto-RGN is compared with the best of the single blocks tuned."
    )
    if not summaries:
        return Finding("surgical", claim, rule, "not run")
    names = list(next(iter(summaries.values()))["plan_strategy"])
    lines = [
        "Test accuracy on the target (mean ± std over seeds) after adapting the stage-one MNIST "
        "model with 100 target labels:",
        "",
        "| target | level | " + " | ".join(names) + " | verdict |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    agrees = 0
    rgn_lines = []
    for target, summary in summaries.items():
        acc = {
            r["plan_strategy"]: (float(r["test/acc_mean"]), _std(r))
            for r in summary.to_dict("records")
        }
        level = "output" if target in OUTPUT_LEVEL else "input"
        if level == "input":
            ok = acc["first_block"][0] > acc["last_block"][0]
            why = f"first − last {compare(acc['first_block'], acc['last_block'])}"
        else:
            rivals = [n for n in ("first_block", "middle_block", "last_block", "full") if n in acc]
            ok = all(acc["head"][0] > acc[n][0] for n in rivals)
            top = max(rivals, key=lambda n: acc[n][0])
            why = f"head − {top} {compare(acc['head'], acc[top])}"
        agrees += ok
        cells = " | ".join(fmt(*acc[n]) if n in acc else "—" for n in names)
        lines.append(
            f"| {target} | {level} | {cells} | {'held' if ok else 'did not hold'}: {why} |"
        )
        blocks = [n for n in ("first_block", "middle_block", "last_block") if n in acc]
        if "auto_rgn" in acc and blocks:
            top = max(blocks, key=lambda n: acc[n][0])
            rgn_lines.append(
                f"- {target}: Auto-RGN {fmt(*acc['auto_rgn'])} vs best single block ({top}) "
                f"{fmt(*acc[top])}: {compare(acc['auto_rgn'], acc[top])}."
            )
    lines += ["", "Auto-RGN against the best single block:", "", *rgn_lines]
    verdict = (
        "held"
        if agrees == len(summaries)
        else ("did not hold" if agrees == 0 else f"held on {agrees} of {len(summaries)} targets")
    )
    return Finding("surgical", claim, rule, verdict, lines)


def _std(r: dict[str, Any]) -> float:
    std = r.get("test/acc_std", float("nan"))
    return 0.0 if pd.isna(std) else float(std)


def _chosen(r: pd.Series) -> str:
    keys = [k for k in r.index if "." in k and not k.endswith(("_mean", "_std")) and "/" not in k]
    picked = [f"{k}={r[k]}" for k in keys if isinstance(r[k], str) and r[k]]
    return " ".join(picked) or "—"
