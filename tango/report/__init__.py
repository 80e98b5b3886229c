"""The paper's tables and plots, built from run records (never from W&B, never by re-running anything).

Modules: :mod:`~tango.report.load` (records -> one cleaned frame; per-question scores), :mod:`~tango.report.tables`
(every table, :func:`build_tables`), :mod:`~tango.report.render` (cells, Markdown / LaTeX, writing, W&B),
:mod:`~tango.report.plots`, :mod:`~tango.report.compare` (published numbers), :mod:`~tango.report.stats` (bootstrap
CIs, McNemar, sign-flip). ``scripts/make_tables.py`` is the command line.

Inputs
------
* ``<results>/runs/*/record.json`` (finished runs, with ``samples.jsonl`` beside them for CIs and paired tests) and
  ``<results>/runs/*/failed.json`` (failed runs) under one or more results folders, and/or merged CSVs in the
  ``results/results.csv`` format (one flat record per row, a ``status`` column; ``failed`` rows count as failures;
  no per-question scores, so no CIs).
* Every column is optional: a value a record lacks is shown as missing (``–`` in Markdown, ``--`` in LaTeX), never
  as zero. Field meanings: :mod:`tango.glossary`.

Cleaning rules
--------------
* Identity of a run: (model, method, budget, task, seed, num_frames, variant); ``method=none`` always has budget 1.
  ``experiment`` and ``variant`` are what the run recorded (an experiment config's name, and what it sweeps beyond
  the standard axes as JSON ``{label: value}``); a standard run has an empty variant. Only standard runs fill the
  main, efficiency, synthetic, budget-matched, significance and compare tables, so an ablation run never replaces a
  Table 1 cell. Records older than the ``variant`` field: a run key longer than the standard
  ``<model>__<method>__b<budget>__<task>__s<seed>[__limit<n>]`` makes the variant ``{"suffix": <the rest>}``.
* Duplicates (a record folder and a CSV row of the same run, two CSV rows, two results folders) are collapsed
  deterministically: the row with the latest ``date`` wins (ties: the later input wins).
* Failed runs never contribute values. A cell whose runs all failed shows ``–†`` with a footnote naming the run
  and its error; the number of failed runs is reported under every table.
* Runs with ``limit`` set are partial smoke evaluations and are excluded unless ``include_limited=True``.
* Seeds are aggregated as mean ± std (sample std, shown only with ≥ 2 seeds); with ``ci=True`` as mean and 95 % CI.
* Main, efficiency and synthetic tables use, per model, one frame count: ``num_frames`` if given, else the frame
  count with the most runs (ties: the larger). The frame-scaling table uses all of them.

Tables (each written as ``<name>.md`` and ``<name>.tex``, booktabs)
------------------------------------------------------------------
* ``main``: rows = model › method × retention ratio (full-token row first, then retention ratios from high to low,
  the pruning methods in registry order inside each ratio); columns = VideoMME, MLVU, LongVideoBench, MVBench, Avg
  (mean of the four, only when all four exist), "% Full" = Avg / Avg of the full-token model × 100, and "Kept
  (realised)" = the recorded ``retention`` (what the LLM saw, layer-averaged) in %, so a method that cannot hit the
  ratio shows it in its row. The best value of each column within one model and retention ratio is bold.
* Regimes: a cell whose runs recorded a ``method/regime`` listed in the method class's ``nonstandard_regimes`` (e.g.
  DyCoke's ``ttm_cap`` below its floor) gets ``‡`` after the method name and a footnote naming the regime, how many
  of its runs used it, and what it does. Applies to ``main``, ``synthetic`` and ``efficiency``.
* ``synthetic`` (and ``synthetic_pruning``): the offline synthetic task: overall accuracy, one column per question
  type (``accuracy/<type>``), % Full, realised retention; bold as in ``main``.
* ``efficiency``: on one task (``efficiency_task``; default the first of VideoMME, MLVU, LongVideoBench, MVBench,
  synthetic that has runs): visual tokens kept, TTFT median and its split (vision / pruning / LLM prefill),
  speedup = TTFT(full tokens) / TTFT, prefill TFLOPs (exact count: ``tflops_prefill``, or older records'
  ``prefill_tflops`` / ``prefill_flops`` / 1e12 / ``prefill_gflops`` / 1e3), the LLM prefill in the papers'
  convention (``tflops_llm_paper``, FastV's formula as multiply-adds), peak GPU memory, peak RSS, decode tok/s,
  device.
* ``budget_matched``: methods at equal *realised* retention: rows = model › task › target (default: the budgets
  asked for), one column per method = its accuracy linearly interpolated along its own curve (seed means of
  realised retention -> accuracy); ``–`` outside the range the method realised (never extrapolated).
* ``significance``: for every (model, task, budget), each method against full tokens and against each other method
  at that budget, on the questions both answered: Δ accuracy, 95 % paired bootstrap CI, p-value (exact McNemar for
  0/1 scores, sign-flip permutation for seed-averaged scores), test, number of questions. The resampling unit is
  the question (``question_set`` + ``doc_id``): seeds over the same questions are averaged per question first,
  seeds that generate different questions (synthetic data) contribute different questions, and the bootstrap is
  stratified by question set. Seed-to-seed variation of a model on the same question is therefore not resampled.
* ``frames``: TTFT (ms) and accuracy per number of frames (written when runs exist at ≥ 2 frame counts); it joins
  the standard runs with the runs of the ``frames`` experiment (a standard run and its frames twin are one cell).
* ``<experiment>``: every other recorded ``experiment`` whose runs have a variant gets one table: one row per
  variant (its labels as columns), one accuracy column per task, TTFT.
* ``ablation``: with ``ablation_by=<column>`` (any record column, or ``hp/<name>`` for a field of the
  ``method_hparams`` string): one row per value, one column per task (written only when asked).
* ``compare``: side by side with reference sets (see below), with the difference (this harness − reference).

Plots (PNG): ``accuracy_vs_retention`` (accuracy vs. realised retention, each method's Pareto frontier),
``accuracy_vs_cost`` (accuracy vs. TTFT and vs. LLM prefill FLOPs, Pareto frontiers), ``ttft_breakdown``,
``latency_vs_frames``, ``accuracy_by_type_<task>`` (synthetic tasks, vs. the budget asked for).

Reference / paper-number CSV (``--compare``)
--------------------------------------------
A long CSV, one number per row; lines starting with ``#`` are comments; ``# source: <text>`` sets the default
source::

    # source: Tango, arXiv 2604.09547, abstract
    model,method,budget,task,metric,value,source,note
    llava_ov,tango,0.1,avg,pct_full,98.9,"arXiv 2604.09547 abstract",
    llava_ov,tango,0.1,avg,speedup,1.88,"arXiv 2604.09547 abstract","quantity not stated (TTFT?)"

* model / method / task: harness keys or the registries' display names (``VisionZip``), matched through the
  registries; task ``avg`` for the four-benchmark average. Names the registries do not know stay as written and
  are flagged "not in the harness".
* budget: retention ratio in (0, 1]; 1 for ``none``.
* metric: ``accuracy`` (0-100), ``pct_full`` (% of the full-token model), ``speedup`` (TTFT ratio vs. full),
  ``prefill_tflops`` (exact count), ``prefill_tflops_fastv_convention`` (the papers' multiply-add count), or any
  record column (``ttft_ms``, ``vision_ms``, ``pruning_ms``, ``llm_prefill_ms``, ``decode_tok_s``, ``peak_mem_mb``,
  ``visual_tokens_out``…) in the record's unit.
* A CSV without ``metric``/``value`` columns is read as another harness results CSV (record rows) and compared
  metric by metric.
See ``results/tables/references/`` (HoliTom's LLaVA-OV-7B table, the VidCom² codebase's Qwen3-VL-8B table) and
``results/tables/paper_reference_example.csv``.
"""

