"""The paper's tables from cleaned records: Table 1 (``main``), synthetic, efficiency, frame scaling, one table per
experiment (grouped by the recorded ``experiment`` / ``variant``), the budget-matched view, the significance table,
and :func:`build_tables`, which makes them all (see :mod:`tango.report` for the rules)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tango.methods import METHODS
from tango.report import stats as S
from tango.report.compare import compare_table
from tango.report.load import (BENCHMARKS, FLOPS_COLUMNS, KEY, MISSING_MD, MODEL_ORDER, SYNTHETIC, _is_missing, _order,
                               _pct, _row_blocks, default_efficiency_task, frames_task, method_name, model_name,
                               pick_frames, question_scores, question_types, select, split_ok_failed, task_name,
                               variant_fields)
from tango.report.render import Cell, Stat, Table, _bold_best, _footnotes, cell_stat, num_cell, stat, text_cell

REGIME_MARK = "‡"
LEVEL = 0.95


# -------------------------------------------------------------------------------------------- per-question scores
class Questions:
    """Per-question scores of the ok runs (``samples.jsonl``), by cell, for CIs and paired tests.

    A cell's score of a question is its mean over the cell's runs (seeds) that answered it; questions are named by
    ``question_set`` and ``doc_id``, so seeds over the same questions average per question and seeds that generate
    different questions (synthetic data) add questions. Resampling is stratified by ``question_set``."""

    def __init__(self, ok: pd.DataFrame, n_boot: int = 10_000, seed: int = 0):
        self.ok, self.n_boot, self.seed = ok, n_boot, seed
        self.long = question_scores(ok)
        self._cache: dict[tuple, pd.DataFrame] = {}

    def scores(self, **where) -> pd.DataFrame:
        """``unit`` (index) -> ``score`` (mean over the runs) and ``stratum``, over the runs matching ``where``."""
        key = tuple(sorted(where.items()))
        if key not in self._cache:
            sel = self.ok
            for k, v in where.items():
                sel = sel[sel[k] == v]
            long = self.long[self.long["_row"].isin(sel.index)]
            self._cache[key] = long.groupby("unit").agg(score=("score", "mean"), stratum=("stratum", "first"))
        return self._cache[key]

    def ci(self, **where) -> tuple[float, float] | None:
        q = self.scores(**where)
        if q.empty:
            return None
        iv = S.bootstrap_mean(q["score"].to_numpy(), strata=q["stratum"].to_numpy(), n_boot=self.n_boot,
                              level=LEVEL, seed=self.seed)
        return iv.low, iv.high

    def compare(self, a: dict, b: dict) -> dict | None:
        """Paired comparison of cell ``a`` with cell ``b`` on the questions both answered (None if none)."""
        qa, qb = self.scores(**a), self.scores(**b)
        common = qa.index.intersection(qb.index)
        if common.empty:
            return None
        x, y = qa.loc[common, "score"].to_numpy(), qb.loc[common, "score"].to_numpy()
        strata = qa.loc[common, "stratum"].to_numpy()
        iv = S.paired_bootstrap_diff(x, y, strata=strata, n_boot=self.n_boot, level=LEVEL, seed=self.seed)
        p, test = S.paired_test(x, y, seed=self.seed)
        return {"diff": iv.estimate, "low": iv.low, "high": iv.high, "p": p, "test": test, "n": len(common),
                "n_a": len(qa), "n_b": len(qb)}


def _with_ci(s: Stat, questions: Questions | None, **where) -> Stat:
    if questions is not None and not s.missing:
        s.ci = questions.ci(**where)
    return s


def regime_note(ok: pd.DataFrame, model: str, method: str, budget: float) -> str | None:
    """The footnote of a cell whose runs used a regime that is not the authors' algorithm (the method class's
    ``nonstandard_regimes``, matched against the runs' ``method/regime``), else None."""
    cls = METHODS.get(method)
    if cls is None or not cls.nonstandard_regimes or "method/regime" not in ok.columns:
        return None
    sel = ok[(ok["model"] == model) & (ok["method"] == method) & (ok["budget"] == budget)]
    vals = [str(v) for v in sel["method/regime"].dropna()]
    hits = sorted({x for v in vals for x in v.split("|") if x in cls.nonstandard_regimes})
    if not hits:
        return None
    parts = [f"regime {h} in {sum(h in v.split('|') for v in vals)} of {len(vals)} run(s): "
             f"{cls.nonstandard_regimes[h]}" for h in hits]
    return f"{REGIME_MARK} {method_name(method)} at {_pct(budget)} ({model_name(model)}): " + "; ".join(parts)


