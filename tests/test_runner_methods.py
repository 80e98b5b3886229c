"""Every method end to end on the synthetic task, in process: lmms-eval scores it, every latency field is present
and positive, and each sample row joins lmms-eval's own sample by doc id."""

import json
from pathlib import Path

import pytest

from tango.config import compose
from tango.methods import METHODS
from tango.runner import LATENCY_KEYS, run

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("model, tokens_in", [("tiny_llava_ov", 256), ("tiny_qwen3_vl", 128)])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_end_to_end(method, model, tokens_in, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("TANGO_RESULTS", str(tmp_path))
    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    cfg = compose([f"model={model}", "task=synthetic", f"method={method}", "budget=0.25",
                   "task.synthetic.num_videos=4", "logger=[csv]"])
    accuracy = run(cfg)
    run_dir = tmp_path / "runs" / cfg.run_key
    record = json.loads((run_dir / "record.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and accuracy == record["accuracy"]
    assert record["accuracy"] == pytest.approx(100 * sum(s["acc"] for s in samples) / len(samples))
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3] and all("target" in s for s in samples)
    for s in samples:  # per-request figures joined to lmms-eval's sample of the same doc id
        assert s["ttft_ms"] > 0 and s["vision_ms"] > 0 and s["llm_prefill_ms"] > 0 and s["pruning_ms"] >= 0
        assert s["ttft_ms"] >= s["vision_ms"] + s["pruning_ms"] + s["llm_prefill_ms"] - 1e-6
        assert s["tflops_prefill"] > 0 and 0 < s["tokens_layer_avg"] <= s["tokens_in"] == tokens_in
    for k in LATENCY_KEYS:
        if k != "decode_tok_s" or record[k] is not None:
            assert record[k] > 0 and record[f"{k}_p90"] >= record[k]
    expected = 1.0 if method == "none" else 0.25
    assert record["budget"] == expected
    if method in ("visionzip", "fastv") and model == "tiny_llava_ov":  # exact on 16 x 16 tokens
        assert record["retention"] == pytest.approx(expected, abs=0.01)
    assert Path(tmp_path / "results.csv").exists()
