"""The record glossary: every field of ``record.json`` (= a ``results.csv`` row = a W&B run's summary), one line each.

The README's field table is generated from it (``python -m tango.glossary`` prints it), the W&B sink logs it beside
each run (table ``glossary``), and ``tests/test_glossary.py`` checks that a real record holds no field missing here
and that every field here is written by the runner (or is marked conditional).

Conventions: accuracies on 0-100; retention as a fraction of the visual tokens of the full-token run; latencies are
medians per request in ms with the first request excluded as warm-up, ``*_p90`` the 90th percentile (nearest rank,
:func:`tango.records.percentile`); FLOPs analytical, per request.
"""

from __future__ import annotations

import re

# FastV's per-layer prefill cost, as multiply-adds (the convention of HoliTom / FastVID tables): n tokens, d hidden,
# m MLP intermediate size, summed over the layers with each layer's own n (tango/flops.py: llm_prefill_macs_paper).
PAPER_FLOPS_FORMULA = "sum over layers of (4·n·d² + 2·n²·d + 2·n·d·m) multiply-adds"

# name -> (unit, meaning). ``when`` in CONDITIONAL says when a field may be absent.
FIELDS: dict[str, tuple[str, str]] = {
    # identity
    "run_key": ("", "run folder name: <model>__<method>__b<budget>__<task>__s<seed>[__limit<n>][__<variant>]"),
    "model": ("", "model config key (configs/model/)"),
    "model_family": ("", "adapter family (tango/models/)"),
    "pretrained": ("", "checkpoint path or hub id"),
    "method": ("", "pruning method key (configs/method/); none = full tokens"),
    "budget": ("fraction", "budget the run used: requested budget, 1 for method=none"),
    "budget_requested": ("fraction", "budget on the command line (method=none ignores it)"),
    "task": ("", "task config key (configs/task/)"),
    "lmms_task": ("", "lmms-eval task name"),
    "question_set": ("", ("which questions were answered: the lmms-eval task, plus the digest of the generated "
                         "data for synthetic / local tasks; runs with equal question_set are paired by doc_id")),
    "seed": ("", "seed of the run (python, numpy, torch, lmms-eval)"),
    "limit": ("docs", "only the first <limit> documents (smoke run; tables skip these unless --include-limited)"),
    "experiment": ("", "experiment config that made the run (configs/experiment/<name>.yaml), null outside one"),
    "variant": ("", ("what that experiment sweeps beyond the standard axes, as sorted JSON {label: value}; "
                    "empty for a standard run (only standard runs fill Table 1)")),
    "date": ("UTC", "when the run record was made (ISO 8601)"),
    "num_frames": ("frames", "frames sampled per video"),
    "fps": ("1/s", "frame-sampling rate, null = uniform sampling of num_frames"),
    "dtype": ("", "model dtype"),
    "attn_implementation": ("", "attention backend (sdpa, flash_attention_2, eager)"),
    "video_backend": ("", "video decoder (pyav, decord, torchvision)"),
    "frame_sampling": ("", "which frames are decoded: uniform (linspace truncated) or qwen_vl_utils (its frame count, "
                           "linspace rounded)"),
    "prompt_variant": ("", "the task's lmms_eval_specific_kwargs entry used (as lmms-eval's --model name picks it; "
                           "default when the task has none)"),
    "system_prompt": ("", "system turn before the user turn (empty: none)"),
    "video_resize": ("", "who resizes the frames: processor, or qwen_vl_utils (then the processor does not)"),
    "min_pixels": ("pixels", "lower per-frame bound of the qwen_vl_utils resize (empty: the library's)"),
    "max_pixels": ("pixels", "upper per-frame bound of the qwen_vl_utils resize (empty: the library's)"),
    "video_layout": ("", "Qwen3-VL prompt layout: flat (transformers 4.57) or nested (5.x's processor)"),
    "chat_template": ("", "LLaVA prompt: processor (its template, structured content) or tokenizer (llava_hf's "
                          "'<video>\\n' + question through the tokenizer's template)"),
    "reply": ("", "answer post-processing: until (cut at the task's until strings, stripped) or raw (as decoded)"),
    "method_hparams": ("", "the method's hyperparameters, one JSON object"),
    "config_hash": ("", "16 hex digits of the sha256 of every result-relevant config value (resume identity)"),
    # environment
    "git_sha": ("", "commit of the harness"),
    "git_dirty": ("", "tracked files differed from that commit"),
    "python": ("", "Python version"),
    "torch": ("", "torch version"),
    "cuda": ("", "CUDA version torch was built with (null on CPU builds)"),
    "transformers": ("", "transformers version"),
    "lmms_eval": ("", "lmms-eval version"),
    "lock_sha256": ("", "sha256 of uv.lock"),
    "env_matches_lock": ("", "installed packages equal uv.lock"),
    "env_lock_diff": ("", "packages that differ from uv.lock (when env_matches_lock is false)"),
    # outcome
    "status": ("", "ok | failed"),
    "error": ("", "exception of a failed run (null when ok)"),
    "wall_s": ("s", "wall time of the run, loading included"),
    "accuracy": ("%", "task metric × metric scale (0-100)"),
    "metric": ("", "lmms-eval metric name"),
    "metric_raw": ("", "metric as lmms-eval reports it"),
    "n_samples": ("docs", "documents evaluated"),
    "n_sample_errors": ("docs", "documents that raised (decode error, infeasible sample); scored wrong"),
    "n_short_videos": ("docs", "videos with fewer decodable frames than sampled (padded by repetition)"),
    "accuracy/<type>": ("%", "accuracy on one question type (tasks whose documents carry question_type)"),
    # tokens
    "visual_tokens_in": ("tokens", "visual tokens per request before pruning (mean over requests)"),
    "visual_tokens_out": ("tokens", "visual tokens entering the LLM (mean over requests)"),
    "visual_tokens_layer_avg": ("tokens", ("visual tokens averaged over decoder layers (in-LLM methods drop more "
                                          "after layer K)")),
    "retention": ("fraction", ("realised budget: sum of layer-averaged visual tokens / sum of visual tokens in; "
                              "what `budget` asks for")),
    "retention_input": ("fraction", "visual tokens entering the LLM / visual tokens in"),
    "budget_gap": ("points", "100 × (retention − budget); the run summary warns beyond 1 point"),
    "method/<stat>": ("", ("a per-sample statistic of the method (e.g. method/regime, method/segment_tau): the "
                          "value when every sample agrees, else the mean (numbers) or the distinct values joined "
                          "by |")),
    # latency
    "vision_ms": ("ms", "vision tower + projector (+ the attention source it computes), median"),
    "pruning_ms": ("ms", "the method's selection outside the LLM, median"),
    "llm_prefill_ms": ("ms", "LLM prefill up to the first token's logits, median"),
    "ttft_ms": ("ms", "time to first token, median"),
    "decode_tok_s": ("tokens/s", "decode throughput after the first token, median"),
    "achieved_tflop_s": ("TFLOP/s", "tflops_prefill / TTFT, median"),
    "<latency>_p90": ("as <latency>", "90th percentile (nearest rank) of the same per-request values"),
    "latency_warmup_requests": ("requests", "first requests excluded from latency statistics"),
    # FLOPs
    "tflops_vision": ("TFLOPs", "vision tower, exact count (2 per multiply-add), mean per request"),
    "tflops_projector": ("TFLOPs", "projector, exact count"),
    "tflops_llm": ("TFLOPs", "LLM prefill, exact count (full causal square attention, every layer's own length)"),
    "tflops_prefill": ("TFLOPs", "vision + projector + LLM prefill, exact count"),
    "tflops_llm_paper": ("T multiply-adds", f"LLM prefill in the papers' convention (FastV): {PAPER_FLOPS_FORMULA}"),
    # resources
    "peak_mem_mb": ("MiB", "peak CUDA memory allocated (CUDA runs only)"),
    "peak_rss_mb": ("MiB", "peak resident memory of the process"),
    "device_name": ("", "GPU name, or the CPU architecture"),
}