def merge_regime_notes(notes: Sequence[str]) -> list[str]:
    """Regime footnotes that differ only in the budget, as one note listing the budgets (first-seen order)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for note in notes:
        m = re.match(rf"^{re.escape(REGIME_MARK)} (.+?) at (\S+) (\(.*)$", note)
        key = (m.group(1), m.group(3)) if m else (note, "")
        merged.setdefault(key, [])
        if m and m.group(2) not in merged[key]:
            merged[key].append(m.group(2))
    return [f"{REGIME_MARK} {name} at {', '.join(b)} {rest}" if b else name for (name, rest), b in merged.items()]


def _method_cell(ok: pd.DataFrame, model: str, method: str, budget: float, notes: list[str]) -> Cell:
    note = regime_note(ok, model, method, budget)
    if note:
        notes.append(note)
    return text_cell(method_name(method) + (REGIME_MARK if note else ""))


def _kept(ok: pd.DataFrame, failed: pd.DataFrame, **where) -> Stat:
    """Realised retention (layer-averaged) in %, over the runs of a row."""
    r = cell_stat(ok, failed, "retention", **where)
    return Stat(100 * r.mean, 100 * r.std, r.n) if not r.missing else Stat()


def accuracy_table(ok: pd.DataFrame, failed: pd.DataFrame, *, name: str, title: str,
                   columns: list[tuple[str, str, str]],
                   avg_over: list[str] | None, digits: int = 1, questions: Questions | None = None) -> Table:
    """Generic method × budget accuracy table.

    ``columns``: (header, task, record column). ``avg_over``: headers averaged into "Avg" (only when all exist) and
    turned into "% Full"; None = no Avg, "% Full" of the first column.
    """
    headers = ["Model", "Method", "Retention"] + [c[0] for c in columns]
    if avg_over is not None:
        headers += ["Avg"]
    headers += ["% Full", "Kept (realised)"]
    t = Table(name, title, headers)
    stats: dict[tuple[int, int], Stat] = {}
    failed_cells: list[str] = []
    regime_notes: list[str] = []
    numeric = []
    n_seeds_max = 1
    tasks = list(dict.fromkeys(c[1] for c in columns))
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
            row = [text_cell(model_name(model) if r in t.breaks else ""),
                   _method_cell(ok, model, method, budget, regime_notes), text_cell(_pct(budget), "r")]
            vals = {}
            for header, task, col in columns:
                s = cell_stat(ok, failed, col, model=model, method=method, budget=budget, task=task)
                if col == "accuracy":
                    _with_ci(s, questions, model=model, method=method, budget=budget, task=task)
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
            rows_ok = ok[ok["task"].isin(tasks)] if len(ok) else ok
            kept = _kept(rows_ok, rows_ok.iloc[:0], model=model, method=method, budget=budget)
            row.append(num_cell(Stat(kept.mean, float("nan"), min(kept.n, 1)), 1, "%"))
            t.rows.append(row)
            if method != "none":
                per_budget.setdefault(budget, []).append(r)
            numeric.append({"model": model, "method": method, "budget": budget,
                            **{h: s.mean for h, s in vals.items()},
                            **({"Avg": avg.mean} if avg_over is not None else {}), "% Full": pct.mean,
                            "kept_pct": kept.mean})
        num_cols = list(range(3, 3 + len(columns) + (1 if avg_over is not None else 0) + 1))
        for rows in per_budget.values():
            _bold_best(t, rows, num_cols, stats)
    t.notes = ["Bold: best per model and retention ratio. % Full = " + (
        "Avg" if avg_over is not None else headers[3]) + " / full-token value × 100. Kept (realised) = visual "
               "tokens the LLM saw (layer-averaged) / visual tokens of the full-token run, mean over the row's runs; "
               "Retention = the budget asked for."] + _footnotes(
        failed_cells, len(failed), len(ok), n_seeds_max, ci=questions is not None) + list(dict.fromkeys(regime_notes))
    t.data = pd.DataFrame(numeric)
    return t


def main_table(ok: pd.DataFrame, failed: pd.DataFrame, tasks: Sequence[str] = BENCHMARKS, digits: int = 1,
               questions: Questions | None = None) -> Table:
    ok_b = ok[ok["task"].isin(tasks)]
    failed_b = failed[failed["task"].isin(tasks)] if len(failed) else failed
    cols = [(task_name(tk), tk, "accuracy") for tk in tasks]
    return accuracy_table(ok_b, failed_b, name="main",
                          title="Accuracy (%) by method and retention ratio",
                          columns=cols, avg_over=[c[0] for c in cols], digits=digits, questions=questions)


def synthetic_table(ok: pd.DataFrame, failed: pd.DataFrame, digits: int = 1, task: str = "synthetic",
                    questions: Questions | None = None) -> Table:
    ok_s = ok[ok["task"] == task]
    failed_s = failed[failed["task"] == task] if len(failed) else failed
    cols = [("Accuracy", task, "accuracy")] + [(c.split("/", 1)[1], task, c) for c in question_types(ok_s)]
    return accuracy_table(ok_s, failed_s, name=task,
                          title=f"{task_name(task)} task: accuracy (%) overall and per question type",
                          columns=cols, avg_over=None, digits=digits, questions=questions)


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
               "LLM prefill (ms)", "Speedup", "Prefill TFLOPs", "LLM T MACs (papers)", "Peak GPU mem (GiB)",
               "Peak RSS (GiB)",
               "Decode (tok/s)", "Device"]
    t = Table("efficiency", f"Efficiency on {task_name(task) if task else '(no task)'}: medians per request "
                            "(first request excluded as warm-up)", headers)
    failed_cells, numeric, n_seeds_max, regime_notes = [], [], 1, []
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
                  ("_visual_tokens", "ttft_ms", "vision_ms", "pruning_ms", "llm_prefill_ms", "_tflops",
                   "tflops_llm_paper", "_mem_gb",
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
            t.rows.append([text_cell(model_name(model) if r in t.breaks else ""),
                           _method_cell(ok, model, method, budget, regime_notes),
                           text_cell(_pct(budget), "r"), kept, num_cell(st["ttft_ms"], digits),
                           num_cell(st["vision_ms"], digits), num_cell(st["pruning_ms"], 2),
                           num_cell(st["llm_prefill_ms"], digits), num_cell(speed, 2, "×"),
                           num_cell(st["_tflops"], 2), num_cell(st["tflops_llm_paper"], 2),
                           num_cell(st["_mem_gb"], 2), num_cell(st["_rss_gb"], 2),
                           num_cell(st["decode_tok_s"], 0), text_cell(dev or MISSING_MD)])
            numeric.append({"model": model, "method": method, "budget": budget, "speedup": speed.mean,
                            **{k.lstrip("_"): v.mean for k, v in st.items()}})
    t.notes = [("Speedup = TTFT of the full-token model / TTFT (same model, task and frame count). "
               "TTFT = vision + pruning + LLM prefill (+ projector and overhead). Prefill TFLOPs: exact count "
               "(tflops_prefill; 2 FLOPs per multiply-add). LLM T MACs (papers): the LLM prefill in FastV's "
               "convention, the one HoliTom / FastVID tables use (tflops_llm_paper; formula in tango/glossary.py)."
               )] + _footnotes(
        failed_cells, len(failed), len(ok), n_seeds_max) + list(dict.fromkeys(regime_notes))
    t.data = pd.DataFrame(numeric)
    return t


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


FRAMES_EXPERIMENT = "frames"  # its runs join the standard runs in the frame-scaling table


def with_variant_columns(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``df`` with one ``variant/<label>`` column per label of its recorded variants, and those column names."""
    fields = [variant_fields(v) for v in df["variant"]] if len(df) else []
    labels = list(dict.fromkeys(k for f in fields for k in f))
    out = df.copy()
    for k in labels:
        out[f"variant/{k}"] = [str(f[k]) if k in f else None for f in fields]
    return out, [f"variant/{k}" for k in labels]


