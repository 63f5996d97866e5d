"""The effective-robustness plot of a sweep: in-distribution accuracy against OOD accuracy.

As in Taori et al. 2020 and the WiSE-FT and LP-FT papers: one point per setting of the sweep
(mean ± std over seeds in both axes), the WiSE-FT α curve of every setting that ran it, the
model soup as its own point when the sweep directory holds one (``soup.json``, or the
``soup_<recipe>.json`` files ``ftlab-soup`` writes), and the line
y = x. A point above another at the same x is more robust than it; a point far below y = x
loses under the shift what it gained in distribution.

One panel per OOD set, not their mean: the sets are different kinds of shift (rotation, noise,
another dataset), and a mean would hide which one a strategy withstands.

Axes are linear, and there is no fitted baseline of "models like these" (Taori et al. fit one
over hundreds of ImageNet models, on logit axes): a sweep holds a handful of settings, too few
to fit a trend, so y = x is the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ftlab.sweeps.jobs import job_dirs, read_job

ID_METRICS = ("test/acc", "val/acc")  # the in-distribution axis: test, else val
OOD_PREFIX, OOD_SUFFIX = "ood/", "/acc"
SOUP_FILE = "soup.json"
SOUP_GLOB = "soup_*.json"  # ftlab-soup's soup_greedy.json, soup_uniform.json
SPLITS = ("val", "test")  # the soup's in-distribution scores; its other keys are OOD sets
PLOT_FILE, TABLE_FILE = "effective_robustness.png", "effective_robustness.csv"


@dataclass
class Robustness:
    """What the plot shows, as numbers (also written to ``effective_robustness.csv``).

    ``points``: one row per (setting, OOD set): ``label, ood_set, id, id_std, ood, ood_std``.
    ``curves``: one row per (setting, α, OOD set) of WiSE-FT: ``label, alpha, ood_set, id,
    id_std, ood, ood_std``. ``soups``: ``{"label", "id": acc, "ood": {set: acc}}`` per soup
    file; ``note`` says why a soup file present was not used.
    """

    id_metric: str
    ood_sets: list[str]
    points: pd.DataFrame
    curves: pd.DataFrame
    soups: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    files: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """Points, α-curve rows and the soup in one long table, ``kind`` telling them apart."""
        rows = [self.points.assign(kind="setting", alpha=float("nan"))]
        if not self.curves.empty:
            rows.append(self.curves.assign(kind="wise_ft"))
        soups = [
            {"label": soup["label"], "ood_set": name, "id": soup["id"], "ood": acc}
            for soup in self.soups
            for name, acc in soup["ood"].items()
        ]
        if soups:
            rows.append(pd.DataFrame(soups).assign(kind="soup"))
        columns = ["kind", "label", "alpha", "ood_set", "id", "id_std", "ood", "ood_std"]
        return pd.concat(rows, ignore_index=True).reindex(columns=columns)


def setting_label(row: dict[str, Any] | pd.Series, settings: list[str]) -> str:
    """A setting's name in legends: its values (``full``), ``key=value`` for numbers
    (``optimizer.lr=0.1``), empty values left out (``full · best α``)."""
    parts = []
    for key in settings:
        value = row[key]
        if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
            continue
        text = str(value)
        if key == "wise_ft":  # the derived row of report --wise-ft
            text = f"WiSE-FT {text}"
        elif _is_numeric_text(text):
            text = f"{key}={text}"
        parts.append(text)
    return " · ".join(parts) or "the only setting"


def legend_keys(summary: pd.DataFrame, settings: list[str]) -> list[str]:
    """The setting columns a legend names: the strategy alone (and WiSE-FT's derived row) when
    that tells every setting apart, as in a tuned comparison where each strategy brings its
    own chosen lr and knobs (the report's table lists them); else every setting column."""
    short = [k for k in ("strategy", "wise_ft") if k in settings]
    if "strategy" in short and not summary.duplicated(subset=short).any():
        return short
    return settings


def effective_robustness(summary: pd.DataFrame, sweep_dir: str | Path) -> Robustness | None:
    """The plot's numbers from :func:`~ftlab.sweeps.report.summarize`'s table, each job's
    ``metrics.json`` ``wise_ft.rows`` and the sweep's soup files; None when the sweep has
    no OOD set or no in-distribution accuracy."""
    id_metric = next((m for m in ID_METRICS if _has_values(summary, m)), None)
    ood_sets = [
        name[len(OOD_PREFIX) : -len(OOD_SUFFIX)]
        for name in summary.attrs["metrics"]
        if name.startswith(OOD_PREFIX)
        and name.endswith(OOD_SUFFIX)
        and name.count("/") == 2  # ood/<set>/acc, not wise_ft/best/ood/...
        and _has_values(summary, name)
    ]
    if id_metric is None or not ood_sets:
        return None
    settings = legend_keys(summary, summary.attrs["settings"])
    points = [
        {
            "label": setting_label(row, settings),
            "ood_set": name,
            "id": row[f"{id_metric}_mean"],
            "id_std": row[f"{id_metric}_std"],
            "ood": row[f"{OOD_PREFIX}{name}{OOD_SUFFIX}_mean"],
            "ood_std": row[f"{OOD_PREFIX}{name}{OOD_SUFFIX}_std"],
        }
        for row in summary.to_dict("records")
        for name in ood_sets
        if not pd.isna(row[f"{id_metric}_mean"])
    ]
    # The α curve belongs to the job's own setting, not to its derived "best α" row.
    curve_keys = [k for k in settings if k != "wise_ft"]
    curves = wise_ft_rows(sweep_dir, curve_keys, id_metric.split("/")[0])
    soups, note = read_soups(Path(sweep_dir))
    return Robustness(id_metric, ood_sets, pd.DataFrame(points), curves, soups, note)


def wise_ft_rows(sweep_dir: str | Path, settings: list[str], id_split: str) -> pd.DataFrame:
    """Every completed job's ``wise_ft.rows`` (``{alpha, test_acc, ood: {set: acc}}``), mean
    and std over seeds per (setting, α, OOD set); empty without WiSE-FT jobs."""
    records = []
    for job_dir in job_dirs(Path(sweep_dir)):
        job = read_job(job_dir)
        if job["status"] != "completed":
            continue
        metrics = json.loads((job_dir / "metrics.json").read_text())
        label = setting_label({k: job["overrides"].get(k) for k in settings}, settings)
        for row in (metrics.get("wise_ft") or {}).get("rows") or []:
            id_acc = row.get(f"{id_split}_acc")
            for name, acc in (row.get("ood") or {}).items():
                if id_acc is not None and acc is not None:
                    records.append(
                        {"label": label, "alpha": row["alpha"], "ood_set": name, "id": id_acc}
                        | {"ood": acc}
                    )
    if not records:
        return pd.DataFrame(columns=["label", "alpha", "ood_set", "id", "id_std", "ood", "ood_std"])
    grouped = pd.DataFrame(records).groupby(["label", "alpha", "ood_set"], sort=True)
    table = grouped.agg(id=("id", "mean"), id_std=("id", "std"), ood=("ood", "mean"))
    table["ood_std"] = grouped["ood"].std()
    return table.reset_index()


def read_soups(sweep_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """The sweep's soups as ``{"label", "id": acc, "ood": {set: acc}}``, and a note naming
    the soup files that could not be read (and why).

    Two layouts of ``{"soup": ...}``: nested, ``{"test": {"acc"}, "ood": {set: {"acc"}}}``
    (``soup.json``), and flat, ``{"val": ..., "test": ..., <set>: {"acc"}}`` (what
    ``ftlab-soup`` writes to ``soup_<recipe>.json``). ``val`` stands in for ``test`` when the
    soup has no test score.
    """
    paths = [sweep_dir / SOUP_FILE] if (sweep_dir / SOUP_FILE).is_file() else []
    paths += sorted(sweep_dir.glob(SOUP_GLOB))
    soups, notes = [], []
    for path in paths:
        try:
            scores = json.loads(path.read_text())["soup"]
            split = scores.get("test") or scores["val"]
            flat = {name: value for name, value in scores.items() if name not in SPLITS}
            sets = scores["ood"] if isinstance(scores.get("ood"), dict) else flat
            ood = {name: float(value["acc"]) for name, value in sets.items()}
            recipe = path.stem.removeprefix("soup").strip("_")
            label = f"{recipe} soup" if recipe else "soup"
            soups.append({"label": label, "id": float(split["acc"]), "ood": ood})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            notes.append(
                f"{path.name} ignored (expected soup.test.acc and soup.ood): "
                f"{type(exc).__name__}: {exc}"
            )
    return soups, "; ".join(notes)


def plot_effective_robustness(result: Robustness, title: str = "") -> Any:
    """One panel per OOD set; returns the (pyplot-free) Figure.

    Each setting keeps its colour across panels; the WiSE-FT curve of a setting is a line in
    that colour from α=0 (open circle) to α=1; the soup is a black star.
    """
    from matplotlib.figure import Figure  # imported here: matplotlib costs ~0.5 s to import

    count = len(result.ood_sets)
    cols = min(count, 3)
    rows = -(-count // cols)
    fig = Figure(figsize=(4.6 * cols + 2.6, 4.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = list(dict.fromkeys(result.points["label"]))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    markers = "osD^vP<>Xh"
    for ax, name in zip(axes, result.ood_sets, strict=False):
        for i, label in enumerate(labels):
            point = result.points[
                (result.points["label"] == label) & (result.points["ood_set"] == name)
            ]
            ax.errorbar(
                point["id"],
                point["ood"],
                xerr=point["id_std"].fillna(0),
                yerr=point["ood_std"].fillna(0),
                fmt=markers[(i // 10) % len(markers)],
                color=colours[label],
                capsize=3,
                label=label,
            )
        curves = result.curves[result.curves["ood_set"] == name]
        for label, curve in curves.groupby("label", sort=False):
            curve = curve.sort_values("alpha")
            colour = colours.get(label, "0.3")
            ax.plot(
                curve["id"],
                curve["ood"],
                "-",
                color=colour,
                lw=1.2,
                alpha=0.8,
                marker=".",
                label=f"{label}: WiSE-FT α curve",
                gid="wise_ft",
            )
            # α=0 (the pretrained backbone) hollow, so the curve's direction reads at a glance.
            ax.plot(curve["id"].iloc[:1], curve["ood"].iloc[:1], "o", mfc="white", color=colour)
            for _, end in curve.iloc[[0, -1]].iterrows():
                ax.annotate(
                    f"α={end['alpha']:g}",
                    (end["id"], end["ood"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        for i, soup in enumerate(s for s in result.soups if name in s["ood"]):
            ax.plot(
                soup["id"],
                soup["ood"][name],
                "*P"[i % 2],  # a star, then a plus: greedy and uniform soups told apart
                ms=14,
                color="k",
                label=soup["label"],
                gid=soup["label"],
            )
        _diagonal(ax)
        ax.set_title(f"OOD: {name}")
        ax.set_xlabel(f"in-distribution accuracy ({result.id_metric})")
        ax.set_ylabel(f"OOD accuracy ({name})")
        ax.grid(alpha=0.3)
    for ax in axes[count:]:
        ax.set_visible(False)
    # One legend for every panel: the settings are the same in each.
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8)
    fig.suptitle(
        f"Effective robustness{': ' + title if title else ''} (mean ± std over seeds)",
        fontsize=11,
    )
    return fig


def write_effective_robustness(
    summary: pd.DataFrame, sweep_dir: str | Path, out: Path
) -> Robustness | None:
    """``effective_robustness.png`` and ``.csv`` into ``out``; None (and neither file, a stale
    one removed) when the sweep has no OOD set."""
    from ftlab.sweeps.context import sweep_id

    result = effective_robustness(summary, sweep_dir)
    if result is None:
        for name in (PLOT_FILE, TABLE_FILE):
            (out / name).unlink(missing_ok=True)
        return None
    result.table().to_csv(out / TABLE_FILE, index=False)
    plot_effective_robustness(result, sweep_id(sweep_dir)).savefig(out / PLOT_FILE, dpi=120)
    result.files = [TABLE_FILE, PLOT_FILE]
    return result


def markdown(result: Robustness | None) -> str:
    """report.md's "Effective robustness" section (empty without OOD sets)."""
    if result is None:
        return ""
    names = ", ".join(soup["label"] for soup in result.soups)
    soup = f"the {names} (black)" if result.soups else "no soup"
    if not result.soups and not result.note:
        soup += f" (no `{SOUP_FILE}` or `{SOUP_GLOB}` in the sweep directory)"
    if result.note:
        soup += f" ({result.note})"
    wise = (
        "the WiSE-FT α curve of every setting that ran it (a line)"
        if len(result.curves)
        else "no WiSE-FT α curve (no job has `wise_ft.rows`)"
    )
    return (
        "\n## Effective robustness\n\n"
        f"![effective robustness]({PLOT_FILE})\n\n"
        f"In-distribution accuracy ({result.id_metric}) against the accuracy on each OOD set "
        f"({', '.join(result.ood_sets)}; one panel each), one point per setting with ± std "
        f"over seeds in both axes, {wise}, {soup}, and y = x. The numbers are in "
        f"`{TABLE_FILE}`.\n"
    )


def _diagonal(ax: Any) -> None:
    """y = x across the panel, drawn after the data so the limits cover both."""
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], "--", color="0.5", lw=1, label="y = x", gid="diagonal")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def _has_values(summary: pd.DataFrame, metric: str) -> bool:
    column = f"{metric}_mean"
    return column in summary and summary[column].notna().any()


def _is_numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