from tango.report.compare import (canonical_method, compare_table, long_metrics, read_reference,
                                  read_references)
from tango.report.load import (BENCHMARKS, KEY, METHOD_COLORS, METHOD_NAMES, METHOD_ORDER, MODEL_NAMES, MODEL_ORDER,
                               SYNTHETIC, TASK_NAMES, load_runs, method_color, method_name, model_name, normalize,
                               pick_frames, question_scores, question_types, select, split_ok_failed, task_name)
from tango.report.plots import (pareto_front, plot_accuracy_by_type, plot_accuracy_vs_cost, plot_accuracy_vs_retention,
                                plot_latency_vs_frames, plot_ttft_breakdown)
from tango.report.render import Cell, Stat, Table, cell_stat, latex_escape, log_wandb, num_cell, stat, write_outputs
from tango.report.tables import (Questions, ablation_table, budget_matched_table, build_tables, efficiency_table,
                                 experiment_tables, frames_table, interpolate, main_table, regime_note,
                                 serving_table, significance_table, synthetic_table)

__all__ = [
                               "BENCHMARKS",
                               "KEY",
                               "METHOD_COLORS",
                               "METHOD_NAMES",
                               "METHOD_ORDER",
                               "MODEL_NAMES",
                               "MODEL_ORDER",
                               "SYNTHETIC",
                               "TASK_NAMES",
                               "Cell",
                               "Questions",
                               "Stat",
                               "Table",
                               "ablation_table",
                               "budget_matched_table",
                               "build_tables",
                               "canonical_method",
                               "cell_stat",
                               "compare_table",
                               "efficiency_table",
                               "experiment_tables",
                               "frames_table",
                               "interpolate",
                               "latex_escape",
                               "load_runs",
                               "log_wandb",
                               "long_metrics",
                               "main_table",
                               "method_color",
                               "method_name",
                               "model_name",
                               "normalize",
                               "num_cell",
                               "pareto_front",
                               "pick_frames",
                               "plot_accuracy_by_type",
                               "plot_accuracy_vs_cost",
                               "plot_accuracy_vs_retention",
                               "plot_latency_vs_frames",
                               "plot_ttft_breakdown",
                               "question_scores",
                               "question_types",
                               "read_reference",
                               "read_references",
                               "regime_note",
                               "select",
                               "serving_table",
                               "significance_table",
                               "split_ok_failed",
                               "stat",
                               "synthetic_table",
                               "task_name",
                               "write_outputs",
]