def experiment_tables(ok: pd.DataFrame, failed: pd.DataFrame, digits: int = 1) -> dict[str, Table]:
    """One ablation table per recorded ``experiment`` whose runs carry a variant (``frames`` has its own table):
    one row per variant, its labels as columns."""
    out = {}
    both = pd.concat([ok, failed]) if len(failed) else ok
    names = both.loc[(both["variant"] != "") & (both["experiment"] != FRAMES_EXPERIMENT), "experiment"]
    for name in _order(names, []):
        ok_e, by = with_variant_columns(ok[(ok["experiment"] == name) & (ok["variant"] != "")])
        failed_e, by_f = with_variant_columns(failed[(failed["experiment"] == name) & (failed["variant"] != "")]) \
            if len(failed) else (failed.iloc[:0], [])
        by = list(dict.fromkeys(by + by_f))
        ok_e = ok_e.reindex(columns=list(dict.fromkeys([*ok_e.columns, *by])))
        failed_e = failed_e.reindex(columns=list(dict.fromkeys([*failed_e.columns, *by])))
        key = name or "variants"  # records older than the experiment field: grouped by their run-key suffix
        labels = ", ".join(c.split("/", 1)[1] for c in by)
        out[key] = ablation_table(ok_e, failed_e, by, digits=digits, name=key,
                                  title=f"{key}: accuracy (%) per variant ({labels})")
    return out


