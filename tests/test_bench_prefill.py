"""``scripts/bench_prefill.py`` and ``tango.bench``: the zero-overhead-bound method, derived columns, the adapter built
around an in-memory model, and the ``--smoke`` run end to end (tiny models on CPU, in a subprocess)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tango import bench
from tango.environment import lock_status

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_random_subset_is_fixed_sorted_and_of_the_requested_size():
    m = bench.RandomSubset(size=5, total=24, seed=3)
    x = torch.randn(3, 8, 4)
    a, b = m.prune(x, budget=0.2), m.prune(x, budget=0.2)
    assert a.indices.tolist() == b.indices.tolist() == sorted(set(a.indices.tolist()))
    assert len(a.indices) == 5 and a.stats == {"tokens_in": 24, "tokens_out": 5}
    assert torch.equal(a.tokens, x.reshape(24, 4)[a.indices])
    assert bench.RandomSubset(size=5, total=24, seed=4).prune(x, budget=0.2).indices.tolist() != a.indices.tolist()
    with pytest.raises(ValueError):
        m.prune(torch.randn(2, 8, 4), budget=0.2)
    with pytest.raises(ValueError):
        bench.RandomSubset(size=25, total=24)
    assert "random_subset" not in __import__("tango.methods", fromlist=["METHODS"]).METHODS


@pytest.mark.unit
def test_finish_rows_speedup_bound_and_attention_estimate():
    common = dict(model="m", frames=8, status="ok", pruning_ms=1.0, llm_prefill_ms=10.0)
    rows = [dict(common, method="none", variant="method", budget=1.0, ttft_ms=100.0, vision_ms=50.0),
            dict(common, method="tango", variant="method", budget=0.1, ttft_ms=40.0, vision_ms=52.0),
            dict(common, method="tango", variant="bound", budget=0.1, ttft_ms=36.0, vision_ms=50.0),
            dict(common, method="fastv", variant="method", budget=0.1, status="error")]
    bench.finish_rows(rows)
    none, tango, bound, err = rows
    assert none["speedup_vs_none"] == 1.0
    assert tango["speedup_vs_none"] == 2.5 and bound["speedup_vs_none"] == pytest.approx(100 / 36)
    assert tango["bound_ttft_ms"] == 36.0 and tango["frac_of_bound"] == pytest.approx(0.9)
    assert tango["attn_source_ms_est"] == 2.0 and "attn_source_ms_est" not in bound
    assert "speedup_vs_none" not in err


@pytest.mark.tiny
def test_adapter_around_an_in_memory_model_matches_load_adapter(tiny_llava_dir):
    """The benchmark's adapter (model built outside, wrapped) answers exactly like the evaluation's loader."""
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from tango.methods import NoPruning
    from tango.models.base import load_adapter

    ref = load_adapter("llava_ov", pretrained=str(tiny_llava_dir), device="cpu", dtype="float32")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    ours = bench.adapter_from_model("llava_ov", model, AutoProcessor.from_pretrained(tiny_llava_dir), "cpu")
    assert (ours.grid, ours.patch_grid, ours.video_token_id) == (ref.grid, ref.patch_grid, ref.video_token_id)
    clip = bench.synthetic_clip(4, 112, 112)
    a = ref.generate(ref.prepare(clip, "q"), clip, NoPruning(), 1.0, max_new_tokens=3)
    b = ours.generate(ours.prepare(clip, "q"), clip, NoPruning(), 1.0, max_new_tokens=3)
    assert a.text == b.text and a.stats["prompt_tokens"] == b.stats["prompt_tokens"]
    assert a.stats["tokens_in"] == b.stats["tokens_in"] == 4 * 16


@pytest.mark.tiny
def test_smoke_run_writes_a_sane_csv(tmp_path, cache_dir):
    out = tmp_path / "cpu_smoke.csv"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_prefill.py"), "--smoke", "--methods", "none", "tango", "fastv", "--budgets", "0.75",
         "--out", str(out), "--cache-dir", str(cache_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bench.FIELDS
        rows = list(reader)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["model"] for r in ok} == {"tiny_llava_ov", "tiny_llava_video", "tiny_qwen2_5_vl", "tiny_qwen3_vl"}
    f = lambda r, k: float(r[k])
    for r in ok:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["transformers"] and r["dtype"]
        assert r["lock_sha256"] == lock_status()["lock_sha256"] and r["lmms_eval"] == "0.7.3"
        assert r["attn_implementation"] == "sdpa" and r["repeats"] == "3" and r["warmup"] == "1"
        parts = f(r, "vision_ms") + f(r, "pruning_ms") + f(r, "llm_prefill_ms")
        assert f(r, "other_ms") >= -1e-6            # per request, TTFT contains the three spans
        assert f(r, "ttft_ms") >= 0.5 * parts        # medians of a noisy shared CPU: loose on the sum of medians
        assert f(r, "ttft_p10_ms") <= f(r, "ttft_ms") <= f(r, "ttft_p90_ms")
        assert 0 < f(r, "tokens_out") <= f(r, "tokens_in") and f(r, "tflops_prefill") > 0
        assert f(r, "speedup_vs_none") > 0
    for r in (r for r in ok if r["method"] == "none"):
        assert f(r, "speedup_vs_none") == 1.0 and r["variant"] == "method" and f(r, "budget") == 1.0
    methods = [r for r in ok if r["method"] != "none" and r["variant"] == "method"]
    bounds = {(r["model"], r["method"], r["budget"]): r for r in ok if r["variant"] == "bound"}
    assert {r["method"] for r in methods} == {"tango", "fastv"}
    for r in methods:
        b = bounds[(r["model"], r["method"], r["budget"])]
        assert f(b, "tokens_out") == round(f(r, "tokens_layer_avg")) and b["tokens_in"] == r["tokens_in"]
        assert f(r, "bound_ttft_ms") == f(b, "ttft_ms") and f(r, "frac_of_bound") > 0
        assert f(b, "tflops_llm") <= f(r, "tflops_llm") * 1.05 + 1e-9 or r["method"] == "fastv"


@pytest.mark.unit
@pytest.mark.parametrize("family, grid, layers", [("llava_ov", (14, 14), 28), ("llava_video", (13, 13), 28),
                                                  ("qwen2_5_vl", None, 28), ("qwen3_vl", None, 36)])
def test_full_size_adapter_builds_on_meta(family, grid, layers):
    """The GPU path of the benchmark (real 7B config, random init, adapter around it), on the meta device."""
    adapter = bench.build_full_adapter(family, "meta", torch.bfloat16, "sdpa")
    p = next(adapter.model.parameters())
    assert p.device.type == "meta" and p.dtype == torch.bfloat16
    assert adapter.model.config._attn_implementation == "sdpa"
    assert getattr(adapter, "grid", None) == grid
    pad = "<|video_pad|>" if family.startswith("qwen") else "<video>"
    assert adapter.video_token_id == adapter.processor.tokenizer.convert_tokens_to_ids(pad)
    assert adapter.model.config.text_config.num_hidden_layers == layers


@pytest.mark.unit
def test_methods_get_their_per_model_settings():
    tango = bench.method_for("llava_ov", "tango")
    assert tango.name == "tango" and list(tango.sink_indices) == [28, 27, 41, 169, 11, 12]
    assert bench.method_for("llava_video", "tango").inner_llm is True
