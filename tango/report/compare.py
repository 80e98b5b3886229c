"""Side by side with published numbers: records as long rows, reference CSVs (``--compare``), the compare table.

Method and model names in a reference are matched through the registries: a key (``visionzip``) or a display name
(``VisionZip``, any case) both resolve to the harness key; a name the registries do not know is kept as written and
its rows show "not in the harness" (e.g. HoliTom's ``prunevid``)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tango.methods import METHODS
from tango.report.load import (BENCHMARKS, MODEL_NAMES, MODEL_ORDER, _is_missing, _pct, load_runs, method_name,
                               model_name, select, split_ok_failed, task_name)
from tango.report.render import Stat, Table, num_cell, text_cell


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


def canonical_method(name: str) -> str:
    """A reference's method name -> the registry key (key or display name, any case); unknown names unchanged."""
    n = str(name).strip()
    by_display = {(cls.display_name or key).lower(): key for key, cls in METHODS.items()}
    return n if n in METHODS else by_display.get(n.lower(), n)


def canonical_model(name: str) -> str:
    """A reference's model name -> the harness model key (key or display name, any case); unknown unchanged."""
    n = str(name).strip()
    by_display = {v.lower(): k for k, v in MODEL_NAMES.items()}
    return n if n in MODEL_NAMES else by_display.get(n.lower(), n)


def read_references(paths) -> tuple[pd.DataFrame, str]:
    """Several reference CSVs -> one long frame (each row keeps its own ``source``), label = their sources."""
    frames, labels = zip(*(read_reference(p) for p in paths)) if paths else ((), ())
    return pd.concat(frames, ignore_index=True), "; ".join(labels)


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
        df["method"] = df["method"].map(canonical_method)
        df["model"] = df["model"].map(canonical_model)
        df["budget"] = pd.to_numeric(df["budget"], errors="coerce").round(6)
        df.loc[df["method"] == "none", "budget"] = 1.0
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
    else:
        runs = load_runs(csvs=[path])
        ok, _ = split_ok_failed(select(runs))
        df = long_metrics(ok)
    if "source" not in df.columns:
        df["source"] = default_source
    df["source"] = df["source"].astype(object).where(df["source"].notna(), default_source).astype(str)
    if "note" not in df.columns:
        df["note"] = ""
    df["note"] = df["note"].astype(object).where(df["note"].notna(), "").astype(str)
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
        known = r["method"] in METHODS and r["model"] in MODEL_NAMES
        src = r["source"] + (f" ({r['note']})" if r.get("note") else "") + ("" if known else " [not in the harness]")
        t.rows.append([text_cell(model_name(r["model"])), text_cell(method_name(r["method"])),
                       text_cell(_pct(r["budget"]), "r"), text_cell(task_name(r["task"])), text_cell(r["metric"]),
                       num_cell(refv, digits), num_cell(mine, digits), num_cell(diff, digits), text_cell(src)])
        numeric.append({k: r[k] for k in ("model", "method", "budget", "task", "metric")} | {
            "reference": refv.mean, "harness": mine.mean, "diff": diff.mean, "source": r["source"]})
    notes.append("– in 'This harness' = no matching run yet. Reference numbers are as typed from their source.")
    t.notes = notes
    t.data = pd.DataFrame(numeric)
    return t



#: the published tables shipped with the harness (``--compare`` inputs; their ``none`` rows are full-token baselines)
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "tables" / "references"


def full_token_references(model: str, task: str, paths=None) -> list[tuple[float, str]]:
    """Published full-token (``method=none``) accuracies of harness model ``model`` on benchmark ``task`` in the
    reference CSVs (default: every file in ``results/tables/references/``), as ``(value, source)``; empty when none
    exists; ``source`` is the file's ``# source:`` citation. Only exact benchmark keys match (a ``*_local`` stand-in is
    not the benchmark)."""
    out = []
    for path in sorted(REFERENCE_DIR.glob("*.csv")) if paths is None else paths:
        ref, label = read_reference(path)  # label: the file's "# source:" citation
        rows = ref[(ref["model"] == model) & (ref["method"] == "none") & (ref["task"] == task) &
                   (ref["metric"] == "accuracy")]
        out += [(float(v), label) for v in rows["value"]]
    return out