# ------------------------------------------------------------------------------------------ budget-matched view
def curve(ok: pd.DataFrame, model: str, task: str, method: str, x: str = "retention") -> pd.DataFrame:
    """One method's points on one (model, task): per budget, seed means of ``x`` and accuracy, sorted by ``x``."""
    g = ok[(ok["model"] == model) & (ok["task"] == task) & (ok["method"] == method)]
    if g.empty or x not in g.columns:
        return pd.DataFrame(columns=["budget", x, "accuracy"])
    pts = g.groupby("budget")[[x, "accuracy"]].mean().dropna().reset_index()
    return pts.sort_values(x, kind="stable").reset_index(drop=True)


def interpolate(pts: pd.DataFrame, target: float, x: str = "retention") -> float:
    """Accuracy at ``x == target``, linear between the two nearest measured points; NaN outside the measured range
    (never extrapolated)."""
    if pts.empty:
        return float("nan")
    xs, ys = pts[x].to_numpy(float), pts["accuracy"].to_numpy(float)
    if target < xs.min() - 1e-9 or target > xs.max() + 1e-9:
        return float("nan")
    xs_u, inv = np.unique(xs, return_inverse=True)  # equal x (two budgets that realised the same count): averaged
    ys_u = np.bincount(inv, weights=ys) / np.bincount(inv)
    return float(np.interp(target, xs_u, ys_u))