# Fields a record may lack, and when.
CONDITIONAL = {
    "peak_mem_mb": "CUDA runs only",
    "accuracy/<type>": "tasks whose documents carry question_type",
    "method/<stat>": "methods that report per-sample statistics",
    "env_lock_diff": "only when env_matches_lock is false",
}

_PATTERNS = [(re.compile(r"^accuracy/.+$"), "accuracy/<type>"), (re.compile(r"^method/.+$"), "method/<stat>"),
             (re.compile(r"^.+_p90$"), "<latency>_p90")]


def entry(key: str) -> str | None:
    """The glossary entry that documents record field ``key`` (itself, or its pattern), None if undocumented."""
    if key in FIELDS:
        return key
    return next((name for rx, name in _PATTERNS if rx.match(key)), None)


def undocumented(record: dict) -> list[str]:
    """Fields of ``record`` that the glossary does not document."""
    return [k for k in record if entry(k) is None]


def rows(keys=None) -> list[tuple[str, str, str]]:
    """(field, unit, meaning) for ``keys`` (their entries, deduplicated, in glossary order) or every field."""
    names = list(FIELDS) if keys is None else [e for e in dict.fromkeys(map(entry, keys)) if e is not None]
    names = [n for n in FIELDS if n in set(names)]
    return [(n, *FIELDS[n]) for n in names]


def markdown() -> str:
    """The glossary as a Markdown table (the README's copy)."""
    out = ["| field | unit | meaning |", "|---|---|---|"]
    for name, unit, meaning in rows():
        cond = f" *({CONDITIONAL[name]})*" if name in CONDITIONAL else ""
        text = meaning.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"| `{name}` | {unit} | {text}{cond} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
