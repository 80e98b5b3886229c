"""One run: (model, method, budget, task, seed) -> run directory with record.json, samples.jsonl, config.yaml,
plus a CSV row and a W&B run.

Reads top to bottom: validate -> skip if done (same configuration only) -> seed -> task data and its checks ->
adapter + method -> lmms-eval -> samples -> sinks (CSV, W&B) -> record.json last. A finished run is skipped unless
``force=true``; a failed run leaves a ``failed`` row in the CSV and ``failed.json`` but no record, so the next call
retries it (``fail_fast=false`` returns instead of raising, so a sweep goes on; an invalid configuration included).
"""

from __future__ import annotations

import json
import platform
import random
import resource
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from tango.config import ConfigError, config_hash, effective_budget, identity, identity_diff, validate, variant_label
from tango.environment import lock_status
from tango.loggers import CsvSink, build_sinks
from tango.models.base import Preprocessing
from tango.records import CONFIG, FAILED, RECORD, SAMPLES, atomic_write, read_record, summarize, write_json, write_jsonl

WARMUP_REQUESTS = 1  # the first request pays one-off costs (allocator, kernels); excluded from latency medians
# The attention source is read inside the vision tower's forward: its time is part of vision_ms.
LATENCY_KEYS = ("vision_ms", "pruning_ms", "llm_prefill_ms", "ttft_ms", "decode_tok_s",
                "achieved_tflop_s")
# analytical, mean per request: exact FLOPs, and the LLM in the papers' convention (MACs, tango/flops.py)
FLOPS_KEYS = ("tflops_vision", "tflops_projector", "tflops_llm", "tflops_prefill", "tflops_llm_paper")


def run(cfg: DictConfig) -> float | None:
    """Run one configuration; return its accuracy (0-100) for sweepers."""
    run_dir = Path(cfg.paths.results_dir) / "runs" / cfg.run_key
    try:
        validate(cfg)
    except ConfigError as e:
        if cfg.fail_fast or cfg.dry_run:
            raise
        # A sweep goes on: the invalid cell is a failed row (visible in tables), retried once its config is fixed.
        print(f"[tango] {cfg.run_key}: FAILED, invalid configuration: {e}", file=sys.stderr, flush=True)
        done = read_record(run_dir)
        if done is not None and done.get("status") == "ok":  # never touch a finished run's folder or row
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        _record_failure(cfg, run_dir, _cell(cfg, cfg.method.name, effective_budget(cfg)), e, build_sinks(cfg.logger))
        return None
    budget = effective_budget(cfg)
    method = OmegaConf.to_object(cfg.method)
    if cfg.dry_run:
        return _print_plan(cfg, method, budget, run_dir)
    # The same cell submitted twice at once (e.g. `none` at several budgets in one job array) runs once.
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".running.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[tango] {cfg.run_key}: running in another process; skipped", flush=True)
        return None
    try:
        return _run_locked(cfg, method, budget, run_dir)
    finally:
        lock.release()


