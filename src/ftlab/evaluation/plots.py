"""The run directory's figures: ``wise_ft.png`` and ``drift.png``.

Figures are drawn on ``matplotlib.figure.Figure`` (the Agg canvas), never through pyplot, so no
display is needed and no global backend state changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # imported here: matplotlib costs ~0.5 s to import

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def plot_wise_ft(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against α: the in-distribution test set (val without one) and each OOD set."""
    fig, ax = _figure(6.4, 4.2)
    alphas = [row["alpha"] for row in rows]
    in_dist = "test_acc" if rows[0]["test_acc"] is not None else "val_acc"
    ax.plot(alphas, [row[in_dist] for row in rows], marker="o", lw=2, label=f"ID {in_dist[:-4]}")
    for name in rows[0]["ood"]:
        ax.plot(alphas, [row["ood"][name] for row in rows], marker="o", label=f"OOD {name}")
    ax.set_xlabel("α  (0: pretrained backbone, 1: fine-tuned; fine-tuned head throughout)")
    ax.set_ylabel("accuracy")
    ax.set_title("WiSE-FT: (1−α)·θ₀ + α·θ")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_drift(weight_change: dict[str, float | None], cka: float | None, path: Path) -> Path:
    """Relative weight change per layer group (input first), with the feature CKA in the title."""
    names = list(weight_change)
    fig, ax = _figure(max(5.0, 0.35 * len(names) + 2), 4.0)
    ax.bar(range(len(names)), [v or 0.0 for v in weight_change.values()], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("‖θ − θ₀‖ / ‖θ₀‖")
    shown = "n/a" if cka is None else f"{cka:.4f}"
    ax.set_title(f"weight change per layer group\nfeature CKA(pretrained, fine-tuned) = {shown}")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    return path
