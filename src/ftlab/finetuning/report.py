"""Show a plan as a table: every layer group, when it unfreezes, its lr, weight decay and BN."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ftlab.finetuning.plan import Plan


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"freeze={plan.schedule}  bn={plan.bn}", title_justify="left")
    for column in ("#", "group", "params", "phase", "epoch", "lr", "weight decay", "BN"):
        table.add_column(column, justify="right" if column in ("#", "params", "lr") else "left")
    for index, group in enumerate(plan.groups):
        units = [u for u in plan.units if u.group == group]
        phases = sorted({u.phase for u in units})
        decayed = [u for u in units if u.decay] or units
        lrs = sorted({f"{u.lr:.3g}" for u in decayed}, key=float)
        wd = sorted({u.weight_decay for u in units}, reverse=True)
        table.add_row(
            str(index),
            group,
            f"{plan.group_numel[group]:,}",
            ", ".join(map(str, phases)) or "never",
            ", ".join(str(plan.phases[p].epoch) for p in phases) or "-",
            ", ".join(lrs) or "-",
            " / ".join(f"{w:g}" for w in wd) or "-",
            plan.bn if group != "head" else "-",
        )
    return table


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console(width=120)
    console.print(plan_table(plan))
    for row in plan.summary():
        console.print(
            f"phase {row['phase']} from epoch {row['epoch']}: "
            f"{row['trainable_params']:,} trainable, unfreezes {', '.join(row['unfrozen'])}"
        )
