"""Plots (PNG) from cleaned records: accuracy vs. realised retention and vs. cost with each method's Pareto
frontier, accuracy per question type, TTFT split, latency vs. frames. One colour and marker per method everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tango.report.load import (BENCHMARKS, METHOD_ORDER, MODEL_ORDER, SYNTHETIC, _order, _pct, _row_blocks,
                               default_efficiency_task, frames_task, method_color, method_marker, method_name,
                               model_name, question_types, task_name)


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


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal cost ``x`` with higher or equal accuracy ``y``,
    one of them strictly), in increasing ``x``. x, y: [n]."""
    order = np.lexsort((-y, x))  # by cost, then best accuracy first
    best, keep = -np.inf, []
    for i in order:  # n = a method's budgets: a handful of points
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return np.array(keep, dtype=int)


def _cell_means(ok: pd.DataFrame, x: str) -> pd.DataFrame:
    """Seed means of ``x`` and accuracy per (method, budget), rows without either dropped."""
    return ok.groupby(["method", "budget"])[[x, "accuracy"]].mean().dropna().reset_index()


def _pareto_panel(ax, g: pd.DataFrame, x: str, scale: float = 1.0) -> None:
    """Each method's runs as points (seed means per budget) and its Pareto frontier as a line; full tokens as a
    star."""
    pts = _cell_means(g, x)
    for method in _order(pts["method"], METHOD_ORDER):
        p = pts[pts["method"] == method]
        xs, ys = scale * p[x].to_numpy(float), p["accuracy"].to_numpy(float)
        color = method_color(method)
        if method == "none":
            ax.scatter(xs, ys, marker="*", s=120, color=color, zorder=3, label=method_name(method))
            continue
        front = pareto_front(xs, ys)
        ax.scatter(xs, ys, marker=method_marker(method), s=28, color=color, alpha=0.55, zorder=2)
        ax.plot(xs[front], ys[front], marker=method_marker(method), ms=6, lw=1.6, color=color, zorder=3,
                label=method_name(method))


def plot_accuracy_vs_retention(ok: pd.DataFrame, path: str | Path, tasks: Sequence[str] | None = None) -> Path | None:
    """One panel per (model, task): accuracy vs. *realised* retention (what the LLM saw, layer-averaged), each
    method's budgets as points and its Pareto frontier as a line; full tokens as a star at 100 %."""
    tasks = list(tasks or _order(ok["task"], BENCHMARKS + SYNTHETIC))
    ok = ok[ok["task"].isin(tasks)]
    if ok.empty or "accuracy" not in ok.columns or "retention" not in ok.columns or ok["retention"].isna().all():
        return None
    plt = _plt()
    has = ok["accuracy"].notna() & ok["retention"].notna()
    panels = [(m, t) for m in _order(ok["model"], MODEL_ORDER) for t in tasks
              if ((ok["model"] == m) & (ok["task"] == t) & has).any()]
    if not panels:
        return None
    fig, axes = _panel_grid(plt, len(panels), min(4, len(panels)), 4.2, 3.4)
    for ax, (model, task) in zip(axes.flat, panels):
        g = ok[(ok["model"] == model) & (ok["task"] == task)]
        _pareto_panel(ax, g, "retention", scale=100.0)
        ax.set_title(f"{model_name(model)}\n{task_name(task)}", fontsize=8)
        ax.set_xlabel("realised retention (% of visual tokens, layer-averaged)", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy vs. realised retention (points: budgets, seed means; lines: each method's Pareto "
                 "frontier)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _flops_column(ok: pd.DataFrame) -> tuple[str | None, str]:
    for col, label in (("tflops_llm_paper", "LLM prefill (T multiply-adds, FastV convention)"),
                       ("tflops_prefill", "prefill TFLOPs (exact)")):
        if col in ok.columns and ok[col].notna().any():
            return col, label
    return None, ""


def plot_accuracy_vs_cost(ok: pd.DataFrame, path: str | Path, tasks: Sequence[str] | None = None) -> Path | None:
    """Per (model, task) two panels: accuracy vs. TTFT (median, ms) and accuracy vs. LLM prefill FLOPs, each
    method's budgets as points and its Pareto frontier (lower cost, higher accuracy) as a line."""
    tasks = list(tasks or _order(ok["task"], BENCHMARKS + SYNTHETIC))
    ok = ok[ok["task"].isin(tasks)]
    flops, flops_label = _flops_column(ok)
    costs = [(c, lab) for c, lab in (("ttft_ms", "time to first token (ms, median)"), (flops, flops_label))
             if c is not None and c in ok.columns and ok[c].notna().any()]
    if ok.empty or "accuracy" not in ok.columns or not costs:
        return None
    plt = _plt()
    panels = [(m, t, c) for m in _order(ok["model"], MODEL_ORDER) for t in tasks for c in costs
              if ((ok["model"] == m) & (ok["task"] == t) & ok["accuracy"].notna() & ok[c[0]].notna()).any()]
    if not panels:
        return None
    fig, axes = _panel_grid(plt, len(panels), len(costs) * min(2, max(1, len(panels) // len(costs))), 4.2, 3.4)
    for ax, (model, task, (col, label)) in zip(axes.flat, panels):
        g = ok[(ok["model"] == model) & (ok["task"] == task)]
        _pareto_panel(ax, g, col)
        dev = ", ".join(sorted(set(g["device_name"].dropna().astype(str)))) if (
            col == "ttft_ms" and "device_name" in g) else ""
        ax.set_title(f"{model_name(model)}\n{task_name(task)}", fontsize=8)
        ax.set_xlabel(label + (f", {dev}" if dev else ""), fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy vs. cost (points: budgets, seed means; lines: each method's Pareto frontier)", fontsize=9)
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

