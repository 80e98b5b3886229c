"""The table model (cells, Markdown / LaTeX booktabs rendering), seed aggregates, and writing the outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tango.glossary import rows
from tango.report import plots as P
from tango.report.load import FAILED_MARK, MISSING_MD, MISSING_TEX, SYNTHETIC, _is_missing


@dataclass
class Stat:
    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0
    failed: list[str] = field(default_factory=list)  # run keys + errors when no value exists because runs failed
    ci: tuple[float, float] | None = None  # 95 % paired-bootstrap interval over questions, when asked for

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
    if s.ci is not None:
        lo, hi = (f"{x:.{digits}f}" for x in s.ci)
        return Cell(f"{m} [{lo}, {hi}]{suffix}", f"{m} [{lo}, {hi}]{latex_escape(suffix)}")
    if s.n > 1 and not math.isnan(s.std):
        sd = f"{s.std:.{digits}f}"
        return Cell(f"{m} ± {sd}{suffix}", f"{m} $\\pm$ {sd}{latex_escape(suffix)}")
    return Cell(m + suffix, latex_escape(m + suffix))


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters in a text cell (``\\ & % $ # _ { } ~ ^``); the few non-ASCII symbols the
    tables use become LaTeX commands and any other non-ASCII character becomes '?', so the output is pure ASCII."""
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "—": "---",
           "−": "$-$", "×": r"$\times$", "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}", "›": ">",
           "Δ": r"$\Delta$", "≥": r"$\geq$", "≤": r"$\leq$", "→": r"$\rightarrow$", "µ": r"$\mu$", "§": r"\S{}"}
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


def _footnotes(failed_cells: list[str], n_failed: int, n_ok: int, n_seeds_max: int, ci: bool = False) -> list[str]:
    notes = []
    if ci:
        notes.append("[a, b] = 95 % paired-bootstrap CI over questions (tango/report/stats.py); values without one had "
                     "no samples.jsonl.")
    if n_seeds_max > 1:
        notes.append("Values are mean ± std over seeds" + (" where no CI is shown." if ci else "."))
    notes.append(f"{n_ok} run(s) used; {n_failed} failed run(s) excluded; – = no run.")
    for f in dict.fromkeys(failed_cells):
        notes.append(f"{FAILED_MARK} failed: {f}")
    return notes



# ---------------------------------------------------------------------------------------------------------- outputs
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
        for p in (P.plot_accuracy_vs_retention(plot_data["ok"], out / "accuracy_vs_retention.png", tasks),
                  P.plot_accuracy_vs_cost(plot_data["ok"], out / "accuracy_vs_cost.png", tasks),
                  P.plot_ttft_breakdown(plot_data["ok"], out / "ttft_breakdown.png", efficiency_task),
                  P.plot_latency_vs_frames(plot_data["frames"], out / "latency_vs_frames.png", efficiency_task)):
            if p is not None:
                written.append(p)
        for task in SYNTHETIC:
            p = P.plot_accuracy_by_type(plot_data["ok"], out / f"accuracy_by_type_{task}.png", task)
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
    payload = {"glossary": wandb.Table(columns=["field", "unit", "meaning"], data=[list(r) for r in rows()])}
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
