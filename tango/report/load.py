"""Loading run records: vocabulary (names, order, colours from the registries), cleaning rules, selection, and the
per-question scores that paired statistics resample (see :mod:`tango.report` for the rules)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tango.methods import METHODS

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
        df = pd.read_csv(c, comment=None, dtype={"variant": str, "experiment": str}, keep_default_na=True)
        for r in df.to_dict("records"):
            r = {k: v for k, v in r.items() if not _is_missing(v)}
            r.setdefault("status", "ok")
            r["_source"] = str(c)
            rows.append(r)
    if not rows:
        return pd.DataFrame(columns=[*KEY, "experiment", "status", "date", "_source", "_order"])
    df = pd.DataFrame(rows)
    df["_order"] = np.arange(len(df))
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Typed identity columns: budget 1 for ``none``, budgets rounded, numeric metrics, missing identity filled."""
    df = df.copy()
    for c in [k for k in KEY if k != "variant"] + ["status", "date"]:
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
    df["variant"] = _variants(df)
    df["experiment"] = df["experiment"].astype(object).where(df["experiment"].notna(), "") \
        if "experiment" in df.columns else ""
    df["_date"] = pd.to_datetime(df["date"], errors="coerce", utc=True)
    if "limit" in df.columns:
        df["limit"] = pd.to_numeric(df["limit"], errors="coerce")
    for c in df.columns:
        if c.startswith("accuracy") or c.endswith(("_ms", "_p90", "_mb", "_tok_s", "flops")) or c in (
                "retention", "retention_input", "budget_gap", "visual_tokens_in", "visual_tokens_out",
                "visual_tokens_layer_avg"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if "visual_tokens_out" in df.columns:  # what the LLM sees: layer-averaged where the record has it (in-LLM methods)
        avg = df["visual_tokens_layer_avg"] if "visual_tokens_layer_avg" in df.columns else df["visual_tokens_out"]
        df["_visual_tokens"] = avg.fillna(df["visual_tokens_out"])
    if "method_hparams" in df.columns:  # "name: tango; alpha: 0.5" -> hp/name, hp/alpha
        hp = df["method_hparams"].apply(_parse_hparams)
        for k in sorted({k for d in hp for k in d}):
            df[f"hp/{k}"] = hp.apply(lambda d, k=k: d.get(k))
    return df


def _variants(df: pd.DataFrame) -> pd.Series:
    """The recorded ``variant`` ('' = a standard run). Records written before the field existed get ``{"suffix":
    <run-key suffix>}`` when their run key is longer than the standard key, so an old ablation run never fills a
    Table 1 cell."""
    recorded = df["variant"] if "variant" in df.columns else pd.Series(np.nan, index=df.index)
    out = []
    for v, r in zip(recorded, df.to_dict("records")):
        if isinstance(v, str):
            out.append(v)
            continue
        key = r.get("run_key")
        try:
            base = f"{r['model']}__{r['method']}__b{float(r['budget']):g}__{r['task']}__s{int(r['seed'])}"
        except (TypeError, ValueError):
            base = None
        if not _is_missing(r.get("limit")) and base:
            base += f"__limit{int(r['limit'])}"
        legacy = isinstance(key, str) and base is not None and key.startswith(base) and key != base
        out.append(json.dumps({"suffix": key[len(base):]}) if legacy else "")
    return pd.Series(out, index=df.index, dtype=object)


def variant_fields(variant: str) -> dict:
    """A recorded variant string -> {label: value}."""
    return json.loads(variant) if isinstance(variant, str) and variant else {}


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



# ----------------------------------------------------------------------------------------------- per-question data
def question_scores(ok: pd.DataFrame) -> pd.DataFrame:
    """Per-question scores of the ok runs that have a ``samples.jsonl`` beside their ``record.json``.

    Returns long rows (``_row`` = index of the run in ``ok``, ``unit`` = ``<question_set>#<doc_id>``, ``stratum`` =
    question_set, ``score`` in [0, 1] = the task metric of that document). Runs read from CSVs have no samples and
    contribute no rows (their cells get no CI)."""
    parts = []
    for i, r in ok.iterrows():
        src = r.get("_source")
        samples = Path(src).with_name("samples.jsonl") if isinstance(src, str) and src.endswith("record.json") \
            else None
        if samples is None or not samples.exists():
            continue
        s = pd.read_json(samples, lines=True)
        metric = r.get("metric") if isinstance(r.get("metric"), str) else "acc"
        if s.empty or metric not in s.columns:
            continue
        qset = r.get("question_set")
        qset = qset if isinstance(qset, str) else str(r.get("lmms_task", r["task"]))
        parts.append(pd.DataFrame({"_row": i, "unit": qset + "#" + s["doc_id"].astype(str), "stratum": qset,
                                   "score": pd.to_numeric(s[metric], errors="coerce").fillna(0.0).astype(float)}))
    if not parts:
        return pd.DataFrame(columns=["_row", "unit", "stratum", "score"])
    return pd.concat(parts, ignore_index=True)


def _pct(b) -> str:
    return MISSING_MD if _is_missing(b) else f"{100 * b:g}%"


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


def question_types(ok: pd.DataFrame) -> list[str]:
    """The ``accuracy/<type>`` columns with values, sorted."""
    return sorted(c for c in ok.columns if c.startswith("accuracy/") and ok[c].notna().any())


def default_efficiency_task(ok: pd.DataFrame) -> str | None:
    for t in BENCHMARKS + SYNTHETIC:
        if (ok["task"] == t).any():
            return t
    return ok["task"].iloc[0] if len(ok) else None


def frames_task(ok: pd.DataFrame, task: str | None = None) -> str | None:
    """``task`` if given, else the first task (benchmarks first) with runs at ≥ 2 frame counts."""
    if task:
        return task
    ok = ok[ok["num_frames"] >= 0]
    for t in _order(ok["task"], BENCHMARKS + SYNTHETIC):
        if ok.loc[ok["task"] == t, "num_frames"].nunique() >= 2:
            return t
    return None
