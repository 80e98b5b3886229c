"""The paper's tables and plots, built from run records (never from W&B, never by re-running anything).

Inputs
------
* ``<results>/runs/*/record.json`` (finished runs) and ``<results>/runs/*/failed.json`` (failed runs) under one or
  more results folders, and/or merged CSVs in the ``results/results.csv`` format (one flat record per row, a
  ``status`` column; ``failed`` rows count as failures).
* Every column is optional: a value a record lacks is shown as missing (``–`` in Markdown, ``--`` in LaTeX), never
  as zero.

Cleaning rules
--------------
* Identity of a run: (model, method, budget, task, seed, num_frames, variant); ``method=none`` always has budget 1.
  ``variant`` is whatever an experiment config appends to the standard run key
  (``<model>__<method>__b<budget>__<task>__s<seed>[__limit<n>]``), e.g. ``__alpha1.5`` or ``__f64``; standard runs
  have none. Main, efficiency, synthetic and compare tables use standard runs only, so an ablation run never
  replaces a Table 1 cell.
* Duplicates (a record folder and a CSV row of the same run, two CSV rows, two results folders) are collapsed
  deterministically: the row with the latest ``date`` wins (ties: the later input wins).
* Failed runs never contribute values. A cell whose runs all failed shows ``–†`` with a footnote naming the run
  and its error; the number of failed runs is reported under every table.
* Runs with ``limit`` set are partial smoke evaluations and are excluded unless ``include_limited=True``.
* Seeds are aggregated as mean ± std (sample std, shown only with ≥ 2 seeds).
* Main, efficiency and synthetic tables use, per model, one frame count: ``num_frames`` if given, else the frame
  count with the most runs (ties: the larger). The frame-scaling table uses all of them.

Tables (each written as ``<name>.md`` and ``<name>.tex``, booktabs)
------------------------------------------------------------------
* ``main``: rows = model › method × retention ratio (full-token row first, then retention ratios from high to low,
  the pruning methods in a fixed order inside each ratio); columns = VideoMME, MLVU, LongVideoBench, MVBench, Avg
  (mean of the four, only when all four exist) and "% Full" = Avg / Avg of the full-token model × 100. The best
  value of each column within one model and retention ratio is bold.
* ``synthetic``: the offline synthetic task: overall accuracy, one column per question type
  (``accuracy/<type>``), % Full, realized retention; bold as in ``main``.
* ``efficiency``: on one task (``efficiency_task``; default the first of VideoMME, MLVU, LongVideoBench, MVBench,
  synthetic that has runs): visual tokens kept, TTFT median and its split (vision / pruning / LLM prefill),
  speedup = TTFT(full tokens) / TTFT, prefill TFLOPs (column ``prefill_tflops``, or ``prefill_flops`` / 1e12, or
  ``prefill_gflops`` / 1e3, when records have them), peak GPU memory, peak host RSS, decode tok/s, device.
* ``frames``: TTFT (ms) and accuracy per number of frames (written when runs exist at ≥ 2 frame counts).
* ``frames`` also uses the runs of an experiment config whose run-key suffix is only ``${model.num_frames}``
  (``configs/experiment/frames.yaml``); a standard run and its ``__f<n>`` twin are one cell (latest wins).
* ``<experiment>`` (e.g. ``ablation_alpha``): for every experiment config in ``configs/experiment/`` that declares
  ``run_key: ${run_key:}<suffix with ${fields}>`` and has runs: one row per swept value combination (parsed back
  from the run key), one accuracy column per task, TTFT; title = the config's first comment line.
* ``ablation``: with ``ablation_by=<column>`` (any record column, or ``hp/<name>`` for a field of the
  ``method_hparams`` string): one row per value, one column per task (written only when asked).
* ``compare``: side by side with a reference set (see below), with the difference (this harness − reference).

Reference / paper-number CSV (``--compare``)
--------------------------------------------
A long CSV, one number per row; lines starting with ``#`` are comments; ``# source: <text>`` sets the default
source::

    # source: Tango, arXiv 2604.09547, abstract
    model,method,budget,task,metric,value,source,note
    llava_ov,tango,0.1,avg,pct_full,98.9,"arXiv 2604.09547 abstract",
    llava_ov,tango,0.1,avg,speedup,1.88,"arXiv 2604.09547 abstract","quantity not stated (TTFT?)"

* model / method / task: the harness keys (``llava_ov``, ``tango``, ``videomme``…); task ``avg`` for the
  four-benchmark average.
* budget: retention ratio in (0, 1]; 1 for ``none``.
* metric: ``accuracy`` (0-100), ``pct_full`` (% of the full-token model), ``speedup`` (TTFT ratio vs. full), or
  any record column (``ttft_ms``, ``vision_ms``, ``pruning_ms``, ``llm_prefill_ms``, ``decode_tok_s``,
  ``peak_mem_mb``, ``prefill_tflops``, ``visual_tokens_out``…) in the record's unit.
* A CSV without ``metric``/``value`` columns is read as another harness results CSV (record rows) and compared
  metric by metric.
See ``results/tables/paper_reference_example.csv``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tango.methods import METHODS

# ---------------------------------------------------------------------------------------------------- vocabulary
BENCHMARKS = ["videomme", "mlvu", "longvideobench", "mvbench"]
TASK_NAMES = {"videomme": "VideoMME", "mlvu": "MLVU", "longvideobench": "LongVideoBench", "mvbench": "MVBench",
              "synthetic": "Synthetic", "synthetic_pruning": "Synthetic (pruning types)", "avg": "Avg"}
SYNTHETIC = ["synthetic", "synthetic_pruning"]  # offline tasks: one table (+ per-type plot) each
# Methods: order, names and colours come from the registry (each method's display_name / color).
METHOD_ORDER = list(METHODS)
METHOD_NAMES = {name: cls.display_name or name for name, cls in METHODS.items()}


def _model_vocabulary() -> tuple[list[str], dict[str, str]]:
    """Model order and names from the adapters' specs: each family's full-size model, the trained tiny checkpoint
    (shipped), then each family's tiny random one."""
    from tango.models.base import ADAPTERS, family_spec

    full = {f: family_spec(f).display_name for f in ADAPTERS}
    tiny = {f"tiny_{f}": f"tiny {name.removesuffix('-7B')} (random weights)" for f, name in full.items()}
    names = {**full, "tiny_llava_ov_trained": "tiny LLaVA-OV (trained on the synthetic task)", **tiny}
    return list(names), names


MODEL_ORDER, MODEL_NAMES = _model_vocabulary()
# One colour per method, the same in every plot (Okabe-Ito, colour-blind safe); methods without one get grey shades.
METHOD_COLORS = {name: cls.color for name, cls in METHODS.items() if cls.color}
KEY = ["model", "method", "budget", "task", "seed", "num_frames", "variant"]
MISSING_MD, MISSING_TEX, FAILED_MARK = "–", "--", "†"
FLOPS_COLUMNS = [("tflops_prefill", 1.0), ("prefill_tflops", 1.0), ("prefill_flops", 1e-12), ("prefill_gflops", 1e-3)]


def method_name(m: str) -> str:
    cls = METHODS.get(m)  # the live registry: methods registered after import (register_method) included
    return (cls.display_name if cls is not None and cls.display_name else None) or METHOD_NAMES.get(m, str(m))


def model_name(m: str) -> str:
    return MODEL_NAMES.get(m, str(m))


def task_name(t: str) -> str:
    return TASK_NAMES.get(t, str(t))


def method_color(m: str) -> str:
    if m in METHODS and METHODS[m].color:
        return METHODS[m].color
    greys = ["#666666", "#999999", "#CC79A7", "#0072B2", "#F0E442"]
    return greys[sum(map(ord, str(m))) % len(greys)]