def budget_matched_table(ok: pd.DataFrame, tasks: Sequence[str] | None = None, targets: Sequence[float] | None = None,
                         digits: int = 1) -> Table | None:
    """Methods compared at equal *realised* retention: rows = model › task › target retention (default: the budgets
    asked for), one column per method = its accuracy interpolated along its own curve (realised retention ->
    accuracy, seed means); – where the target lies outside what the method realised."""
    pruned = ok[(ok["method"] != "none")]
    if pruned.empty or "retention" not in pruned.columns or pruned["retention"].isna().all():
        return None
    methods = _order(pruned["method"], list(METHODS))
    tasks = [t for t in (tasks or _order(pruned["task"], BENCHMARKS + SYNTHETIC)) if (pruned["task"] == t).any()]
    targets = sorted(targets or set(pruned["budget"]), reverse=True)
    t = Table("budget_matched", "Budget-matched view: accuracy (%) interpolated at equal realised retention",
              ["Model", "Task", "Realised retention", *map(method_name, methods), "Full tokens"])
    numeric = []
    for model in _order(pruned["model"], MODEL_ORDER):
        t.breaks.add(len(t.rows))
        for task in tasks:
            curves = {m: curve(ok, model, task, m) for m in methods}
            full = stat(ok.loc[(ok["model"] == model) & (ok["task"] == task) & (ok["method"] == "none"), "accuracy"])
            first = len(t.rows)
            for target in targets:
                r = len(t.rows)
                vals = {m: interpolate(c, target) for m, c in curves.items()}
                stats = {(r, 3 + i): Stat(v, float("nan"), 1) if not np.isnan(v) else Stat()
                         for i, v in enumerate(vals.values())}
                t.rows.append([text_cell(model_name(model) if r in t.breaks else ""),
                               text_cell(task_name(task) if r == first else ""), text_cell(_pct(target), "r"),
                               *(num_cell(stats[(r, 3 + i)], digits) for i in range(len(methods))),
                               num_cell(Stat(full.mean, float("nan"), min(full.n, 1)), digits)])
                _bold_row(t, r, stats)
                numeric += [{"model": model, "task": task, "retention": target, "method": m, "accuracy": v}
                            for m, v in vals.items()]
            if first < len(t.rows):
                t.spaces.add(first)
    t.notes = [("Each method's accuracy at a realised retention (visual tokens the LLM saw, layer-averaged, / full), "
               "linearly interpolated between the two nearest budgets it ran (seed means); – = outside the range "
               "the method realised (no extrapolation). Bold: best per row.")]
    t.data = pd.DataFrame(numeric)
    return t


def _bold_row(t: Table, r: int, stats: dict[tuple[int, int], Stat]) -> None:
    vals = {c: s.mean for (_, c), s in stats.items() if not s.missing}
    if len(vals) < 2 or max(vals.values()) - min(vals.values()) < 1e-9:
        return
    best = max(vals.values())
    for c, v in vals.items():
        if abs(v - best) < 1e-9:
            t.rows[r][c].bold = True


