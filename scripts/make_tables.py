#!/usr/bin/env python
"""Paper tables (Markdown + LaTeX booktabs) and plots (PNG) from run records; see ``tango/report/__init__.py`` for
the rules.

    python scripts/make_tables.py                                  # results/runs/*/record.json -> results/tables/
    python scripts/make_tables.py --results results/demo_cpu --out results/tables
    python scripts/make_tables.py --csv results/results.csv --models llava_ov --methods none tango --budgets 0.1 0.25
    python scripts/make_tables.py --compare results/tables/references/*.csv       # side by side with papers
    python scripts/make_tables.py --ci                                            # 95 % CIs in accuracy cells
    python scripts/make_tables.py --serving results/serving/*.csv     # + serving under load (bench_serving.py)
    python scripts/make_tables.py --wandb-run new                  # also log the tables to W&B ($WANDB_MODE)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango import report as T


def _list(values):
    """Accept both ``--methods a b`` and ``--methods a,b``."""
    if not values:
        return None
    return [v for x in values for v in str(x).split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", default=None,
                   help="results folder(s) holding runs/*/record.json (default: results/ unless --csv is given)")
    p.add_argument("--csv", nargs="+", default=[], help="merged results CSV(s) (results/results.csv format)")
    p.add_argument("--out", default="results/tables", help="output folder (default: results/tables)")
    p.add_argument("--models", nargs="+", help="model keys to keep (e.g. llava_ov tiny_llava_ov)")
    p.add_argument("--methods", nargs="+", help="method keys to keep (none is the reference; keep it for %% Full)")
    p.add_argument("--budgets", nargs="+", type=str, help="retention ratios to keep (full-token rows always kept)")
    p.add_argument("--tasks", nargs="+", help="task keys to keep (videomme mlvu longvideobench mvbench synthetic)")
    p.add_argument("--seeds", nargs="+", help="seeds to aggregate (default: all; mean ± std over them)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frame count for main/efficiency/synthetic tables (default: per model, the most common)")
    p.add_argument("--efficiency-task", default=None, help="task of the efficiency table and latency plots")
    p.add_argument("--ablation-by", default=None,
                   help="record column to ablate over (or hp/<name> for a method hyperparameter)")
    p.add_argument("--compare", nargs="+", default=None,
                   help="reference CSV(s) (paper numbers, e.g. results/tables/references/*.csv, or results CSVs)")
    p.add_argument("--serving", nargs="+", default=None,
                   help="scripts/bench_serving.py CSV(s): adds the serving table (serving.md / .tex)")
    p.add_argument("--ci", action="store_true",
                   help="show 95%% paired-bootstrap CIs (over questions) in the accuracy cells instead of ± std")
    p.add_argument("--no-significance", action="store_true", help="skip the paired significance table")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates (default: 10000)")
    p.add_argument("--include-limited", action="store_true", help="also use runs made with limit=<n> (smoke runs)")
    p.add_argument("--digits", type=int, default=1, help="decimals for accuracies and latencies")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--wandb-run", default=None, help="'new' or a W&B run path (entity/project/id) to log tables to")
    p.add_argument("--wandb-project", default="tango-harness", help="project of a new W&B run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    results = a.results if a.results is not None else ([] if a.csv else ["results"])
    runs = T.load_runs(results, a.csv)
    reference = T.read_references(a.compare) if a.compare else None
    tasks = _list(a.tasks)
    tables, plot_data = T.build_tables(
        runs, models=_list(a.models), methods=_list(a.methods), budgets=[float(b) for b in _list(a.budgets) or []],
        tasks=tasks, seeds=_list(a.seeds), num_frames=a.num_frames, efficiency_task=a.efficiency_task,
        ablation_by=a.ablation_by, reference=reference, include_limited=a.include_limited, digits=a.digits,
        ci=a.ci, significance=not a.no_significance, n_boot=a.n_boot)
    if a.serving:
        tables["serving"] = T.serving_table(a.serving, digits=a.digits)
    written = T.write_outputs(tables, plot_data, a.out, plots=not a.no_plots, efficiency_task=a.efficiency_task,
                              tasks=tasks)
    n_ok = int((runs["status"] == "ok").sum()) if len(runs) else 0
    print(f"[tables] {len(runs)} row(s) read before deduplication ({n_ok} ok, {len(runs) - n_ok} failed) from "
          f"{', '.join(map(str, [*results, *a.csv]))}")
    for p in written:
        print(f"[tables] wrote {p}")
    if a.wandb_run:
        where = T.log_wandb(tables, written, a.wandb_run, a.wandb_project)
        print(f"[tables] logged {len(tables)} table(s) to W&B: {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