def method_marker(m: str) -> str:
    """A marker per method (with the colour, so overlapping curves stay distinguishable)."""
    return {"none": "o", "fastv": "v", "visionzip": "s", "dycoke": "^", "tango": "D"}.get(m, "P")


def _order(values: Iterable, order: Sequence) -> list:
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), str(v)))


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


# -------------------------------------------------------------------------------------------------------- loading
def load_runs(results_dirs: Sequence[str | Path] = (), csvs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """All rows (ok and failed) from run folders and CSVs, with ``_source`` and ``_order`` columns; not deduplicated."""
    rows: list[dict] = []
    for d in results_dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"results folder {d} does not exist")
        pattern = "runs/*" if (d / "runs").is_dir() else "*"  # a results folder, or a runs/ folder itself
        for run_dir in sorted(p for p in d.glob(pattern) if p.is_dir()):
            for fname, status in (("record.json", None), ("failed.json", "failed")):
                p = run_dir / fname
                if p.exists():
                    try:
                        r = json.loads(p.read_text())
                    except json.JSONDecodeError as e:
                        r = {"run_key": run_dir.name, "status": "failed", "error": f"unreadable {fname}: {e}"}
                    if status:
                        r["status"] = status
                    r.setdefault("status", "ok")
                    r["_source"] = str(p)
                    rows.append(r)
    for c in csvs:
        df = pd.read_csv(c, comment=None)
        for r in df.to_dict("records"):
            r = {k: v for k, v in r.items() if not _is_missing(v)}
            r.setdefault("status", "ok")
            r["_source"] = str(c)
            rows.append(r)
    if not rows:
        return pd.DataFrame(columns=[*KEY, "status", "date", "_source", "_order"])
    df = pd.DataFrame(rows)
    df["_order"] = np.arange(len(df))
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Typed identity columns: budget 1 for ``none``, budgets rounded, numeric metrics, missing identity filled."""
    df = df.copy()
    for c in KEY + ["status", "date"]:
        if c not in df.columns:
            df[c] = np.nan
    if "run_key" in df.columns:  # identity from the run key where a (failed) row lacks it
        parts = df["run_key"].astype("string").str.split("__")
        for i, c in enumerate(["model", "method", "budget", "task", "seed"]):
            guess = parts.str[i]
            if c == "budget":
                guess = guess.str.removeprefix("b")
            if c == "seed":
                guess = guess.str.removeprefix("s")
            df[c] = df[c].where(df[c].notna(), guess)
    df["budget"] = pd.to_numeric(df["budget"], errors="coerce")
    df.loc[df["method"] == "none", "budget"] = 1.0
    df["budget"] = df["budget"].round(6)
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    df["num_frames"] = pd.to_numeric(df["num_frames"], errors="coerce").fillna(-1).astype(int)
    df["status"] = df["status"].fillna("ok").astype(str)
    for c in ("model", "method", "task"):
        df[c] = df[c].astype(object).where(df[c].notna(), "?").astype(str)
    df["variant"] = [_variant(r) for r in df[["run_key", "model", "method", "budget", "task", "seed"] +
                                             (["limit"] if "limit" in df.columns else [])].to_dict("records")] \
        if "run_key" in df.columns else ""
    df["_date"] = pd.to_datetime(df["date"], errors="coerce", utc=True)
    if "limit" in df.columns:
        df["limit"] = pd.to_numeric(df["limit"], errors="coerce")
    for c in df.columns:
        if c.startswith("accuracy") or c.endswith(("_ms", "_p90", "_mb", "_tok_s", "flops")) or c in (
                "retention", "visual_tokens_in", "visual_tokens_out", "visual_tokens_layer_avg"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if "visual_tokens_out" in df.columns:  # what the LLM sees: layer-averaged where the record has it (in-LLM methods)
        avg = df["visual_tokens_layer_avg"] if "visual_tokens_layer_avg" in df.columns else df["visual_tokens_out"]
        df["_visual_tokens"] = avg.fillna(df["visual_tokens_out"])
    if "method_hparams" in df.columns:  # "name: tango; alpha: 0.5" -> hp/name, hp/alpha
        hp = df["method_hparams"].apply(_parse_hparams)
        for k in sorted({k for d in hp for k in d}):
            df[f"hp/{k}"] = hp.apply(lambda d, k=k: d.get(k))
    return df


def _variant(r: dict) -> str:
    """The part of the run key after the standard ``<model>__<method>__b<budget>__<task>__s<seed>[__limit<n>]``:
    '' for a standard run, e.g. ``__alpha1.5`` for a run of an experiment config that appends its swept values."""
    key = r.get("run_key")
    if not isinstance(key, str):
        return ""
    try:
        base = f"{r['model']}__{r['method']}__b{float(r['budget']):g}__{r['task']}__s{int(r['seed'])}"
    except (TypeError, ValueError):
        return ""
    if not _is_missing(r.get("limit")):
        base += f"__limit{int(r['limit'])}"
    return key[len(base):] if key.startswith(base) else ""


def _parse_hparams(s) -> dict:
    if not isinstance(s, str):
        return {}
    try:  # records store the hyperparameters as one JSON object
        parsed = json.loads(s)
        if isinstance(parsed, dict):
            return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in parsed.items()}
    except ValueError:
        pass
    out = {}
    for part in s.split(";"):
        if ":" in part:
            k, v = part.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def select(df: pd.DataFrame, *, models=None, methods=None, budgets=None, tasks=None, seeds=None,
           include_limited: bool = False) -> pd.DataFrame:
    """Filter rows; ``budgets`` never removes the full-token rows (they are the reference)."""
    m = pd.Series(True, index=df.index)
    if models:
        m &= df["model"].isin(models)
    if methods:
        m &= df["method"].isin(methods)
    if budgets:
        m &= df["budget"].round(6).isin([round(float(b), 6) for b in budgets]) | (df["method"] == "none")
    if tasks:
        m &= df["task"].isin(tasks)
    if seeds:
        m &= df["seed"].isin([int(s) for s in seeds])
    if not include_limited and "limit" in df.columns:
        m &= df["limit"].isna()
    return df[m]


def split_ok_failed(df: pd.DataFrame, key: Sequence[str] = KEY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ok rows deduplicated on ``key``: latest date wins; failed rows of keys without any ok row, deduplicated)."""
    key = list(key)
    ok = df[df["status"] == "ok"]
    failed = df[df["status"] != "ok"]
    ok = _latest(ok, key)
    if len(failed):
        done = set(map(tuple, ok[key].itertuples(index=False, name=None)))
        failed = failed[[tuple(r) not in done for r in failed[key].itertuples(index=False, name=None)]]
        failed = _latest(failed, key)
    return ok.reset_index(drop=True), failed.reset_index(drop=True)


def _latest(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    if df.empty:
        return df
    df = df.assign(_d=df["_date"].fillna(pd.Timestamp.min.tz_localize("UTC")))
    df = df.sort_values(["_d", "_order"], kind="stable")
    return df.drop_duplicates(key, keep="last").drop(columns="_d").sort_values("_order", kind="stable")


def pick_frames(df: pd.DataFrame, num_frames: int | None = None) -> pd.DataFrame:
    """One frame count per model: ``num_frames`` if given, else the count with the most runs (ties: the larger)."""
    if df.empty:
        return df
    if num_frames is not None:
        return df[df["num_frames"] == int(num_frames)]
    keep = []
    for model, g in df.groupby("model", sort=False):
        counts = g["num_frames"].value_counts()
        best = max(counts.index, key=lambda f: (counts[f], f))
        keep.append(g[g["num_frames"] == best])
    return pd.concat(keep) if keep else df.iloc[:0]


# ----------------------------------------------------------------------------------------------------- aggregates
@dataclass
class Stat:
    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0
    failed: list[str] = field(default_factory=list)  # run keys + errors when no value exists because runs failed

    @property
    def missing(self) -> bool:
        return self.n == 0 or math.isnan(self.mean)


def stat(values) -> Stat:
    v = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").dropna().astype(float)
    if v.empty:
        return Stat()
    return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v))


