"""The README's results, from nothing: every strategy tuned on validation, then tested over
fresh seeds, with the search's cost, the effective-robustness plot and the findings.

    python benchmarks/results.py mnist          # or bbc, surgical; lp_ft, wise_ft, soups
    make results TASK=mnist                     # the same, then the committed report

A plan (``benchmarks/plans/<name>.yaml``) names an experiment (the task: model, data, OOD
sets, epochs) and, per strategy, a grid of its own learning rate and one or two knobs. For
each strategy the driver

1. runs the grid as a Hydra multirun at the tuning seeds (``tune/<strategy>/``),
2. picks the setting with the best mean ``val/acc``,
3. reruns that setting at fresh seeds (``final/<strategy>_<n>/``).

``final/`` is then one sweep, and ``ftlab-report``'s own :func:`write_report` writes its table
(the chosen hyperparameters are its setting columns), WiSE-FT rows and effective-robustness
plot; the driver adds the search's cost, the plateau check and the findings.

Every multirun is a child ``train.py -m`` with one CPU thread, ``--jobs`` of them at a time.
A step that finished (``DONE`` in its folder) is not rerun, so an interrupted driver resumes
where it stopped when given the same ``--root``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftlab.sweeps.report import (
    PROVENANCE_FILE,
    load_sweep,
    provenance,
    provenance_markdown,
    wise_ft_curves,
    write_report,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import findings  # benchmarks/ is not a package: run.py imports its scripts the same way

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLANS = HERE / "plans"
RESULTS = HERE / "results"
DONE = "DONE"
THREADS = 1  # per job: 2 one-thread jobs beat one two-thread job on 2 cores (small models)
METRIC = "val/acc"
WISE_FT_ALPHAS = "[0,0.25,0.5,0.75,1]"  # conf/strategy/full.yaml's
PLATEAU_GAIN = 0.005  # val/acc gained by doubling the epochs below which the budget sufficed


# -- plans ------------------------------------------------------------------------------------


def read_plan(name: str) -> dict[str, Any]:
    """A plan (a name in benchmarks/plans, or a YAML file's path), with ``base: <plan>``
    merged in and ``only: [...]`` applied."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PLANS / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PLANS.glob("*.yaml"))
        raise SystemExit(f"error: no plan {name}: one of {', '.join(names)}")
    plan = yaml.safe_load(path.read_text())
    if "base" in plan:
        base = read_plan(plan["base"])
        only = plan.get("only")
        if only:
            base["strategies"] = {k: v for k, v in base["strategies"].items() if k in only}
        base.update({k: v for k, v in plan.items() if k not in ("base", "only")})
        plan = base
    plan["name"] = Path(name).stem
    return plan


def grid_overrides(grid: dict[str, Any]) -> list[str]:
    """``{optimizer.lr: [1e-3, 3e-3], freeze.r: 8}`` -> Hydra sweep overrides."""
    out = []
    for key, values in (grid or {}).items():
        values = values if isinstance(values, list) else [values]
        out.append(f"{key}={','.join(_text(v) for v in values)}")
    return out


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


# -- running ----------------------------------------------------------------------------------


def multirun(
    overrides: list[str], sweep_dir: Path, subdir: str | None = None, tag: str = ""
) -> bool:
    """One ``train.py -m`` in a child process; True when it exited 0. Skipped (True) when
    ``sweep_dir`` already holds this call's DONE marker (``tag`` tells calls sharing a dir
    apart)."""
    suffix = f"-{tag}" if tag else ""
    marker = sweep_dir / f"{DONE}{suffix}"
    if marker.exists():
        return True
    command = [sys.executable, str(ROOT / "train.py"), "-m", *overrides]
    command += [f"hydra.sweep.dir={sweep_dir}"]
    if subdir:
        command += [f"hydra.sweep.subdir={subdir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log = sweep_dir / f"driver{suffix}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {shlex.join(command[1:])}", flush=True)
    with log.open("w") as out:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        print(f"  exit {code}: see {log}", flush=True)
        return False
    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return True


def drop_checkpoints(sweep_dir: Path, prefix: str = "") -> None:
    """Delete the checkpoints of a finished sweep's jobs (metrics.json keeps their results): a
    MiniLM job leaves two of ~270 MB (weights and AdamW state), and a task's ~70 jobs would fill
    the disk. Kept only where a later step reads them: the soups' and the teacher's sweeps."""
    for job in sweep_dir.glob(f"{prefix}*/checkpoints"):
        if (job.parent / "metrics.json").exists():
            shutil.rmtree(job, ignore_errors=True)


def choose(tune_dir: Path, keys: list[str]) -> tuple[dict[str, str], float]:
    """The grid setting with the best mean val/acc over the tuning seeds (ties: the first)."""
    jobs = load_sweep(tune_dir)
    done = jobs[jobs["status"] == "completed"]
    if done.empty:
        raise SystemExit(f"error: {tune_dir}: no completed job to choose from")
    keys = [k for k in keys if k in done]
    means = done.groupby(keys, sort=False)[METRIC].mean() if keys else done[METRIC]
    if not keys:
        return {}, float(means.mean())
    best = means.idxmax()
    best = best if isinstance(best, tuple) else (best,)
    return dict(zip(keys, best, strict=True)), float(means.max())


def best_checkpoint(tune_dir: Path) -> Path:
    """The best tuning job's best checkpoint (the distillation teacher)."""
    jobs = load_sweep(tune_dir)
    done = jobs[jobs["status"] == "completed"]
    return job_checkpoint(tune_dir / done.loc[done[METRIC].idxmax(), "job"])


def job_checkpoint(job_dir: Path) -> Path:
    """A job's best checkpoint, in its own folder (metrics.json names where it was written)."""
    metrics = json.loads((job_dir / "metrics.json").read_text())
    return job_dir / "checkpoints" / Path(metrics["best_checkpoint"]).name


class Driver:
    """Runs one plan into ``root`` and writes its report into ``out``."""

    def __init__(
        self, plan: dict[str, Any], root: Path, out: Path, jobs: int, shared: list[str] = ()
    ) -> None:
        self.plan, self.root, self.out, self.jobs = plan, root, out, jobs
        self.base = [
            *([f"experiment={plan['experiment']}"] if plan.get("experiment") else []),
            f"trainer.max_epochs={plan['epochs']}",
            *plan.get("overrides", []),
            *shared,  # a two-stage plan's: the source checkpoint and the target's data
        ]
        self.chosen: dict[str, dict[str, str]] = {}
        self.tune_val: dict[str, float] = {}
        self.extra: dict[str, list[str]] = {}  # overrides a strategy gets beyond its grid

    def seeds(self, key: str) -> str:
        return "seed=" + ",".join(str(s) for s in self.plan[key])

    def strategy_overrides(self, name: str) -> list[str]:
        spec = self.plan["strategies"][name] or {}
        return [f"strategy={spec.get('strategy', name)}", *spec.get("overrides", [])]

    def tune(self, name: str) -> None:
        spec = self.plan["strategies"][name] or {}
        if spec.get("teacher"):
            teacher = self.root / "teacher.ckpt"
            if not teacher.exists():
                shutil.copy(best_checkpoint(self.root / "tune" / spec["teacher"]), teacher)
            self.extra[name] = [f"module.teacher.ckpt_path={teacher}"]
        overrides = [
            *self.base,
            *self.strategy_overrides(name),
            *self.extra.get(name, []),
            *self.plan.get("tune_overrides", []),
            *grid_overrides(spec.get("grid", {})),
            self.seeds("tune_seeds"),
        ]
        multirun(overrides, self.root / "tune" / name)
        if name not in self.soup_names() and not any(
            (s or {}).get("teacher") == name for s in self.plan["strategies"].values()
        ):
            drop_checkpoints(self.root / "tune" / name)
        keys = list((spec.get("grid") or {}).keys())
        self.chosen[name], self.tune_val[name] = choose(self.root / "tune" / name, keys)

    def final(self, name: str) -> None:
        chosen = [f"{k}={v}" for k, v in self.chosen[name].items()]
        overrides = [
            *self.base,
            *self.strategy_overrides(name),
            *self.extra.get(name, []),
            *chosen,
            # WiSE-FT for strategies whose recipe does not turn it on (strategy=full does)
            *(
                [f"wise_ft.alphas={WISE_FT_ALPHAS}"]
                if name in self.plan.get("wise_ft_also", [])
                else []
            ),
            self.seeds("final_seeds"),
        ]
        multirun(overrides, self.root / "final", subdir=f"{name}_${{hydra.job.num}}", tag=name)
        drop_checkpoints(self.root / "final", prefix=f"{name}_")

    def run(self) -> None:
        names = list(self.plan["strategies"])
        first = [n for n in names if not (self.plan["strategies"][n] or {}).get("teacher")]
        later = [n for n in names if n not in first]
        with ThreadPoolExecutor(self.jobs) as pool:
            list(pool.map(self.tune, first))
            list(pool.map(self.tune, later))
            list(pool.map(self.final, names))
            extras = []
            if self.plan.get("plateau") in names:
                extras.append(pool.submit(self.plateau))
            extras += [pool.submit(self.soup, name) for name in self.soup_names()]
            for future in extras:
                future.result()

    # -- checks and derived models --------------------------------------------------------------

    def plateau(self) -> None:
        """The chosen full fine-tuning again at twice the epochs, at the first tuning seed."""
        name = self.plan["plateau"]
        epochs = 2 * int(self.plan["epochs"])
        chosen = [f"{k}={v}" for k, v in self.chosen[name].items()]
        overrides = [
            *self.base,
            *self.strategy_overrides(name),
            *chosen,
            *self.plan.get("tune_overrides", []),
            f"trainer.max_epochs={epochs}",  # after the base's: the last one wins
            f"seed={self.plan['tune_seeds'][0]}",
        ]
        multirun(overrides, self.root / "plateau")
        drop_checkpoints(self.root / "plateau")

    def soup_names(self) -> list[str]:
        """The strategies whose tuning sweep gets a greedy soup (plan key ``soup``: a name or
        a list)."""
        soup = self.plan.get("soup") or []
        return [
            n for n in ([soup] if isinstance(soup, str) else soup) if n in self.plan["strategies"]
        ]

    def soup(self, name: str) -> None:
        """ftlab-soup's greedy soup of ``name``'s tuning sweep, copied into final/ (as the
        effective-robustness plot's own point) and the report folder."""
        tune_dir = self.root / "tune" / name
        if not (tune_dir / "soup_greedy.json").exists():
            command = [str(Path(sys.executable).parent / "ftlab-soup"), str(tune_dir)]
            env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
            subprocess.run([*command, "--recipe", "greedy"], check=True, env=env, cwd=ROOT)
        shutil.copy(tune_dir / "soup_greedy.json", self.root / "final" / f"soup_greedy_{name}.json")

    # -- the report -------------------------------------------------------------------------------

    def report(self, command: str) -> pd.DataFrame:
        """report.md (ftlab-report's, plus tuning, budget, soup and findings), tuning.csv."""
        summary = write_report(
            self.root / "final",
            columns=self.plan["columns"],
            wise_ft=bool(self.plan.get("wise_ft")),
            out=self.out,
            command=command,
        )
        text = (self.out / "report.md").read_text()
        head, sep, tail = text.partition("\n## Provenance")
        parts = [head.rstrip() + "\n", self.tuning_markdown()]
        if self.plan.get("plateau") in self.plan["strategies"]:
            parts.append(self.plateau_markdown())
        for name in self.soup_names():
            parts.append(self.soup_markdown(name))
            # Committed with the report: the soup's numbers the README quotes.
            soup = self.root / "tune" / name / "soup_greedy.json"
            shutil.copy(soup, self.out / f"soup_greedy_{name}.json")
        found = self.findings(summary)
        if found:
            parts += ["## Findings", "", *(f.markdown() for f in found)]
            verdicts = [f.to_dict() for f in found]
            (self.out / "findings.json").write_text(json.dumps(verdicts, indent=2) + "\n")
        (self.out / "report.md").write_text("\n".join(parts) + sep + tail)
        self.tuning_table().to_csv(self.out / "tuning.csv", index=False)
        self.tuning_jobs().to_csv(self.out / "tune_jobs.csv", index=False)
        return summary

    def tuning_jobs(self) -> pd.DataFrame:
        """Every tuning job: its strategy, job number, overrides and metrics (the settings the
        choice was made from)."""
        frames = [
            load_sweep(self.root / "tune" / name).assign(strategy=name)
            for name in self.plan["strategies"]
        ]
        jobs = pd.concat(frames, ignore_index=True)
        first = ["strategy", "job", "status", "seed", "val/acc", "test/acc"]
        return jobs[[c for c in first if c in jobs] + [c for c in jobs if c not in first]]

    def findings(self, summary: pd.DataFrame) -> list[findings.Finding]:
        """The published findings this plan's strategies can check."""
        task = self.plan.get("task", self.plan["name"])
        names, found = self.plan["strategies"], []
        if "full" in names and "lp_ft" in names:
            found.append(findings.lp_ft(summary, task))
        if self.plan.get("wise_ft"):
            curves = wise_ft_curves(self.root / "final", [k for k in ("strategy",) if k in summary])
            for name in ("full", *self.plan.get("wise_ft_also", [])):
                if name in names:
                    found.append(findings.wise_ft(curves, summary, task, name))
        for name in self.soup_names():
            soup = json.loads((self.root / "tune" / name / "soup_greedy.json").read_text())
            found.append(findings.soups(soup, task, name))
        return found

    def plan_summary(self) -> pd.DataFrame:
        """test/acc mean and std per plan strategy (its final jobs, named <strategy>_<n>)."""
        jobs = load_sweep(self.root / "final")
        jobs = jobs[jobs["status"] == "completed"]
        rows = []
        for name in self.plan["strategies"]:
            mine = jobs[jobs["job"].str.rsplit("_", n=1).str[0] == name]["test/acc"]
            rows.append(
                {
                    "plan_strategy": name,
                    "jobs": len(mine),
                    "test/acc_mean": mine.mean(),
                    "test/acc_std": mine.std(),
                }
            )
        return pd.DataFrame(rows)

    def tuning_table(self) -> pd.DataFrame:
        rows = []
        for name, spec in self.plan["strategies"].items():
            grid = (spec or {}).get("grid") or {}
            tuned = load_sweep(self.root / "tune" / name)
            final = load_sweep(self.root / "final")
            final = final[final["job"].str.startswith(f"{name}_")]
            rows.append(
                {
                    "strategy": name,
                    "grid": " ".join(f"{k}∈{{{_grid_text(v)}}}" for k, v in grid.items()),
                    "chosen": " ".join(f"{k}={v}" for k, v in self.chosen[name].items()),
                    "tune_val_acc": round(self.tune_val[name], 4),
                    "tune_jobs": len(tuned),
                    "tune_cpu_h": round(tuned["wall_time_s"].sum() * THREADS / 3600, 3),
                    "final_jobs": len(final),
                    "final_cpu_h": round(final["wall_time_s"].sum() * THREADS / 3600, 3),
                }
            )
        return pd.DataFrame(rows)

    def tuning_markdown(self) -> str:
        table = self.tuning_table()
        seeds = ", ".join(map(str, self.plan["tune_seeds"]))
        finals = ", ".join(map(str, self.plan["final_seeds"]))
        lines = [
            "## Tuning: the grid, the choice and the search's cost",
            "",
            f"Each strategy's grid ran at seed {seeds}; the best mean val/acc was chosen and "
            f"rerun at the fresh seeds {finals} (the table above). CPU hours: the jobs' "
            f"wall time × {THREADS} thread.",
            "",
            "| strategy | grid | chosen | val/acc (tuning) | tuning jobs | tuning CPU h "
            "| final jobs | final CPU h |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in table.to_dict("records"):
            lines.append(
                f"| {row['strategy']} | {row['grid']} | {row['chosen'] or '—'} "
                f"| {row['tune_val_acc']:.4f} | {row['tune_jobs']} | {row['tune_cpu_h']:.3f} "
                f"| {row['final_jobs']} | {row['final_cpu_h']:.3f} |"
            )
        total = table[["tune_jobs", "tune_cpu_h", "final_jobs", "final_cpu_h"]].sum()
        lines.append(
            f"| **all** | | | | {int(total['tune_jobs'])} | {total['tune_cpu_h']:.3f} "
            f"| {int(total['final_jobs'])} | {total['final_cpu_h']:.3f} |"
        )
        return "\n".join(lines) + "\n"

    def plateau_markdown(self) -> str:
        name = self.plan["plateau"]
        epochs = int(self.plan["epochs"])
        longer = load_sweep(self.root / "plateau")
        tuned = load_sweep(self.root / "tune" / name)
        for key, value in self.chosen[name].items():
            tuned = tuned[tuned[key].astype(str) == str(value)]
        seed = str(self.plan["tune_seeds"][0])
        tuned = tuned[tuned["seed"].astype(str) == seed]
        at, at2 = float(tuned[METRIC].iloc[0]), float(longer[METRIC].iloc[0])
        verdict = "plateaued" if at2 - at < PLATEAU_GAIN else "had not plateaued"
        return "\n".join(
            [
                "## Budget check: does the chosen full fine-tuning plateau?",
                "",
                f"The chosen setting of `{name}` rerun at seed {seed} with twice the epochs "
                f"({2 * epochs} instead of {epochs}, the cosine schedule stretched with it): "
                f"val/acc {at:.4f} → {at2:.4f} ({100 * (at2 - at):+.2f} points). A gain under "
                f"{100 * PLATEAU_GAIN:g} points counts as a plateau: **{verdict}**.",
                "",
            ]
        )

    def soup_markdown(self, name: str) -> str:
        """The greedy soup beside the best single job of the same sweep (ftlab-soup's own
        scores of both, on the same splits and OOD sets)."""
        soup = json.loads((self.root / "tune" / name / "soup_greedy.json").read_text())
        best = soup["best_job"]
        sets = [k for k in soup["soup"] if k not in ("job", "val", "test")]
        header = ["model", "val/acc", "test/acc", *(f"ood/{s}/acc" for s in sets)]
        rows = []
        for label, scores in (
            (f"best single job ({best['job']})", best),
            ("greedy soup", soup["soup"]),
        ):
            rows.append([label, *(f"{scores[k]['acc']:.4f}" for k in ("val", "test", *sets))])
        lines = [
            f"## Greedy soup of the `{name}` tuning sweep",
            "",
            f"Kept {len(soup['ingredients'])} of {soup['jobs']} jobs: "
            f"{', '.join(soup['ingredients'])} (best val first; a job stays only if the soup's "
            "val accuracy does not drop).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        ]
        return "\n".join(lines)


def _grid_text(values: Any) -> str:
    values = values if isinstance(values, list) else [values]
    return ", ".join(_text(v) for v in values)


def run_two_stage(plan: dict[str, Any], root: Path, out: Path, jobs: int, command: str) -> None:
    """Stage one (``source``) once, then every target as its own tuned comparison, each
    starting from stage one's best checkpoint; one report per target and the finding."""
    multirun(plan["source"], root / "source")
    source = root / "source" / "0"
    ckpt = job_checkpoint(source)
    summaries, costs = {}, []
    for target, overrides in plan["targets"].items():
        driver = Driver(
            plan, root / target, out / target, jobs, [f"model.init_from={ckpt}", *overrides]
        )
        driver.run()
        driver.report(command)
        summaries[target] = driver.plan_summary()
        costs.append(driver.tuning_table().assign(target=target))
    finding = findings.surgical(summaries)
    table = pd.concat([s.assign(target=t) for t, s in summaries.items()], ignore_index=True)
    table.to_csv(out / "surgical.csv", index=False)  # the finding's table, as numbers
    stage_two = (
        f"experiment={plan['experiment']}"
        if plan.get("experiment")
        else " ".join(plan.get("overrides", []))
    )
    cost = pd.concat(costs, ignore_index=True)
    cost.to_csv(out / "tuning.csv", index=False)
    source_metrics = json.loads((source / "metrics.json").read_text())
    record = provenance(root, command)
    total = cost[["tune_jobs", "tune_cpu_h", "final_jobs", "final_cpu_h"]].sum()
    text = [
        f"# {finding.claim}",
        "",
        f"Stage one: `{' '.join(plan['source'])}`: MNIST test accuracy "
        f"{source_metrics['test']['acc']:.4f} ({source_metrics['wall_time_s']:.0f} s).",
        f"Stage two: `{stage_two}` from its checkpoint; per target and "
        f"strategy, the lr grid at seed {plan['tune_seeds'][0]}, the best by val at seeds "
        f"{', '.join(map(str, plan['final_seeds']))}. Each target's full report: "
        + ", ".join(f"[{t}]({t}/report.md)" for t in plan["targets"])
        + ".",
        "",
        finding.markdown(),
        f"Cost: {int(total['tune_jobs'])} tuning jobs ({total['tune_cpu_h']:.2f} CPU h), "
        f"{int(total['final_jobs'])} final jobs ({total['final_cpu_h']:.2f} CPU h); "
        "per target and strategy in tuning.csv.",
    ]
    (out / "report.md").write_text("\n".join(text) + "\n" + provenance_markdown(record))
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (out / "findings.json").write_text(json.dumps([finding.to_dict()], indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="a plan of benchmarks/plans: mnist, bbc, surgical, ...")
    parser.add_argument("--root", help="run folder (default: outputs/results/<plan>-<time>)")
    parser.add_argument("--out", help="report folder (default: benchmarks/results/<plan>)")
    parser.add_argument("--jobs", type=int, default=2, help="multiruns at a time (default 2)")
    args = parser.parse_args(argv)
    plan = read_plan(args.plan)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.root or ROOT / "outputs" / "results" / f"{plan['name']}-{stamp}").resolve()
    out = Path(args.out or RESULTS / plan["name"])
    command = shlex.join(["python", "benchmarks/results.py", *(argv or sys.argv[1:])])
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if "source" in plan:
        run_two_stage(plan, root, out, args.jobs, command)
    else:
        driver = Driver(plan, root, out, args.jobs)
        driver.run()
        driver.report(command)
    print(f"{args.plan}: {root} in {(time.time() - started) / 60:.1f} min; report in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