# -------------------------------------------------------------------------------------------------- significance
def _p(p: float) -> str:
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def significance_table(ok: pd.DataFrame, questions: Questions, tasks: Sequence[str] | None = None,
                       digits: int = 1) -> Table | None:
    """Paired comparisons per (model, task, budget): every method against full tokens and against every other
    method at the same budget, on the questions both answered: difference in accuracy (points), its 95 % paired
    bootstrap CI, and the exact McNemar p-value (sign-flip permutation when scores are seed averages)."""
    if questions.long.empty:
        return None
    cols = ["Model", "Task", "Retention", "Comparison", "Δ (points)", "95% CI", "p", "Test", "Questions"]
    t = Table("significance", "Paired significance: accuracy differences on the same questions", cols)
    numeric = []
    tasks = [tk for tk in (tasks or _order(ok["task"], BENCHMARKS + SYNTHETIC)) if (ok["task"] == tk).any()]
    for model in _order(ok["model"], MODEL_ORDER):
        t.breaks.add(len(t.rows))
        for task in tasks:
            g = ok[(ok["model"] == model) & (ok["task"] == task)]
            first = len(t.rows)
            for budget in sorted(set(g.loc[g["method"] != "none", "budget"]), reverse=True):
                methods = _order(g.loc[g["budget"] == budget, "method"], list(METHODS))
                pairs = [(m, ("none", 1.0)) for m in methods] + [
                    (a, (b, budget)) for i, a in enumerate(methods) for b in methods[i + 1:]]
                block = len(t.rows)
                for a, (b, b_budget) in pairs:
                    res = questions.compare({"model": model, "task": task, "method": a, "budget": budget},
                                            {"model": model, "task": task, "method": b, "budget": b_budget})
                    if res is None:
                        continue
                    r = len(t.rows)
                    sig = res["p"] < 0.05
                    d = Cell(f"{res['diff']:+.{digits}f}", f"{res['diff']:+.{digits}f}", bold=sig)
                    ci = f"[{res['low']:+.{digits}f}, {res['high']:+.{digits}f}]"
                    n = str(res["n"]) + ("" if res["n"] == res["n_a"] == res["n_b"] else
                                         f" (of {res['n_a']} / {res['n_b']})")
                    t.rows.append([text_cell(model_name(model) if r in t.breaks else ""),
                                   text_cell(task_name(task) if r == first else ""),
                                   text_cell(_pct(budget) if r == block else "", "r"),
                                   text_cell(f"{method_name(a)} − {method_name(b)}"), d, text_cell(ci, "r"),
                                   text_cell(_p(res["p"]), "r"), text_cell(res["test"]), text_cell(n, "r")])
                    numeric.append({"model": model, "task": task, "budget": budget, "a": a, "b": b, **res})
                if block < len(t.rows) and block not in t.breaks:
                    t.spaces.add(block)
    if not t.rows:
        return None
    t.notes = [(f"Δ = accuracy of the first method − the second, on the questions both answered (a question's score "
               f"is its mean over seeds); 95% CI: paired percentile bootstrap over questions "
               f"({questions.n_boot} replicates, stratified by question set); p: exact McNemar test (binary scores) "
               f"or sign-flip permutation test (seed-averaged scores), two-sided. Bold Δ: p < 0.05, not corrected "
               f"for multiple comparisons.")]
    t.data = pd.DataFrame(numeric)
    return t


# ---------------------------------------------------------------------------------------------------------- build
def build_tables(runs: pd.DataFrame, *, models=None, methods=None, budgets=None, tasks=None, seeds=None,
                 num_frames: int | None = None, efficiency_task: str | None = None, ablation_by: str | None = None,
                 reference: tuple[pd.DataFrame, str] | None = None, include_limited: bool = False,
                 digits: int = 1, ci: bool = False, significance: bool = True,
                 n_boot: int = 10_000) -> tuple[dict[str, Table], dict[str, pd.DataFrame]]:
    """All tables from loaded runs → ({name: Table}, {"ok": rows of the main tables, "frames": frame-scaling rows}).

    Main / efficiency / synthetic / budget-matched / significance / compare use standard runs only (empty
    ``variant``), so an ablation cell never replaces a Table 1 cell; ``frames`` adds the runs of the ``frames``
    experiment; every other experiment with variants gets its own table. ``ci``: 95 % bootstrap CIs in the accuracy
    cells; ``significance``: the paired significance table (both need ``samples.jsonl`` beside the records).
    """
    sel = select(runs, models=models, methods=methods, budgets=budgets, tasks=tasks, seeds=seeds,
                 include_limited=include_limited)
    ok_all, failed_all = split_ok_failed(sel)

    def standard(d):
        return d[d["variant"] == ""] if len(d) else d

    def frames_rows(d):
        if d.empty:
            return d
        keep = (d["variant"] == "") | (d["experiment"] == FRAMES_EXPERIMENT)
        return split_ok_failed(d[keep], KEY[:-1])[0]  # a standard run and its frames-experiment twin are one cell

    ok, failed = pick_frames(standard(ok_all), num_frames), pick_frames(standard(failed_all), num_frames)
    questions = Questions(ok, n_boot=n_boot) if (ci or significance) else None
    bench = [t for t in BENCHMARKS if not tasks or t in tasks]
    tables = {"main": main_table(ok, failed, bench, digits, questions if ci else None),
              "efficiency": efficiency_table(ok, failed, efficiency_task, digits),
              "synthetic": synthetic_table(ok, failed, digits, questions=questions if ci else None)}
    for task in SYNTHETIC[1:]:
        if (ok["task"] == task).any() or (len(failed) and (failed["task"] == task).any()):
            tables[task] = synthetic_table(ok, failed, digits, task, questions if ci else None)
    bm = budget_matched_table(ok, tasks, digits=digits)
    if bm is not None:
        tables["budget_matched"] = bm
    if significance:
        sig = significance_table(ok, questions, tasks, digits)
        if sig is not None:
            tables["significance"] = sig
    ok_frames = frames_rows(ok_all)
    fr = frames_table(ok_frames, standard(failed_all), efficiency_task, digits)
    if fr is not None:
        tables["frames"] = fr
    tables.update(experiment_tables(ok_all, failed_all, digits))
    if ablation_by:
        ok_ab, failed_ab = split_ok_failed(sel, KEY + [ablation_by]) if ablation_by in sel.columns else (ok_all,
                                                                                                          failed_all)
        tables["ablation"] = ablation_table(pick_frames(ok_ab, num_frames), failed_ab, ablation_by, tasks, digits)
    if reference is not None:
        tables["compare"] = compare_table(ok, reference[0], reference[1])
    return tables, {"ok": ok, "frames": ok_frames}