def cell_stat(ok: pd.DataFrame, failed: pd.DataFrame, col: str, **where) -> Stat:
    sel = ok
    for k, v in where.items():
        sel = sel[sel[k] == v] if k in sel.columns else sel.iloc[:0]
    s = stat(sel[col]) if col in sel.columns else Stat()
    if s.missing and len(failed):
        fsel = failed
        for k, v in where.items():
            fsel = fsel[fsel[k] == v] if k in fsel.columns else fsel.iloc[:0]
        s.failed = [f"{r.get('run_key', '?')}: {r.get('error', 'failed')}" for r in fsel.to_dict("records")]
    return s


# ---------------------------------------------------------------------------------------------------- table model
@dataclass
class Cell:
    md: str
    tex: str
    bold: bool = False
    align: str = "r"


def text_cell(s, align: str = "l") -> Cell:
    s = "" if _is_missing(s) else str(s)
    return Cell(s.replace("|", "\\|"), latex_escape(s), align=align)


def num_cell(s: Stat, digits: int = 1, suffix: str = "") -> Cell:
    if s.missing:
        mark = FAILED_MARK if s.failed else ""
        return Cell(MISSING_MD + mark, MISSING_TEX + (r"\textsuperscript{\dag}" if s.failed else ""))
    m = f"{s.mean:.{digits}f}"
    if s.n > 1 and not math.isnan(s.std):
        sd = f"{s.std:.{digits}f}"
        return Cell(f"{m} ± {sd}{suffix}", f"{m} $\\pm$ {sd}{latex_escape(suffix)}")
    return Cell(m + suffix, latex_escape(m + suffix))


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters in a text cell (``\\ & % $ # _ { } ~ ^``); the few non-ASCII symbols the
    tables use become LaTeX commands and any other non-ASCII character becomes '?', so the output is pure ASCII."""
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "—": "---",
           "−": "$-$", "×": r"$\times$", "†": r"\textsuperscript{\dag}", "›": ">", "Δ": r"$\Delta$",
           "≥": r"$\geq$", "≤": r"$\leq$", "→": r"$\rightarrow$", "µ": r"$\mu$", "§": r"\S{}"}
    # anything else outside ASCII becomes '?', so the output compiles with plain pdflatex
    return "".join(rep.get(ch, ch if ord(ch) < 128 else "?") for ch in str(s))


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    breaks: set[int] = field(default_factory=set)  # row indices before which a \midrule goes (model groups)
    spaces: set[int] = field(default_factory=set)  # row indices before which an \addlinespace goes (budget blocks)
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # numeric version (for W&B and tests)

    def to_frame(self) -> pd.DataFrame:
        """The displayed table as strings (Markdown text of each cell, bold marked with ``**``)."""
        return pd.DataFrame([[f"**{c.md}**" if c.bold else c.md for c in r] for r in self.rows], columns=self.columns)

    def to_markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join(":---" if (self.rows and r.align == "l") else "---:" for r in
                              (self.rows[0] if self.rows else [Cell("", "")] * len(self.columns))) + "|"]
        for r in self.rows:
            out.append("| " + " | ".join(f"**{c.md}**" if c.bold and c.md else c.md for c in r) + " |")
        if not self.rows:
            out.append("| " + " | ".join(["(no runs)"] + [""] * (len(self.columns) - 1)) + " |")
        if self.notes:
            out += [""] + [f"{n}  " for n in self.notes]
        return "\n".join(out) + "\n"

    def to_latex(self) -> str:
        align = "".join(c.align for c in self.rows[0]) if self.rows else "l" * len(self.columns)
        out = [f"% {latex_escape(self.title)}",
               "% generated by scripts/make_tables.py from run records; needs \\usepackage{booktabs}",
               f"\\begin{{tabular}}{{{align}}}", r"\toprule",
               " & ".join(latex_escape(c) for c in self.columns) + r" \\", r"\midrule"]
        for i, r in enumerate(self.rows):
            if i in self.breaks and i > 0:
                out.append(r"\midrule")
            elif i in self.spaces and i > 0:
                out.append(r"\addlinespace")
            out.append(" & ".join(f"\\textbf{{{c.tex}}}" if c.bold and c.tex else c.tex for c in r) + r" \\")
        if not self.rows:
            out.append(f"\\multicolumn{{{len(self.columns)}}}{{l}}{{(no runs)}} \\\\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out += [f"% {latex_escape(n)}" for n in self.notes]
        return "\n".join(out) + "\n"


def _bold_best(table: Table, block_rows: list[int], cols: list[int], stats: dict[tuple[int, int], Stat]) -> None:
    """Bold the highest mean per column among ``block_rows``; ties all bold; no bold when fewer than 2 rows have a
    value or all values are equal."""
    for c in cols:
        vals = {r: stats[(r, c)].mean for r in block_rows if (r, c) in stats and not stats[(r, c)].missing}
        if len(vals) < 2 or max(vals.values()) - min(vals.values()) < 1e-9:  # nothing to single out
            continue
        best = max(vals.values())
        for r, v in vals.items():
            if abs(v - best) < 1e-9:
                table.rows[r][c].bold = True


def _footnotes(failed_cells: list[str], n_failed: int, n_ok: int, n_seeds_max: int) -> list[str]:
    notes = []
    if n_seeds_max > 1:
        notes.append("Values are mean ± std over seeds.")
    notes.append(f"{n_ok} run(s) used; {n_failed} failed run(s) excluded; – = no run.")
    for f in dict.fromkeys(failed_cells):
        notes.append(f"{FAILED_MARK} failed: {f}")
    return notes


def _row_blocks(ok: pd.DataFrame, failed: pd.DataFrame) -> list[tuple[str, list[tuple[str, float]]]]:
    """[(model, [(method, budget), …]), …] in paper order: full tokens, then budgets high → low, methods fixed."""
    both = pd.concat([ok[["model", "method", "budget"]], failed[["model", "method", "budget"]]])
    out = []
    for model in _order(both["model"], MODEL_ORDER):
        g = both[both["model"] == model]
        pairs = list(dict.fromkeys(zip(g["method"], g["budget"])))
        pairs.sort(key=lambda p: (p[0] != "none", -(p[1] if not _is_missing(p[1]) else -1),
                                  METHOD_ORDER.index(p[0]) if p[0] in METHOD_ORDER else 99, p[0]))
        out.append((model, pairs))
    return out


def _pct(b) -> str:
    return MISSING_MD if _is_missing(b) else f"{100 * b:g}%"


def accuracy_table(ok: pd.DataFrame, failed: pd.DataFrame, *, name: str, title: str,
                   columns: list[tuple[str, str, str]],
                   avg_over: list[str] | None, digits: int = 1, extra_retention: bool = False) -> Table:
    """Generic method × budget accuracy table.

    ``columns``: (header, task, record column). ``avg_over``: headers averaged into "Avg" (only when all exist) and
    turned into "% Full"; None = no Avg, "% Full" of the first column.
    """
    headers = ["Model", "Method", "Retention"] + [c[0] for c in columns]
    if avg_over is not None:
        headers += ["Avg"]
    headers += ["% Full"]
    if extra_retention:
        headers += ["Kept (realized)"]
    t = Table(name, title, headers)
    stats: dict[tuple[int, int], Stat] = {}
    failed_cells: list[str] = []
    numeric = []
    n_seeds_max = 1
    for model, pairs in _row_blocks(ok, failed):
        t.breaks.add(len(t.rows))
        per_budget: dict[float, list[int]] = {}
        full_avg = None
        prev_budget = None
        for method, budget in pairs:
            r = len(t.rows)
            if prev_budget is not None and budget != prev_budget:
                t.spaces.add(r)
            prev_budget = budget
            row = [text_cell(model_name(model) if r in t.breaks else ""), text_cell(method_name(method)),
                   text_cell(_pct(budget), "r")]
            vals = {}
            for header, task, col in columns:
                s = cell_stat(ok, failed, col, model=model, method=method, budget=budget, task=task)
                n_seeds_max = max(n_seeds_max, s.n)
                failed_cells += s.failed
                stats[(r, len(row))] = s
                vals[header] = s
                row.append(num_cell(s, digits))
            if avg_over is not None:
                parts = [vals[h] for h in avg_over if h in vals]
                avg = Stat(float(np.mean([p.mean for p in parts])), float("nan"), 1) if parts and all(
                    not p.missing for p in parts) else Stat()
                stats[(r, len(row))] = avg
                row.append(num_cell(avg, digits))
            else:
                avg = vals[columns[0][0]] if columns else Stat()
            if method == "none":
                full_avg = avg
            pct = Stat(100 * avg.mean / full_avg.mean, float("nan"), 1) if (
                full_avg is not None and not avg.missing and not full_avg.missing and full_avg.mean != 0) else Stat()
            stats[(r, len(row))] = pct
            row.append(num_cell(pct, 1))
            if extra_retention:
                ret = cell_stat(ok, failed, "retention", model=model, method=method, budget=budget,
                                task=columns[0][1] if columns else None)
                row.append(num_cell(Stat(100 * ret.mean, 100 * ret.std, ret.n) if not ret.missing else Stat(), 1,
                                    "%"))
            t.rows.append(row)
            if method != "none":
                per_budget.setdefault(budget, []).append(r)
            numeric.append({"model": model, "method": method, "budget": budget,
                            **{h: s.mean for h, s in vals.items()},
                            **({"Avg": avg.mean} if avg_over is not None else {}), "% Full": pct.mean})
        num_cols = list(range(3, 3 + len(columns) + (1 if avg_over is not None else 0) + 1))
        for rows in per_budget.values():
            _bold_best(t, rows, num_cols, stats)
    t.notes = ["Bold: best per model and retention ratio. % Full = " + (
        "Avg" if avg_over is not None else headers[3]) + " / full-token value × 100."] + _footnotes(
        failed_cells, len(failed), len(ok), n_seeds_max)
    t.data = pd.DataFrame(numeric)
    return t


def main_table(ok: pd.DataFrame, failed: pd.DataFrame, tasks: Sequence[str] = BENCHMARKS, digits: int = 1) -> Table:
    ok_b = ok[ok["task"].isin(tasks)]
    failed_b = failed[failed["task"].isin(tasks)] if len(failed) else failed
    cols = [(task_name(tk), tk, "accuracy") for tk in tasks]
    return accuracy_table(ok_b, failed_b, name="main",
                          title="Accuracy (%) by method and retention ratio",
                          columns=cols, avg_over=[c[0] for c in cols], digits=digits)


def question_types(ok: pd.DataFrame) -> list[str]:
    """The ``accuracy/<type>`` columns with values, sorted."""
    return sorted(c for c in ok.columns if c.startswith("accuracy/") and ok[c].notna().any())


def synthetic_table(ok: pd.DataFrame, failed: pd.DataFrame, digits: int = 1, task: str = "synthetic") -> Table:
    ok_s = ok[ok["task"] == task]
    failed_s = failed[failed["task"] == task] if len(failed) else failed
    cols = [("Accuracy", task, "accuracy")] + [(c.split("/", 1)[1], task, c) for c in question_types(ok_s)]
    return accuracy_table(ok_s, failed_s, name=task,
                          title=f"{task_name(task)} task: accuracy (%) overall and per question type",
                          columns=cols, avg_over=None, digits=digits, extra_retention=True)


def default_efficiency_task(ok: pd.DataFrame) -> str | None:
    for t in BENCHMARKS + SYNTHETIC:
        if (ok["task"] == t).any():
            return t
    return ok["task"].iloc[0] if len(ok) else None


def _flops(ok: pd.DataFrame) -> pd.Series:
    for col, scale in FLOPS_COLUMNS:
        if col in ok.columns and ok[col].notna().any():
            return pd.to_numeric(ok[col], errors="coerce") * scale
    return pd.Series(np.nan, index=ok.index)


def efficiency_table(ok: pd.DataFrame, failed: pd.DataFrame, task: str | None = None, digits: int = 1) -> Table:
    task = task or default_efficiency_task(ok)
    ok = ok[ok["task"] == task].copy() if task else ok.iloc[:0].copy()
    failed = failed[failed["task"] == task] if (task and len(failed)) else failed.iloc[:0]
    ok["_tflops"] = _flops(ok)
    for src, dst in (("peak_mem_mb", "_mem_gb"), ("peak_rss_mb", "_rss_gb")):
        ok[dst] = pd.to_numeric(ok[src], errors="coerce") / 1024 if src in ok.columns else np.nan
    headers = ["Model", "Method", "Retention", "Visual tokens", "TTFT (ms)", "Vision (ms)", "Pruning (ms)",
               "LLM prefill (ms)", "Speedup", "Prefill TFLOPs", "Peak GPU mem (GiB)", "Peak RSS (GiB)",
               "Decode (tok/s)", "Device"]
    t = Table("efficiency", f"Efficiency on {task_name(task) if task else '(no task)'}: medians per request "
                            "(first request excluded as warm-up)", headers)
    failed_cells, numeric, n_seeds_max = [], [], 1
    for model, pairs in _row_blocks(ok, failed):
        t.breaks.add(len(t.rows))
        full = cell_stat(ok, failed, "ttft_ms", model=model, method="none", budget=1.0)
        prev = None
        for method, budget in pairs:
            r = len(t.rows)
            if prev is not None and budget != prev:
                t.spaces.add(r)
            prev = budget
            w = {"model": model, "method": method, "budget": budget}
            st = {c: cell_stat(ok, failed, c, **w) for c in
                  ("_visual_tokens", "ttft_ms", "vision_ms", "pruning_ms", "llm_prefill_ms", "_tflops", "_mem_gb",
                   "_rss_gb", "decode_tok_s")}
            n_seeds_max = max(n_seeds_max, st["ttft_ms"].n)
            failed_cells += st["ttft_ms"].failed
            tt = st["ttft_ms"]
            speed = Stat(full.mean / tt.mean, float("nan"), 1) if not (full.missing or tt.missing or tt.mean == 0) \
                else Stat()
            tin = cell_stat(ok, failed, "visual_tokens_in", **w)
            kept = num_cell(Stat(st["_visual_tokens"].mean, float("nan"), min(st["_visual_tokens"].n, 1),
                                 st["_visual_tokens"].failed), 0)  # token counts: mean only
            if not tin.missing and not st["_visual_tokens"].missing:
                kept = Cell(f"{kept.md} / {tin.mean:.0f}", f"{kept.tex} / {tin.mean:.0f}")
            sel = ok[(ok["model"] == model) & (ok["method"] == method) & (ok["budget"] == budget)]
            dev = ", ".join(sorted(set(sel["device_name"].dropna().astype(str)))) if "device_name" in sel else ""
            t.rows.append([text_cell(model_name(model) if r in t.breaks else ""), text_cell(method_name(method)),
                           text_cell(_pct(budget), "r"), kept, num_cell(st["ttft_ms"], digits),
                           num_cell(st["vision_ms"], digits), num_cell(st["pruning_ms"], 2),
                           num_cell(st["llm_prefill_ms"], digits), num_cell(speed, 2, "×"),
                           num_cell(st["_tflops"], 2), num_cell(st["_mem_gb"], 2), num_cell(st["_rss_gb"], 2),
                           num_cell(st["decode_tok_s"], 0), text_cell(dev or MISSING_MD)])
            numeric.append({"model": model, "method": method, "budget": budget, "speedup": speed.mean,
                            **{k.lstrip("_"): v.mean for k, v in st.items()}})
    t.notes = [("Speedup = TTFT of the full-token model / TTFT (same model, task and frame count). "
               "TTFT = vision + pruning + LLM prefill (+ projector and overhead).")] + _footnotes(
        failed_cells, len(failed), len(ok), n_seeds_max)
    t.data = pd.DataFrame(numeric)
    return t


def frames_task(ok: pd.DataFrame, task: str | None = None) -> str | None:
    """``task`` if given, else the first task (benchmarks first) with runs at ≥ 2 frame counts."""
    if task:
        return task
    ok = ok[ok["num_frames"] >= 0]
    for t in _order(ok["task"], BENCHMARKS + SYNTHETIC):
        if ok.loc[ok["task"] == t, "num_frames"].nunique() >= 2:
            return t
    return None


def frames_table(ok: pd.DataFrame, failed: pd.DataFrame, task: str | None = None, digits: int = 1) -> Table | None:
    task = frames_task(ok, task)
    ok = ok[(ok["task"] == task) & (ok["num_frames"] >= 0)]
    frames = sorted(ok["num_frames"].unique())
    if len(frames) < 2:
        return None
    headers = ["Model", "Method", "Retention"] + [f"TTFT @{f} fr (ms)" for f in frames] + [
        f"Acc @{f} fr" for f in frames]
    t = Table("frames", f"Frame scaling on {task_name(task)}: TTFT median (ms) and accuracy (%) per number of frames",
              headers)
    numeric, n_seeds_max = [], 1
    for model, pairs in _row_blocks(ok, ok.iloc[:0]):
        t.breaks.add(len(t.rows))
        for method, budget in pairs:
            w = {"model": model, "method": method, "budget": budget}
            sub = ok[(ok["model"] == model) & (ok["method"] == method) & (ok["budget"] == budget)]
            if sub["num_frames"].nunique() < 2:  # only rows that actually scale the frame count
                continue
            r = len(t.rows)
            row = [text_cell(model_name(model) if r in t.breaks else ""), text_cell(method_name(method)),
                   text_cell(_pct(budget), "r")]
            for col, d in (("ttft_ms", digits), ("accuracy", digits)):
                for f in frames:
                    s = cell_stat(ok, ok.iloc[:0], col, num_frames=f, **w)
                    n_seeds_max = max(n_seeds_max, s.n)
                    row.append(num_cell(s, d))
                    numeric.append({**w, "num_frames": f, "metric": col, "value": s.mean})
            t.rows.append(row)
    t.notes = _footnotes([], len(failed[failed["task"] == task]) if len(failed) else 0, len(ok), n_seeds_max)
    t.data = pd.DataFrame(numeric)
    return t


def ablation_table(ok: pd.DataFrame, failed: pd.DataFrame, by: str | Sequence[str], tasks: Sequence[str] | None = None,
                   digits: int = 1, name: str = "ablation", title: str | None = None) -> Table:
    """One row per (model, method, budget, values of ``by``); one accuracy column per task, plus TTFT.

    Rows follow the value order (numbers numerically); the best accuracy per model, method and retention ratio is
    bold; a failed cell shows –† with a footnote.
    """
    by = [by] if isinstance(by, str) else list(by)
    for b in by:
        if b not in ok.columns:
            raise ValueError(f"ablation column {b!r} not in the records; available: "
                             f"{sorted(c for c in ok.columns if not c.startswith('_'))}")
    tasks = list(tasks or _order(ok["task"], BENCHMARKS + SYNTHETIC))
    tasks = [tk for tk in tasks if (ok["task"] == tk).any() or (len(failed) and (failed["task"] == tk).any())]
    headers = ["Model", "Method", "Retention"] + [b.split(".")[-1].split("/")[-1] for b in by] + [
        task_name(tk) for tk in tasks] + ["TTFT (ms)"]
    t = Table(name, title or f"Ablation over {', '.join(by)}", headers)
    stats, blocks, numeric, failed_cells, n_seeds_max = {}, {}, [], [], 1
    both = pd.concat([ok, failed]) if len(failed) else ok
    for model, pairs in _row_blocks(ok, failed):
        t.breaks.add(len(t.rows))
        for method, budget in pairs:
            sub = both[(both["model"] == model) & (both["method"] == method) & (both["budget"] == budget)]
            sub = sub.dropna(subset=by)  # runs that do not set the ablated field are not part of the ablation
            combos = list(dict.fromkeys(tuple(_is_missing(x) and "" or x for x in r)
                                        for r in sub[by].itertuples(index=False, name=None)))
            combos.sort(key=lambda c: tuple((0, float(x)) if _num(x) else (1, str(x)) for x in c))
            for combo in combos:
                r = len(t.rows)
                where = dict(zip(by, combo))
                row = [text_cell(model_name(model) if r in t.breaks else ""), text_cell(method_name(method)),
                       text_cell(_pct(budget), "r")] + [text_cell(v, "r") for v in combo]
                for tk in tasks:
                    s = cell_stat(ok, failed, "accuracy", model=model, method=method, budget=budget, task=tk, **where)
                    n_seeds_max = max(n_seeds_max, s.n)
                    failed_cells += s.failed
                    stats[(r, len(row))] = s
                    row.append(num_cell(s, digits))
                    numeric.append({"model": model, "method": method, "budget": budget, **where, "task": tk,
                                    "accuracy": s.mean})
                row.append(num_cell(cell_stat(ok, ok.iloc[:0], "ttft_ms", model=model, method=method, budget=budget,
                                              **where), digits))
                t.rows.append(row)
                blocks.setdefault((model, method, budget), []).append(r)
    first = 3 + len(by)
    for rows in blocks.values():
        _bold_best(t, rows, list(range(first, first + len(tasks))), stats)
    t.notes = ["Bold: best accuracy per model, method and retention ratio."] + _footnotes(
        failed_cells, len(failed), len(ok), n_seeds_max)
    t.data = pd.DataFrame(numeric)
    return t


def _num(x) -> bool:
    try:
        float(x)
        return not isinstance(x, bool)
    except (TypeError, ValueError):
        return False


@dataclass
class ExperimentSpec:
    """An experiment config that appends its swept values to the run key (``run_key: ${run_key:}__alpha${…}``)."""
    name: str
    title: str
    regex: re.Pattern
    fields: list[str]

    @property
    def is_frames(self) -> bool:
        return self.fields == ["model.num_frames"]


def experiment_specs(config_dir: str | Path) -> list[ExperimentSpec]:
    """Experiment configs under ``config_dir`` whose ``run_key`` adds a suffix (first comment line = title)."""
    specs = []
    for p in sorted(Path(config_dir).glob("*.yaml")) if Path(config_dir).is_dir() else []:
        text = p.read_text()
        m = re.search(r"^run_key:\s*['\"]?\$\{run_key:\}(\S+?)['\"]?\s*$", text, re.MULTILINE)
        if not m:
            continue
        parts = re.split(r"\$\{([^}]+)\}", m.group(1))
        fields = parts[1::2]
        regex = "".join(re.escape(x) if i % 2 == 0 else f"(?P<f{i // 2}>.+?)" for i, x in enumerate(parts))
        comment = next((ln.lstrip("# ").strip() for ln in text.splitlines()
                        if ln.startswith("#") and "@package" not in ln), p.stem)
        specs.append(ExperimentSpec(p.stem, comment, re.compile(regex + "$"), fields))
    return specs


def match_experiment(ok: pd.DataFrame, spec: ExperimentSpec) -> pd.DataFrame:
    """Rows of ``ok`` whose run-key suffix (``variant``) matches ``spec``, with one column per swept field."""
    rows, vals = [], []
    for i, v in zip(ok.index, ok["variant"]):
        m = spec.regex.match(v) if isinstance(v, str) and v else None
        if m:
            rows.append(i)
            vals.append([m.group(f"f{j}") for j in range(len(spec.fields))])
    out = ok.loc[rows].copy()
    for j, f in enumerate(spec.fields):
        out[f] = [v[j] for v in vals]
    return out


def experiment_tables(ok: pd.DataFrame, failed: pd.DataFrame, specs: Sequence[ExperimentSpec], digits: int = 1
                      ) -> dict[str, Table]:
    """One ablation table per (non-frames) experiment spec that has runs."""
    out = {}
    for spec in specs:
        if spec.is_frames:
            continue
        ok_e = match_experiment(ok, spec)
        failed_e = match_experiment(failed, spec) if len(failed) else failed.iloc[:0]
        if ok_e.empty and failed_e.empty:
            continue
        out[spec.name] = ablation_table(ok_e, failed_e, spec.fields, digits=digits, name=spec.name,
                                        title=f"{spec.name}: {spec.title}")
    return out


# ----------------------------------------------------------------------------------------------------- comparison
def long_metrics(ok: pd.DataFrame) -> pd.DataFrame:
    """Records → long rows (model, method, budget, task, metric, value): seed means, plus avg / pct_full / speedup."""
    # The records' FLOPs under the metric names of the reference tables (the exact count; the papers' convention).
    ok = ok.copy()
    if "tflops_prefill" in ok:  # older records named the exact count prefill_tflops
        ok["prefill_tflops"] = (ok["tflops_prefill"].combine_first(ok["prefill_tflops"]) if "prefill_tflops" in ok
                                else ok["tflops_prefill"])
    if "tflops_llm_paper" in ok:
        ok["prefill_tflops_fastv_convention"] = ok["tflops_llm_paper"]
    cols = [c for c in ("accuracy", "ttft_ms", "vision_ms", "pruning_ms", "llm_prefill_ms", "decode_tok_s",
                        "peak_mem_mb", "peak_rss_mb", "prefill_tflops", "prefill_tflops_fastv_convention",
                        "visual_tokens_out", "retention")
            if c in ok.columns]
    rows = []
    if ok.empty:
        return pd.DataFrame(columns=["model", "method", "budget", "task", "metric", "value"])
    g = ok.groupby(["model", "method", "budget", "task"], dropna=False)[cols].mean(numeric_only=True).reset_index()
    for r in g.to_dict("records"):
        for c in cols:
            if not _is_missing(r[c]):
                rows.append({**{k: r[k] for k in ("model", "method", "budget", "task")}, "metric": c, "value": r[c]})
    long = pd.DataFrame(rows)
    # derived: four-benchmark average, % of full, speedup
    extra = []
    acc = g[g["task"].isin(BENCHMARKS)].pivot_table(index=["model", "method", "budget"], columns="task",
                                                     values="accuracy") if "accuracy" in g else pd.DataFrame()
    if len(acc) and all(b in acc.columns for b in BENCHMARKS):
        avg = acc[BENCHMARKS].mean(axis=1, skipna=False).dropna()
        for (m, me, b), v in avg.items():
            extra.append({"model": m, "method": me, "budget": b, "task": "avg", "metric": "accuracy", "value": v})
            full = avg.get((m, "none", 1.0))
            if full is not None and full:
                extra.append({"model": m, "method": me, "budget": b, "task": "avg", "metric": "pct_full",
                              "value": 100 * v / full})
    for r in g.to_dict("records"):
        full = g[(g["model"] == r["model"]) & (g["method"] == "none") & (g["task"] == r["task"])]
        if "accuracy" in g and len(full) and not _is_missing(r.get("accuracy")) and full["accuracy"].iloc[0]:
            extra.append({**{k: r[k] for k in ("model", "method", "budget", "task")}, "metric": "pct_full",
                          "value": 100 * r["accuracy"] / full["accuracy"].iloc[0]})
        if "ttft_ms" in g and len(full) and not _is_missing(r.get("ttft_ms")) and r["ttft_ms"]:
            sp = full["ttft_ms"].iloc[0] / r["ttft_ms"]
            if not _is_missing(sp):
                extra.append({**{k: r[k] for k in ("model", "method", "budget", "task")}, "metric": "speedup",
                              "value": sp})
    return pd.concat([long, pd.DataFrame(extra)], ignore_index=True)


def read_reference(path: str | Path) -> tuple[pd.DataFrame, str]:
    """A reference CSV → (long rows with a ``source`` column, label). Record-format CSVs are converted."""
    path = Path(path)
    default_source = path.name
    for line in path.read_text().splitlines():
        m = re.match(r"\s*#\s*source\s*:\s*(.+)", line, re.IGNORECASE)
        if m:
            default_source = m.group(1).strip()
            break
    df = pd.read_csv(path, comment="#", skip_blank_lines=True)
    if {"metric", "value"} <= set(df.columns):
        for c in ("model", "method", "task", "metric"):
            df[c] = df[c].astype(str).str.strip()
        df["budget"] = pd.to_numeric(df["budget"], errors="coerce").round(6)
        df.loc[df["method"] == "none", "budget"] = 1.0
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
    else:
        runs = load_runs(csvs=[path])
        ok, _ = split_ok_failed(select(runs))
        df = long_metrics(ok)
    if "source" not in df.columns:
        df["source"] = default_source
    df["source"] = df["source"].fillna(default_source).astype(str)
    if "note" not in df.columns:
        df["note"] = ""
    df["note"] = df["note"].fillna("").astype(str)
    return df, default_source


def compare_table(ok: pd.DataFrame, reference: pd.DataFrame, label: str = "reference", digits: int = 2) -> Table:
    ours = long_metrics(ok)
    ours = ours.assign(budget=ours["budget"].round(6)) if len(ours) else ours
    headers = ["Model", "Method", "Retention", "Task", "Metric", "Reference", "This harness", "Δ (harness − ref.)",
               "Source"]
    t = Table("compare", f"This harness vs. {label}", headers)
    numeric = []
    ref = reference.copy()
    ref["_m"] = ref["model"].map(lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER))
    ref = ref.sort_values(["_m", "model", "budget", "method", "task", "metric"], ascending=[True, True, False, True,
                                                                                            True, True], kind="stable")
    notes = []
    prev_model = None
    for r in ref.to_dict("records"):
        match = ours[(ours["model"] == r["model"]) & (ours["method"] == r["method"]) &
                     (ours["budget"] == r["budget"]) & (ours["task"] == r["task"]) &
                     (ours["metric"] == r["metric"])] if len(ours) else ours
        mine = Stat(float(match["value"].iloc[0]), float("nan"), 1) if len(match) else Stat()
        refv = Stat(float(r["value"]), float("nan"), 1) if not _is_missing(r["value"]) else Stat()
        diff = Stat(mine.mean - refv.mean, float("nan"), 1) if not (mine.missing or refv.missing) else Stat()
        if r["model"] != prev_model:
            t.breaks.add(len(t.rows))
        prev_model = r["model"]
        src = r["source"] + (f" ({r['note']})" if r.get("note") else "")
        t.rows.append([text_cell(model_name(r["model"])), text_cell(method_name(r["method"])),
                       text_cell(_pct(r["budget"]), "r"), text_cell(task_name(r["task"])), text_cell(r["metric"]),
                       num_cell(refv, digits), num_cell(mine, digits), num_cell(diff, digits), text_cell(src)])
        numeric.append({k: r[k] for k in ("model", "method", "budget", "task", "metric")} | {
            "reference": refv.mean, "harness": mine.mean, "diff": diff.mean, "source": r["source"]})
    notes.append("– in 'This harness' = no matching run yet. Reference numbers are as typed from their source.")
    t.notes = notes
    t.data = pd.DataFrame(numeric)
    return t


# ------------------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _panel_grid(plt, n_panels: int, ncol: int, width: float, height: float):
    """``(fig, axes)`` with ``n_panels`` panels in rows of ``ncol``; unused axes switched off."""
    nrow = math.ceil(n_panels / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, height * nrow), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    return fig, axes


def _method_lines(ax, g: pd.DataFrame, col: str, *, compact: bool = False) -> None:
    """One line per method of ``g`` (rows of one panel): ``col`` vs. budget, mean with ± std over seeds as error
    bars; the full-token model as a dashed horizontal line (``compact``: with its ± std band, smaller markers)."""
    for method in _order(g["method"], METHOD_ORDER):
        gm = g[g["method"] == method].groupby("budget")[col].agg(["mean", "std"]).dropna(subset=["mean"]).reset_index()
        if gm.empty:
            continue
        color = method_color(method)
        if method == "none":
            m = gm["mean"].iloc[0]
            ax.axhline(m, color=color, ls="--", lw=1.1 if compact else 1.2,
                       label=method_name(method) if compact else f"{method_name(method)} (100%)")
            if compact:
                sd = gm["std"].fillna(0).iloc[0]
                ax.axhspan(m - sd, m + sd, color=color, alpha=0.08, lw=0)
            continue
        ax.errorbar(100 * gm["budget"], gm["mean"], yerr=gm["std"].fillna(0), marker=method_marker(method),
                    ms=4 if compact else 6, lw=1.3 if compact else 1.6, capsize=2 if compact else 3, alpha=0.9,
                    color=color, label=method_name(method))


def plot_accuracy_vs_retention(ok: pd.DataFrame, path: str | Path, tasks: Sequence[str] | None = None) -> Path | None:
    """One panel per (model, task) with runs: accuracy vs. retention, a line per method (± std over seeds); the
    full-token model as a dashed horizontal line."""
    tasks = list(tasks or _order(ok["task"], BENCHMARKS + SYNTHETIC))
    ok = ok[ok["task"].isin(tasks)]
    if ok.empty or "accuracy" not in ok.columns or ok["accuracy"].isna().all():
        return None
    plt = _plt()
    panels = [(m, t) for m in _order(ok["model"], MODEL_ORDER) for t in tasks
              if ((ok["model"] == m) & (ok["task"] == t) & ok["accuracy"].notna()).any()]
    fig, axes = _panel_grid(plt, len(panels), min(4, len(panels)), 4.2, 3.4)
    for ax, (model, task) in zip(axes.flat, panels):
        g = ok[(ok["model"] == model) & (ok["task"] == task)]
        _method_lines(ax, g, "accuracy")
        lo, hi = float(g["accuracy"].min()), float(g["accuracy"].max())
        pad = max(2.0, 0.15 * (hi - lo))
        ax.set_ylim(max(-1.0, lo - pad), min(101.0, hi + pad))  # markers at 0 % or 100 % stay visible
        ax.set_title(f"{model_name(model)} — {task_name(task)}", fontsize=9)
        ax.set_xlabel("visual tokens kept (% of full)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_by_type(ok: pd.DataFrame, path: str | Path, task: str) -> Path | None:
    """For one task with per-question-type accuracies (the synthetic tasks): one panel per (model, type) plus the
    overall accuracy, accuracy vs. budget, a line per method with ± std over seeds as error bars, the full-token
    model as a dashed line with its ± std band."""
    ok = ok[ok["task"] == task]
    cols = ["accuracy"] + question_types(ok)
    if ok.empty or len(cols) < 2:
        return None
    plt = _plt()
    panels = [(m, c) for m in _order(ok["model"], MODEL_ORDER) for c in cols]
    multi = ok["model"].nunique() > 1
    fig, axes = _panel_grid(plt, len(panels), min(3, len(cols)), 3.6, 3.0)
    for ax, (model, col) in zip(axes.flat, panels):
        g = ok[ok["model"] == model]
        _method_lines(ax, g, col, compact=True)
        ax.set_ylim(-3, 103)
        ax.set_xlim(0, 55 if g["budget"][g["method"] != "none"].max() <= 0.5 else 105)
        ax.grid(alpha=0.3)
        name = "overall" if col == "accuracy" else col.split("/", 1)[1]
        ax.set_title(f"{model_name(model)}: {name}" if multi else name, fontsize=9)
        ax.set_xlabel("budget (% of visual tokens)", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    n_seeds = int(ok.groupby(["model", "method", "budget"])["seed"].nunique().max())
    fig.suptitle(f"{task_name(task)}: accuracy vs. budget per question type (mean ± std over {n_seeds} "
                 f"seed{'s' if n_seeds > 1 else ''})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_ttft_breakdown(ok: pd.DataFrame, path: str | Path, task: str | None = None) -> Path | None:
    """Stacked TTFT split per method × budget (vision / pruning / LLM prefill / other); x labels in method colours."""
    task = task or default_efficiency_task(ok)
    ok = ok[ok["task"] == task]
    if ok.empty or "ttft_ms" not in ok.columns or ok["ttft_ms"].isna().all():
        return None
    plt = _plt()
    parts = [("vision_ms", "vision", "#4C72B0"), ("pruning_ms", "pruning", "#DD8452"),
             ("llm_prefill_ms", "LLM prefill", "#55A868"), ("_other", "other (projector, overhead)", "#BBBBBB"),
             ("_nosplit", "TTFT, split not recorded", "#FFFFFF")]
    models = _order(ok["model"], MODEL_ORDER)
    nbars = max(len(ok[ok["model"] == m][["method", "budget"]].drop_duplicates()) for m in models)
    fig, axes = plt.subplots(1, len(models), figsize=((1.3 * nbars + 3.8) * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = ok[ok["model"] == model]
        labels, methods, stacks = [], [], []
        for method, budget in _row_blocks(g, g.iloc[:0])[0][1]:
            s = g[(g["method"] == method) & (g["budget"] == budget)]
            vals = {c: float(pd.to_numeric(s[c], errors="coerce").mean()) if c in s else float("nan")
                    for c, _, _ in parts[:3]}
            ttft = float(s["ttft_ms"].mean())
            if math.isnan(ttft):  # no latency recorded: no bar (never a zero bar)
                continue
            known = sum(v for v in vals.values() if not math.isnan(v))
            if all(math.isnan(v) for v in vals.values()):  # TTFT without its split
                vals = {c: float("nan") for c, _, _ in parts[:3]}
                vals["_other"], vals["_nosplit"] = float("nan"), ttft
            else:
                vals["_other"], vals["_nosplit"] = max(ttft - known, 0.0), float("nan")
            labels.append(method_name(method) if method == "none" else f"{method_name(method)}\n{_pct(budget)}")
            methods.append(method)
            stacks.append((vals, ttft))
        x = np.arange(len(labels))
        bottom = np.zeros(len(labels))
        for c, lab, col in parts:
            h = np.array([np.nan_to_num(v[c]) for v, _ in stacks])
            if not h.any():
                continue
            nosplit = c == "_nosplit"
            ax.bar(x, h, bottom=bottom, color=col, label=lab, width=0.65, edgecolor="#555555" if nosplit else "white",
                   lw=0.8 if nosplit else 0.5, hatch="//" if nosplit else None)
            bottom += h
        for xi, (_, ttft) in zip(x, stacks):
            if not math.isnan(ttft):
                ax.text(xi, ttft, f"{ttft:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        for tick, m in zip(ax.get_xticklabels(), methods):
            tick.set_color(method_color(m))
            tick.set_fontweight("bold")
        dev = ", ".join(sorted(set(g["device_name"].dropna().astype(str)))) if "device_name" in g else ""
        ax.set_title(f"{model_name(model)} — {task_name(task)}" + (f" ({dev})" if dev else ""), fontsize=9)
        ax.set_ylabel("time to first token (ms, median)")
        ax.set_ylim(0, np.nanmax(bottom) * 1.15 if len(bottom) and np.nanmax(bottom) > 0 else 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_latency_vs_frames(ok: pd.DataFrame, path: str | Path, task: str | None = None) -> Path | None:
    """TTFT vs. number of frames, a line per method × budget (colour = method, line style = budget)."""
    task = frames_task(ok, task)
    ok = ok[(ok["task"] == task) & (ok["num_frames"] >= 0)]
    if ok["num_frames"].nunique() < 2 or "ttft_ms" not in ok.columns:
        return None
    plt = _plt()
    models = _order(ok["model"], MODEL_ORDER)
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = ok[ok["model"] == model]
        budgets = sorted(g.loc[g["method"] != "none", "budget"].unique(), reverse=True)
        for method, budget in _row_blocks(g, g.iloc[:0])[0][1]:
            s = g[(g["method"] == method) & (g["budget"] == budget)].groupby("num_frames")["ttft_ms"].agg(
                ["mean", "std"]).reset_index()
            if s["mean"].notna().sum() < 2:  # a single frame count is not a scaling curve
                continue
            ls = "-" if method == "none" else styles[budgets.index(budget) % len(styles)]
            lab = method_name(method) if method == "none" else f"{method_name(method)} {_pct(budget)}"
            ax.errorbar(s["num_frames"], s["mean"], yerr=s["std"].fillna(0), marker=method_marker(method), ms=5,
                        lw=1.6, ls=ls, capsize=3, color=method_color(method), label=lab)
        dev = ", ".join(sorted(set(g["device_name"].dropna().astype(str)))) if "device_name" in g else ""
        ax.set_title(f"{model_name(model)} — {task_name(task)}" + (f" ({dev})" if dev else ""), fontsize=9)
        ax.set_xlabel("number of frames")
        ax.set_ylabel("time to first token (ms, median)")
        ax.set_xticks(sorted(g["num_frames"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- outputs
DEFAULT_EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def build_tables(runs: pd.DataFrame, *, models=None, methods=None, budgets=None, tasks=None, seeds=None,
                 num_frames: int | None = None, efficiency_task: str | None = None, ablation_by: str | None = None,
                 reference: tuple[pd.DataFrame, str] | None = None, include_limited: bool = False,
                 experiments_dir: str | Path | None = DEFAULT_EXPERIMENTS,
                 digits: int = 1) -> tuple[dict[str, Table], dict[str, pd.DataFrame]]:
    """All tables from loaded runs → ({name: Table}, {"ok": rows of the main tables, "frames": frame-scaling rows}).

    Main / efficiency / synthetic / compare use standard runs only (run key without an experiment suffix), so an
    ablation cell never replaces a Table 1 cell; ``frames`` adds the runs of the frame-count experiment; each
    ablation experiment config (``experiments_dir``) with runs gets its own table.
    """
    sel = select(runs, models=models, methods=methods, budgets=budgets, tasks=tasks, seeds=seeds,
                 include_limited=include_limited)
    ok_all, failed_all = split_ok_failed(sel)
    specs = experiment_specs(experiments_dir) if experiments_dir else []
    frame_specs = [sp for sp in specs if sp.is_frames]

    def standard(d):
        return d[d["variant"] == ""] if len(d) else d

    def frames_rows(d):
        if d.empty:
            return d
        keep = d["variant"].apply(lambda v: v == "" or any(sp.regex.match(v) for sp in frame_specs))
        return split_ok_failed(d[keep], KEY[:-1])[0]  # a standard run and its `__f<n>` twin are one cell

    ok, failed = pick_frames(standard(ok_all), num_frames), pick_frames(standard(failed_all), num_frames)
    bench = [t for t in BENCHMARKS if not tasks or t in tasks]
    tables = {"main": main_table(ok, failed, bench, digits),
              "efficiency": efficiency_table(ok, failed, efficiency_task, digits),
              "synthetic": synthetic_table(ok, failed, digits)}
    for task in SYNTHETIC[1:]:
        if (ok["task"] == task).any() or (len(failed) and (failed["task"] == task).any()):
            tables[task] = synthetic_table(ok, failed, digits, task)
    ok_frames = frames_rows(ok_all)
    fr = frames_table(ok_frames, standard(failed_all), efficiency_task, digits)
    if fr is not None:
        tables["frames"] = fr
    tables.update(experiment_tables(ok_all, failed_all, specs, digits))
    if ablation_by:
        ok_ab, failed_ab = split_ok_failed(sel, KEY + [ablation_by]) if ablation_by in sel.columns else (ok_all,
                                                                                                          failed_all)
        tables["ablation"] = ablation_table(pick_frames(ok_ab, num_frames), failed_ab, ablation_by, tasks, digits)
    if reference is not None:
        tables["compare"] = compare_table(ok, reference[0], reference[1])
    return tables, {"ok": ok, "frames": ok_frames}


def write_outputs(tables: dict[str, Table], plot_data: dict[str, pd.DataFrame], out: str | Path, *,
                  plots: bool = True, efficiency_task: str | None = None,
                  tasks: Sequence[str] | None = None) -> list[Path]:
    """``<name>.md`` / ``<name>.tex`` per table, and the PNG plots that have data."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, t in tables.items():
        for ext, text in (("md", t.to_markdown()), ("tex", t.to_latex())):
            p = out / f"{name}.{ext}"
            p.write_text(text)
            written.append(p)
    if plots:
        for p in (plot_accuracy_vs_retention(plot_data["ok"], out / "accuracy_vs_retention.png", tasks),
                  plot_ttft_breakdown(plot_data["ok"], out / "ttft_breakdown.png", efficiency_task),
                  plot_latency_vs_frames(plot_data["frames"], out / "latency_vs_frames.png", efficiency_task)):
            if p is not None:
                written.append(p)
        for task in SYNTHETIC:
            p = plot_accuracy_by_type(plot_data["ok"], out / f"accuracy_by_type_{task}.png", task)
            if p is not None:
                written.append(p)
    return written


def log_wandb(tables: dict[str, Table], images: Sequence[Path] = (), run: str = "new",
              project: str = "tango-harness") -> str:
    """Log every table as a ``wandb.Table`` (displayed strings) plus its numeric data, and the plots as images.

    ``run``: ``new`` starts a new run (job_type ``tables``); ``entity/project/run_id`` (or ``project/run_id``,
    ``run_id``) resumes that run. The mode comes from ``$WANDB_MODE`` (offline unless set). Returns the run's path
    or directory.
    """
    import os

    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    if run == "new":
        r = wandb.init(project=project, job_type="tables", mode=mode)
    else:
        parts = run.strip("/").split("/")
        kw = {"id": parts[-1], "resume": "allow", "mode": mode}
        if len(parts) >= 2:
            kw["project"] = parts[-2]
        if len(parts) >= 3:
            kw["entity"] = parts[-3]
        r = wandb.init(**kw)
    payload = {}
    for name, t in tables.items():
        payload[f"tables/{name}"] = wandb.Table(dataframe=t.to_frame())
        if t.data is not None and len(t.data):
            payload[f"tables/{name}_data"] = wandb.Table(dataframe=t.data.astype(object).where(t.data.notna(), None))
    for p in images:
        if str(p).endswith(".png"):
            payload[f"plots/{Path(p).stem}"] = wandb.Image(str(p))
    r.log(payload)
    where = r.dir if mode == "offline" else r.path
    r.finish()
    return str(where)
