"""The findings' verdict rules (benchmarks/findings.py) on summaries built to hold and to fail."""

from __future__ import annotations

import sys

import pandas as pd
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import findings  # benchmarks/ is not a package


def summary(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """strategy -> {metric: mean}; std 0.01 everywhere."""
    out = []
    for strategy, values in rows.items():
        row = {"strategy": strategy, "wise_ft": ""}
        for metric, mean in values.items():
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, 0.01
        out.append(row)
    return pd.DataFrame(out)


def test_lp_ft_holds_only_when_ood_is_at_least_full_and_id_within_a_point() -> None:
    full = {"test/acc": 0.95, "ood/noise/acc": 0.50, "ood/rot/acc": 0.70}
    better = {"test/acc": 0.945, "ood/noise/acc": 0.60, "ood/rot/acc": 0.70}
    assert findings.lp_ft(summary({"full": full, "lp_ft": better}), "t").verdict == "held"
    worse_ood = {**better, "ood/noise/acc": 0.30}
    assert findings.lp_ft(summary({"full": full, "lp_ft": worse_ood}), "t").verdict == (
        "did not hold"
    )
    worse_id = {**better, "test/acc": 0.93}
    assert findings.lp_ft(summary({"full": full, "lp_ft": worse_id}), "t").verdict == (
        "did not hold"
    )
    missing = findings.lp_ft(summary({"full": full}), "t")
    assert missing.verdict == "not run"


def curves(ood: list[float], test: list[float]) -> pd.DataFrame:
    alphas = [0.0, 0.5, 1.0]
    return pd.DataFrame(
        {"strategy": "full", "alpha": alphas, "test_acc_mean": test, "ood_noise_acc_mean": ood}
    )


def test_wise_ft_needs_a_middle_alpha_above_both_ends_without_losing_id() -> None:
    s = summary({"full": {"test/acc": 0.9}})
    held = findings.wise_ft(curves([0.2, 0.6, 0.5], [0.3, 0.90, 0.9]), s, "t")
    assert held.verdict == "held"
    assert "| noise | 0.2000 | 0.5000 | 0.5 | 0.6000 |" in held.markdown()
    assert findings.wise_ft(curves([0.2, 0.4, 0.5], [0.3, 0.9, 0.9]), s, "t").verdict == (
        "did not hold"
    )
    lost_id = findings.wise_ft(curves([0.2, 0.6, 0.5], [0.3, 0.85, 0.9]), s, "t")
    assert lost_id.verdict == "did not hold"


def soup(soup_acc: float, ingredients: int = 2) -> dict:
    best = {"job": "0", "val": {"acc": 0.9}, "test": {"acc": 0.9}, "noise": {"acc": 0.5}}
    mixed = {"val": {"acc": 0.91}, "test": {"acc": soup_acc}, "noise": {"acc": 0.55}}
    names = [str(i) for i in range(ingredients)]
    return {"best_job": best, "soup": mixed, "ingredients": names, "jobs": 4}


def test_soup_holds_when_no_split_drops() -> None:
    assert findings.soups(soup(0.92), "t").verdict == "held"
    assert findings.soups(soup(0.88), "t").verdict == "did not hold"
    assert findings.soups(soup(0.92, ingredients=1), "t").verdict.startswith("held trivially")


def test_surgical_input_shift_wants_first_over_last_and_output_shift_the_head() -> None:
    def target(**acc: float) -> pd.DataFrame:
        return pd.DataFrame(
            [{"plan_strategy": k, "test/acc_mean": v, "test/acc_std": 0.01} for k, v in acc.items()]
        )

    good = {
        "gaussian_noise": target(
            first_block=0.8, last_block=0.6, head=0.5, full=0.7, auto_rgn=0.79
        ),
        "permuted_labels": target(
            first_block=0.2, last_block=0.6, head=0.9, full=0.8, auto_rgn=0.7
        ),
    }
    result = findings.surgical(good)
    assert result.verdict == "held"
    assert "Auto-RGN 0.7900 ± 0.0100 vs best single block (first_block)" in result.markdown()
    bad = {**good, "permuted_labels": target(first_block=0.2, last_block=0.95, head=0.9, full=0.8)}
    assert findings.surgical(bad).verdict == "held on 1 of 2 targets"