# ------------------------------------------------------------------------------------------------------ summary
def summary_table(ok: pd.DataFrame, failed: pd.DataFrame, model: str, task: str, digits: int = 1,
                  variants: bool = False) -> Table:
    """Compact accuracy vs. budget for one (model, task): rows = budgets asked for (high -> low), one column per
    method, cells = mean ± std over seeds, with the realised retention where it is more than 1 point off the budget,
    ``–†`` where every run failed and ``‡`` on a non-standard regime; built with ``pivot_table`` from the records (the
    README's tiny-model table). ``variants``: one column per (method, recorded variant), the variant after its
    method's standard column (``ok`` must then hold only the runs to compare)."""
    g = ok[(ok["model"] == model) & (ok["task"] == task) & (ok["method"] != "none")].copy()
    g["suffix"] = g["variant"].map(_variant_suffix) if variants else ""
    g["column"] = g["method"] + g["suffix"]
    agg = g.pivot_table(index="budget", columns="column", values=["accuracy", "retention"],
                        aggfunc=["mean", "std", "count"], dropna=False)  # keep one-seed cells' NaN std
    columns = [(m, x) for m in _order(g["method"], list(METHODS))
               for x in sorted(set(g.loc[g["method"] == m, "suffix"]))]
    t = Table(f"summary_{task}", f"{model_name(model)}, {task_name(task)}: accuracy (%) vs. budget",
              ["Budget", *(method_name(m) + x for m, x in columns)])
    notes: list[str] = []
    gone = failed[(failed["model"] == model) & (failed["task"] == task)].copy() if len(failed) else failed
    if len(gone):
        gone["column"] = gone["method"] + (gone["variant"].map(_variant_suffix) if variants else "")
    for budget in sorted(agg.index, reverse=True):
        r = len(t.rows)
        stats = {}
        row = [text_cell(_pct(budget), "r")]
        for i, (method, suffix) in enumerate(columns):
            m = method + suffix
            n = agg.get(("count", "accuracy", m), pd.Series(dtype=float)).get(budget, 0)
            if _is_missing(n) or not n:
                lost = len(gone) and ((gone["column"] == m) & (gone["budget"] == budget)).any()
                row.append(num_cell(Stat(failed=["failed"] if lost else []), digits))
                continue
            s = Stat(float(agg[("mean", "accuracy", m)][budget]), float(agg[("std", "accuracy", m)][budget]), int(n))
            stats[(r, 1 + i)] = s
            kept = agg[("mean", "retention", m)][budget] if ("mean", "retention", m) in agg else float("nan")
            off = not _is_missing(kept) and abs(100 * (kept - budget)) > 1
            note = regime_note(g[g["column"] == m], model, method, budget)
            notes += [note] if note else []
            row.append(num_cell(s, digits, (f" (keeps {100 * kept:.1f}%)" if off else "") + (REGIME_MARK if note else "")))
        t.rows.append(row)
        _bold_row(t, r, stats)
    full = stat(ok.loc[(ok["model"] == model) & (ok["task"] == task) & (ok["method"] == "none"), "accuracy"])
    t.notes = [f"Full tokens: {num_cell(full, digits).md}. Mean ± std over seeds; (keeps r%) = realised retention "
               f"when it is more than 1 point off the budget; – = no run; –† = every run failed (the errors are in the "
               f"full tables). Bold: best per row.", *merge_regime_notes(notes)]
    return t


