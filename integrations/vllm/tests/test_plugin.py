"""The harness's methods inside vLLM (CPU build), on a tiny Qwen2.5-VL and a tiny Qwen3-VL (head_dim 32, which vLLM's
CPU attention needs). Each engine runs in its own process (engine.py); the harness's side runs in the harness's own
environment (harness_reference.py, ``.venv``). About 10 minutes on 2 cores."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
HARNESS_PYTHON = ROOT / ".venv" / "bin" / "python"
ARCH = "TangoQwen2_5_VLForConditionalGeneration"
QUESTION = "Which way does the block move?"
VIDEO = {"frames": 16, "size": 112, "seed": 0, "fps": 2.0}  # 2 fps: second_per_grid 1.0 (no EVS integer cast)
RATE = 0.75  # budget 0.25
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    from tango.models.tiny import build_tiny_qwen2_5_vl

    path = tmp_path_factory.mktemp("ckpt") / "tiny_qwen2_5_vl_vllm"
    return str(build_tiny_qwen2_5_vl(path, text_heads=2, text_kv_heads=1, mrope_section=(4, 6, 6)))


@pytest.fixture(scope="session")
def checkpoint_qwen3(tmp_path_factory) -> str:
    from tango.models.tiny import build_tiny_qwen3_vl

    path = tmp_path_factory.mktemp("ckpt") / "tiny_qwen3_vl_vllm"
    return str(build_tiny_qwen3_vl(path, text_heads=2, text_kv_heads=1, head_dim=32, mrope_section=(8, 4, 4)))


def _run(python, script: str, spec: dict, tmp_path: Path, env: dict | None = None, check: bool = True):
    path = tmp_path / f"{script}.{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    p = subprocess.run([str(python), str(HERE / script), str(path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **ENV, **(env or {})}, cwd=str(HERE))
    if not check:
        return p
    assert p.returncode == 0, p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _engine(checkpoint, tmp_path, prompt: str, method: str | None = None, hparams: dict | None = None,
            text_pos: str = "hf5", rate: float | None = RATE, record: Path | None = None, max_tokens: int = 4,
            arch: str = ARCH):
    engine = {"model": checkpoint, "max_model_len": 2048, "enforce_eager": True, "dtype": "float32",
              "limit_mm_per_prompt": {"video": 1, "image": 0}}
    if rate:
        engine["video_pruning_rate"] = rate
    if method is not None:
        engine["hf_overrides"] = {"architectures": [arch], "tango_method": method,
                                  "tango_hparams": json.dumps(hparams or {}), "tango_text_pos": text_pos}
    env = {"TANGO_VLLM_RECORD": str(record)} if record else None
    return _run(sys.executable, "engine.py", {"engine": engine, "prompt": prompt, "max_tokens": max_tokens, **VIDEO},
                tmp_path, env)[0]


def _harness(checkpoint, tmp_path, method: str, hparams: dict, budget: float, family: str = "qwen2_5_vl") -> dict:
    if not HARNESS_PYTHON.exists():
        pytest.fail(f"the harness environment {HARNESS_PYTHON} is missing: run `make setup` first")
    return _run(HARNESS_PYTHON, "harness_reference.py", {"checkpoint": checkpoint, "family": family, "method": method,
                                                         "hparams": hparams, "budget": budget,
                                                         "question": QUESTION, **VIDEO}, tmp_path)


def _prompt(question: str = QUESTION) -> str:
    # the tiny checkpoint's template (Qwen2.5-VL's: its default system turn, then the video and the question)
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")


def test_harness_evs_through_the_plugin_equals_vllms_own_evs(checkpoint, tmp_path):
    """The harness's EVS, run by the plugin with vLLM's text-position rule, is vLLM's EVS: same prompt, same tokens,
    same logprobs (the harness's EVS is parity-tested against vLLM's function)."""
    stock = _engine(checkpoint, tmp_path, _prompt())
    ours = _engine(checkpoint, tmp_path, _prompt(), method="evs", text_pos="evs")
    assert ours["prompt_tokens"] == stock["prompt_tokens"]
    assert ours["tokens"] == stock["tokens"] and ours["logprob"] == stock["logprob"]


def test_identity_with_max1_positions_equals_vllms_unpruned_model(checkpoint, tmp_path):
    """``none`` through the pruning path with ``tango_text_pos=max1`` is vLLM's own unpruned Qwen2.5-VL (transformers
    4.x's positions): the same prompt, tokens and logprobs."""
    stock = _engine(checkpoint, tmp_path, _prompt(), rate=None)
    ours = _engine(checkpoint, tmp_path, _prompt(), method="none", text_pos="max1")
    assert ours["prompt_tokens"] == stock["prompt_tokens"]
    assert ours["tokens"] == stock["tokens"] and ours["logprob"] == stock["logprob"]