def _finished(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The finished record of this exact configuration, None if there is none to reuse; raises if the run folder
    holds a finished run of another configuration (a run key names a cell, the whole config is its identity)."""
    done = read_record(run_dir)
    if done is None or done.get("status") != "ok" or cfg.force:
        return None
    finished_cfg = run_dir / CONFIG
    if not finished_cfg.exists():
        raise ConfigError(f"{run_dir} holds a finished run without its {CONFIG}, so it cannot be matched to this "
                          f"configuration; pass force=true to replace it")
    diff = identity_diff(identity(OmegaConf.to_container(OmegaConf.load(finished_cfg))), identity(cfg))
    if diff:
        raise ConfigError(
            f"{run_dir} holds a finished run of another configuration ({'; '.join(diff)}). Give this configuration "
            f"its own run key (e.g. 'run_key=${{run_key:}}__mine') or pass force=true to replace the finished run")
    return done


def _run_locked(cfg: DictConfig, method, budget: float, run_dir: Path) -> float | None:
    done = _finished(cfg, run_dir)
    if done is not None:
        print(f"[tango] {cfg.run_key}: already done ({run_dir / RECORD}); pass force=true to re-run")
        return done.get("accuracy")
    (run_dir / RECORD).unlink(missing_ok=True)  # force=true, or a record that is not ok: no longer done
    sinks = build_sinks(cfg.logger)
    config = OmegaConf.to_container(cfg, resolve=True)
    atomic_write(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    t0 = time.time()
    try:
        record, samples = _evaluate(cfg, method, budget)
        record["wall_s"] = time.time() - t0
        write_jsonl(run_dir / SAMPLES, samples)
        # One commit: every sink takes the result, then record.json marks the run done. A sink that fails leaves
        # the run not done, so the next call redoes it whole (and replaces whatever the sinks had half-written).
        for sink in sinks:
            sink.log(record, samples, config, run_dir)
    except Exception as e:
        failed = _record_failure(cfg, run_dir, _identity(cfg, method, budget), e, sinks, wall_s=time.time() - t0)
        if cfg.fail_fast:
            raise
        traceback.print_exc()
        print(f"[tango] {cfg.run_key}: FAILED ({failed['error']}); recorded in {run_dir / FAILED}", flush=True)
        return None
    write_json(run_dir / RECORD, record)
    (run_dir / FAILED).unlink(missing_ok=True)
    _print_summary(record, samples, run_dir, cfg)
    return record["accuracy"]


def _record_failure(cfg: DictConfig, run_dir: Path, identity_: dict, error: Exception, sinks: list,
                    wall_s: float | None = None) -> dict:
    """``failed.json`` and a ``failed`` CSV row; no record.json, so the next call retries the cell."""
    failed = {**identity_, "status": "failed", "error": f"{type(error).__name__}: {error}", "wall_s": wall_s}
    write_json(run_dir / FAILED, failed)
    for sink in sinks:
        if isinstance(sink, CsvSink):
            try:
                sink.log(failed, [], OmegaConf.to_container(cfg, resolve=True), run_dir)
            except Exception as csv_error:  # the CSV may be what failed; failed.json holds the error
                print(f"[tango] could not write the failed row to {sink.path}: {csv_error}", file=sys.stderr)
    return failed


def _evaluate(cfg: DictConfig, method, budget: float) -> tuple[dict, list[dict]]:
    from lmms_eval.evaluator import simple_evaluate

    from tango.api import build_lm, task_manager
    from tango.eval import check_docs
    from tango.models.base import resolve_device

    _seed_everything(cfg.seed)
    task = cfg.task
    if task.synthetic is not None:
        from tango.data.synthetic import ensure_synthetic_task

        ensure_synthetic_task(task.include_path, task_name=task.lmms_task, **OmegaConf.to_container(task.synthetic))
    if task.data_root is not None:
        from tango.tasks import write_local_tasks

        write_local_tasks(task.data_root, task.include_path, [task.lmms_task])
    tm = task_manager(cfg)
    check_docs([task.lmms_task], tm, cfg.limit)
    device = resolve_device(cfg.device)
    lm = build_lm(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = simple_evaluate(model=lm, tasks=[task.lmms_task], task_manager=tm, limit=cfg.limit,
                              bootstrap_iters=0, log_samples=True, random_seed=cfg.seed,
                              numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed)
    accuracy, raw = _accuracy(results, task)

    samples = []
    for task_name, task_samples in results["samples"].items():
        for s in task_samples:
            doc = s.get("doc", {})
            samples.append({
                "task": task_name, "doc_id": s["doc_id"], "target": s.get("target"),
                "response": (s.get("filtered_resps") or [None])[0],
                task.metric: s.get(task.metric),
                **{k: doc[k] for k in ("question_type", "duration", "task_type") if k in doc},
                **lm.request_stats.get((task_name, s["doc_id"]), {}),
            })
    samples.sort(key=lambda r: r.get("order", 0))
    errors = [s for s in samples if s.get("error")]
    if samples and len(errors) == len(samples):  # nothing was evaluated: a failed run, retried by the next call
        raise RuntimeError(f"all {len(samples)} samples failed; the first, doc {errors[0]['doc_id']}: "
                           f"{errors[0]['error']}")

    record = {**_identity(cfg, method, budget), "status": "ok", "error": None,
              "accuracy": accuracy, "metric": task.metric, "metric_raw": raw, "n_samples": len(samples),
              "n_sample_errors": len(errors), "n_short_videos": sum(1 for s in samples if s.get("short_video"))}
    record.update(_per_type_accuracy(samples, task.metric, task.metric_scale))
    ok = [s for s in samples if "tokens_in" in s]
    tin, tout, tavg = ([s[k] for s in ok] for k in ("tokens_in", "tokens_out", "tokens_layer_avg"))
    record["visual_tokens_in"] = float(np.mean(tin)) if ok else None
    record["visual_tokens_out"] = float(np.mean(tout)) if ok else None  # entering the LLM
    record["visual_tokens_layer_avg"] = float(np.mean(tavg)) if ok else None  # averaged over decoder layers
    # The realized budget (layer-averaged, as `budget` is defined) and the fraction entering the LLM.
    record["retention"] = float(np.sum(tavg) / np.sum(tin)) if ok and np.sum(tin) else None
    record["retention_input"] = float(np.sum(tout) / np.sum(tin)) if ok and np.sum(tin) else None
    # Realised minus requested, in percentage points: a method that cannot hit the budget shows it in every row.
    record["budget_gap"] = 100 * (record["retention"] - budget) if record["retention"] is not None else None
    for k in LATENCY_KEYS:
        record.update(summarize([s.get(k) for s in samples], k, warmup=WARMUP_REQUESTS))
    for k in FLOPS_KEYS:
        vals = [s[k] for s in samples if s.get(k) is not None]
        record[k] = float(np.mean(vals)) if vals else None
    record.update(_method_choices(ok))
    record["latency_warmup_requests"] = WARMUP_REQUESTS
    if device.type == "cuda":
        record["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    return record, samples


def _accuracy(results: dict, task) -> tuple[float | None, float | None]:
    """The task's metric on 0-100; a group without its own score (MVBench) is the mean of its subtasks."""
    key = f"{task.metric},none"
    res = results["results"]
    if key in res.get(task.lmms_task, {}):
        raw = float(res[task.lmms_task][key])
    else:
        subs = [res[t][key] for t in results.get("group_subtasks", {}).get(task.lmms_task, []) if key in res.get(t, {})]
        if not subs:
            raise KeyError(f"metric {key!r} not found for task {task.lmms_task!r}; available: "
                           f"{ {t: sorted(v) for t, v in res.items()} }")
        raw = float(np.mean(subs))
    return raw * task.metric_scale, raw


def _method_choices(samples: list[dict]) -> dict:
    """The method's per-sample choices (``method/*``: Tango's ``segment_tau``, DyCoke's ``regime``, ...) in the
    record, so a default that changes results shows in the row: the value when every sample agrees, else the mean
    (numbers) or the sorted distinct values joined by ``|``."""
    out = {}
    for key in sorted({k for s in samples for k in s if k.startswith("method/")}):
        vals = [s[key] for s in samples if s.get(key) is not None]
        if not vals:
            continue
        if all(v == vals[0] for v in vals):
            out[key] = vals[0]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = float(np.mean(vals))
        else:
            out[key] = "|".join(sorted({str(v) for v in vals}))
    return out


def _per_type_accuracy(samples: list[dict], metric: str, scale: float) -> dict:
    types = sorted({s["question_type"] for s in samples if "question_type" in s})
    out = {}
    for t in types:
        vals = [float(s[metric]) for s in samples if s.get("question_type") == t and s.get(metric) is not None]
        out[f"accuracy/{t}"] = float(np.mean(vals)) * scale if vals else None
    return out


def _cell(cfg: DictConfig, method_name: str, budget: float) -> dict:
    """What names the cell in tables (valid even for a config that failed validation)."""
    m = cfg.model
    return {"run_key": cfg.run_key, "model": m.name, "model_family": m.family, "pretrained": m.pretrained,
            "method": method_name, "budget": budget, "budget_requested": float(cfg.budget), "task": cfg.task.name,
            "lmms_task": cfg.task.lmms_task, "question_set": _question_set(cfg.task), "seed": cfg.seed,
            "limit": cfg.limit, "experiment": cfg.get("experiment"), "variant": variant_label(cfg.get("variant")),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _question_set(task) -> str:
    """Which questions a run answered, for pairing runs question by question: the lmms-eval task, and for a task
    generated from a data source (synthetic parameters, a local data root) the digest that names that source."""
    generated = task.get("synthetic") is not None or task.get("data_root") is not None
    return f"{task.lmms_task}@{Path(task.include_path).name}" if generated and task.include_path else task.lmms_task


def _identity(cfg: DictConfig, method, budget: float) -> dict:
    m = cfg.model
    return {
        **_cell(cfg, method.name, budget),
        "num_frames": m.num_frames, "fps": m.fps, "dtype": m.dtype, "attn_implementation": m.attn_implementation,
        "video_backend": m.video_backend, "frame_sampling": m.frame_sampling, "prompt_variant": m.prompt_variant,
        **{f.name: m[f.name] for f in fields(Preprocessing)},
        "method_hparams": _hparams(cfg), "config_hash": config_hash(cfg),
        **_versions(cfg.paths.root_dir),
    }


def _hparams(cfg: DictConfig) -> str:
    """The method's hyperparameters as one JSON line (a CSV cell)."""
    return json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True)


def _versions(root: str) -> dict:
    def git(*args):
        try:
            p = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return p.stdout.strip() if p.returncode == 0 else ""
    return {"git_sha": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain", "-uno")),
            **lock_status()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _print_plan(cfg: DictConfig, method, budget: float, run_dir: Path) -> None:
    m, t = cfg.model, cfg.task
    frames = f"{m.num_frames} uniform" if m.fps is None else f"{m.fps:g} fps, at most {m.num_frames}"
    print(f"[tango] dry run: {cfg.run_key}\n"
          f"  model           {m.name} ({m.family}) from {m.pretrained}{' [tiny, built offline]' if m.tiny else ''}\n"
          f"                  {m.dtype}, attn {m.attn_implementation}, device {cfg.device}\n"
          f"  frames          {frames}, decoded with {m.video_backend}\n"
          f"  method          {method.name} at budget {budget:g}\n                  {_hparams(cfg)}\n"
          f"  lmms-eval task  {t.lmms_task} (metric {t.metric} x {t.metric_scale:g}, prompt variant "
          f"{m.prompt_variant}){' from ' + t.include_path if t.include_path else ''}\n"
          f"  limit           {cfg.limit}\n"
          f"  run dir         {run_dir}\n"
          + (f"  csv             {cfg.logger.csv.path}\n" if cfg.logger.get("csv") is not None else "")
          + (f"  wandb           {cfg.logger.wandb.mode}\n" if cfg.logger.get("wandb") is not None else ""),
          flush=True)


def _error_summary(samples: list[dict]) -> str:
    """``none``, or ``3 of 40 scored wrong: 2 VideoDecodeError, 1 SampleError (samples.jsonl: "error")``."""
    errors = [s["error"] for s in samples if s.get("error")]
    if not errors:
        return "none"
    kinds = Counter(e.split(":", 1)[0] for e in errors)
    return (f"{len(errors)} of {len(samples)} scored wrong: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            + ' (samples.jsonl: "error")')


def _published_line(record: dict, cfg: DictConfig) -> str:
    """For a full-token run, the published full-token numbers of this checkpoint and benchmark (the reference CSVs in
    ``results/tables/references/``), so a baseline out of the expected range shows at once."""
    if record.get("method") != "none":
        return ""
    from tango.report.compare import full_token_references

    refs = full_token_references(cfg.model.name, cfg.task.name)
    return "".join(f"  published       {v:.1f} full tokens ({src})\n" for v, src in refs)


def _print_summary(record: dict, samples: list[dict], run_dir: Path, cfg: DictConfig) -> None:
    def f(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)
    print(f"[tango] {record['run_key']}\n"
          f"  accuracy        {f(record['accuracy'])} ({record['metric']}, n={record['n_samples']})\n"
          + _published_line(record, cfg)
          + f"  visual tokens   {f(record['visual_tokens_out'])} / {f(record['visual_tokens_in'])} at the LLM input, "
          f"{f(record['visual_tokens_layer_avg'])} averaged over layers (retention {f(record['retention'], '.3f')})\n"
          + (f"  WARNING         realised retention {100 * record['retention']:.1f} % is "
             f"{record['budget_gap']:+.1f} points off the budget {100 * record['budget']:g} %\n"
             if record.get("budget_gap") is not None and abs(record["budget_gap"]) > 1 else "")
          + f"  ttft median     {f(record['ttft_ms'])} ms  (vision {f(record['vision_ms'])}, pruning "
          f"{f(record['pruning_ms'])}, LLM prefill {f(record['llm_prefill_ms'])})\n"
          f"  prefill FLOPs   {f(record['tflops_prefill'], '.4g')} TFLOPs (LLM {f(record['tflops_llm'], '.4g')}; LLM "
          f"in the papers' convention {f(record.get('tflops_llm_paper'), '.4g')} T multiply-adds)\n"
          f"  sample errors   {_error_summary(samples)}\n"
          f"  short videos    {record.get('n_short_videos', 0)} (fewer frames than sampled: padded by repetition)\n"
          f"  run dir         {run_dir}\n"
          + (f"  csv             {cfg.logger.csv.path}\n" if cfg.logger.get("csv") is not None else ""),
          file=sys.stdout, flush=True)