def _variant_suffix(variant: str) -> str:
    """A recorded variant as a column suffix: ``' (count_rule=exact)'``; ``''`` for a standard run."""
    return "".join(f" ({k}={v})" for k, v in variant_fields(variant).items())


#: bench_serving configurations that are not harness methods
SERVING_CONFIGS = {"full": "Full tokens", "vllm_evs": "EVS (vLLM's own)"}


def serving_table(csvs: Sequence[str], digits: int = 1) -> Table:
    """Serving under load (``scripts/bench_serving.py`` rows, ``results/serving/*.csv``): requests/s, TTFT p50 / p90
    and output tokens/s per configuration, budget and concurrency; the latest row of each wins. Harness methods are
    marked "via plugin", rows whose requests shared one video cache key (``--reuse-video``, and every row written
    before ``video_cache_key`` existed) "video from vLLM's caches"; the device, vLLM version and dates go to the
    notes."""
    df = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    if "video_cache_key" not in df.columns:  # rows written before the column: one shared key (vLLM's caches hit)
        df["video_cache_key"] = "shared"
    df["video_cache_key"] = df["video_cache_key"].fillna("shared")
    key = ["model", "config", "budget", "concurrency", "video_cache_key"]
    df = df.drop_duplicates(key, keep="last")
    order = {c: i for i, c in enumerate([*SERVING_CONFIGS, *METHODS])}
    df = df.assign(_o=df["config"].map(lambda c: order.get(c, len(order)))).sort_values(
        ["model", "_o", "budget", "concurrency", "video_cache_key"], kind="stable")
    columns = ["Model", "Method", "Budget", "Concurrency", "Req/s", "TTFT p50 (ms)", "TTFT p90 (ms)", "Out tok/s",
               "Prompt tokens", "Completed"]
    t = Table("serving", "Serving throughput under load (vLLM)", columns, data=df.drop(columns="_o"))

    def num(v, d=digits):
        return Cell(MISSING_MD, MISSING_MD) if _is_missing(v) else num_cell(Stat(float(v), n=1), d)

    for _, r in df.iterrows():
        name = SERVING_CONFIGS.get(r["config"]) or f"{method_name(r['config'])} (via plugin)"
        name += ", video from vLLM's caches" if r["video_cache_key"] == "shared" else ""
        t.rows.append([text_cell(r["model"]), text_cell(name), num(r["budget"], 2), num(r["concurrency"], 0),
                       num(r["req_s"], 2), num(r["ttft_p50_ms"]), num(r["ttft_p90_ms"]), num(r["output_tok_s"]),
                       num(r["prompt_tokens"], 0), text_cell(f"{r['completed']}/{r['requests']}", "r")])
    for (device, vllm), g in df.groupby(["device", "vllm"]):
        dates = ", ".join(sorted(set(g["date"])))
        t.notes.append(f"{device}, vLLM {vllm}, torch {g['torch'].iloc[0]}, measured {dates} ({len(g)} rows).")
    return t