def _assert_as_the_harness(ref: dict, ours: dict, record: Path) -> dict:
    """The engine's one recorded video (``record``) got prune's inputs (``attn`` / ``metric`` / ``timestamps``
    within 1e-6) and kept indices of the harness's run ``ref``, and the engine's output ``ours`` has its prompt
    length, first token and first logprob (within 1e-4); returns the record."""
    (kept,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert kept.keys() - {"method", "grid_thw"} == ref.keys() - {"prompt", "prompt_tokens", "token", "logprob"}
    for signal in ("attn", "metric", "timestamps"):
        if signal in ref:
            torch.testing.assert_close(torch.tensor(kept[signal]), torch.tensor(ref[signal]), rtol=0, atol=1e-6)
    assert kept["indices"] == ref["indices"]
    assert ours["prompt_tokens"] == ref["prompt_tokens"]
    assert ours["tokens"][0] == ref["token"]
    assert ours["logprob"] == pytest.approx(ref["logprob"], abs=1e-4)
    return kept


@pytest.mark.parametrize("method, hparams", [("none", {}), ("dycoke", {"kv_pruning": False}),
                                             ("visionzip", {}), ("tango", {"count_rule": "exact"})])
def test_same_kept_tokens_and_first_logprob_as_the_harness(checkpoint, tmp_path, method, hparams):
    """Same video, question and method through the harness (transformers 5.23) and through vLLM: the same kept
    indices, prompt length and first generated token, its logprob within 1e-4 (fp32; the two stacks' kernels
    differ). ``hf5`` positions reproduce the harness's prefill; later tokens are not compared (module doc of
    tango_vllm.qwen2_5_vl: decoding continues at max + 1 in vLLM, at last + 1 in transformers 5.23). VisionZip
    and Tango (exact count) read the vision attention (``last_layer``: ``attn [T, L]``, ``metric [T, L, hd]``;
    ``pooling_head``: ``attn``, with the per-frame mean of the tokens as ``metric``), which the plugin recomputes
    inside vLLM's encoder, and Tango reads the temporal patches' times: prune's inputs agree within 1e-6 (fp32;
    measured 2e-9 for ``attn``, 1e-7 for VisionZip's ``metric``: the two encoders' kernels differ)."""
    ref = _harness(checkpoint, tmp_path, method, hparams, budget=1.0 - RATE)
    assert ref["prompt"] == _prompt()
    record = tmp_path / "kept.jsonl"
    ours = _engine(checkpoint, tmp_path, ref["prompt"], method=method, hparams=hparams, record=record)
    _assert_as_the_harness(ref, ours, record)


@pytest.mark.parametrize("method, hparams", [("random", {}), ("tango", {"count_rule": "exact"})])
def test_qwen3_vl_same_kept_tokens_and_first_logprob_as_the_harness(checkpoint_qwen3, tmp_path, method, hparams):
    """Qwen3-VL (tango_vllm.qwen3_vl): the harness's prompt (transformers 4.57's layout: the bare video pad, which
    vLLM expands to per-temporal-patch timestamp blocks as the harness's processor does) through vLLM's own pruned
    Qwen3-VL layout (``_create_final_video_embeddings``, DeepStack channels gathered by the kept indices) gives the
    harness's kept indices, prune's inputs (timestamps; Tango: ``attn`` from the last ViT block, recomputed inside
    vLLM's encoder), exactly ``count()`` video tokens in the prompt, the harness's prompt length, first token and its
    logprob (within 1e-4, fp32). Both methods keep each temporal patch's tokens in ascending order, so the harness's
    layout (method order inside a patch) and vLLM's (the retention mask's, ascending) are the same sequence."""
    from transformers import AutoTokenizer

    from tango.methods import build_method

    ref = _harness(checkpoint_qwen3, tmp_path, method, hparams, budget=1.0 - RATE, family="qwen3_vl")
    record = tmp_path / "kept.jsonl"
    ours = _engine(checkpoint_qwen3, tmp_path, ref["prompt"], method=method, hparams=hparams, record=record,
                   arch="TangoQwen3VLForConditionalGeneration")
    kept = _assert_as_the_harness(ref, ours, record)
    # 16 frames of 112 x 112 -> 8 temporal patches of 4 x 4 merged tokens (the tiny processor's 128 x 128)
    assert kept["grid_thw"] == [8, 8, 8]
    video_pad = AutoTokenizer.from_pretrained(checkpoint_qwen3).convert_tokens_to_ids("<|video_pad|>")
    count = build_method(method, **hparams).count(8, 16, 1.0 - RATE, (4, 4))
    assert ours["prompt_token_ids"].count(video_pad) == count == len(kept["indices"])


def test_qwen3_vl_refuses_a_method_that_can_repeat_an_index():
    """A retention mask holds each index once: FlashVID (whose ADTS can draw a token twice) is refused for Qwen3-VL
    at start; a method that is not servable is refused as for Qwen2.5-VL."""
    from types import SimpleNamespace

    from tango_vllm.qwen3_vl import qwen3_method_from_config

    config = SimpleNamespace(tango_method="flashvid", tango_hparams=json.dumps({"count_rule": "exact"}))
    with pytest.raises(ValueError, match="'flashvid' can keep a token index twice"):
        qwen3_method_from_config(config)
    with pytest.raises(ValueError, match="not servable"):
        qwen3_method_from_config(SimpleNamespace(tango_method="tango", tango_hparams=None))
    assert qwen3_method_from_config(SimpleNamespace(tango_method="random", tango_hparams=None)).name == "random"


def test_an_unservable_method_is_refused_naming_the_servable_ones(checkpoint, tmp_path):
    engine = {"model": checkpoint, "max_model_len": 2048, "enforce_eager": True, "dtype": "float32",
              "limit_mm_per_prompt": {"video": 1, "image": 0}, "video_pruning_rate": RATE,
              "hf_overrides": {"architectures": [ARCH], "tango_method": "tango"}}
    p = _run(sys.executable, "engine.py", {"engine": engine, "prompt": _prompt(), "max_tokens": 1, **VIDEO},
             tmp_path, check=False)
    assert p.returncode != 0
    log = p.stdout + p.stderr  # the worker's traceback is logged
    assert "ValueError: method 'tango' with its defaults is not servable" in log
    assert "Served here at their defaults: ['evs', 'none', 'random', 'uniform_pool', 'visionzip']" in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mp4(path: Path) -> bytes:
    import cv2
    import numpy as np

    import check_video

    frames = check_video.frames(**{k: VIDEO[k] for k in ("seed", "size")}, n=VIDEO["frames"])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO["fps"], (VIDEO["size"],) * 2)
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return path.read_bytes()


def test_the_openai_server_answers_with_a_harness_method_chosen_by_name(checkpoint, tmp_path):
    sys.path.insert(0, str(HERE))
    port = _free_port()
    overrides = {"architectures": [ARCH], "tango_method": "dycoke", "tango_hparams": json.dumps({"kv_pruning": False})}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint, "--port", str(port),
           "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32", "--video-pruning-rate", str(RATE),
           "--limit-mm-per-prompt", json.dumps({"video": 1, "image": 0}), "--hf-overrides", json.dumps(overrides)]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "server did not start in 300 s"
                time.sleep(2)
        video = base64.b64encode(_mp4(tmp_path / "check.mp4")).decode()
        body = {"model": checkpoint, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{video}"}},
            {"type": "text", "text": QUESTION}]}]}
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=300).read())
        assert reply["choices"][0]["message"]["content"] is not None
        assert reply["usage"]["completion_tokens"] >= 1
        from tango.methods import build_method

        # 16 frames of 112 x 112: 8 temporal patches of 4 x 4 merged tokens; DyCoke's TTM keeps count() of them
        kept = build_method("dycoke", kv_pruning=False).count(8, 16, 1.0 - RATE, (4, 4))
        from transformers import AutoTokenizer

        text = len(AutoTokenizer.from_pretrained(checkpoint)(_prompt())["input_ids"]) - 1  # less the one video pad
        assert reply["usage"]["prompt_tokens"] == text + kept
    finally:
        server.terminate()
        server.wait(timeout=60)
