#!/usr/bin/env python
"""Serving throughput under load: vLLM's OpenAI-compatible server per pruning configuration, driven on loopback.

For each configuration (``full`` = no pruning, ``vllm_evs`` = vLLM's own EVS, any servable harness method through
the plugin, integrations/vllm) and budget, one server is started with ``--python`` (the vLLM environment), warmed up
with one request, then sent ``--requests`` chat completions with a video (each with its own cache key, so nothing is
served from vLLM's caches: :func:`one_request`), ``--concurrency`` at a time, streamed so the
first token's arrival is seen. Each (configuration, budget, concurrency) is one CSV row: requests/s, TTFT p50 / p90,
output tokens/s, prompt tokens, failures, plus the model, device, versions and date. Bounded: every request has a
timeout and each load level stops sending after ``--max-seconds``.

    make setup-vllm
    python scripts/bench_serving.py --tiny --methods full vllm_evs dycoke random --budgets 0.25 --concurrency 1 4 16
    python scripts/bench_serving.py --model Qwen/Qwen2.5-VL-7B-Instruct --frames 32 --budgets 0.1 0.25 \\
        --methods full vllm_evs dycoke --concurrency 1 4 16 --video clip.mp4            # on a GPU, with vllm (CUDA)

The CPU numbers only show that the mechanism works (a tiny random model, 2 shared cores).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the plugin's model classes (integrations/vllm), by family
ARCHS = {"qwen2_5_vl": "TangoQwen2_5_VLForConditionalGeneration", "qwen3_vl": "TangoQwen3VLForConditionalGeneration"}
#: plugin methods whose defaults are not servable, and the setting that makes them so
SERVABLE_SETTINGS = {"dycoke": {"kv_pruning": False}, "vidcom2": {"count_rule": "vllm"},
                     **{m: {"count_rule": "exact"} for m in ("tango", "holitom", "flashvid")}}
COLUMNS = ["config", "method", "budget", "concurrency", "requests", "completed", "failed", "duration_s", "req_s",
           "ttft_p50_ms", "ttft_p90_ms", "output_tok_s", "prompt_tokens", "prefix_cache_hit_tokens", "mm_cache_hits",
           "video_cache_key", "max_tokens", "frames", "model", "device", "vllm", "torch", "transformers", "python",
           "date", "git_sha"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="interpreter of the vLLM environment (default: .venv-vllm, make setup-vllm)")
    p.add_argument("--model", help="checkpoint (hub id or path) served")
    p.add_argument("--server-args", nargs="*", default=[],
                   help="extra arguments for every server, e.g. --server-args=--no-enable-prefix-caching (recorded)")
    p.add_argument("--family", choices=sorted(ARCHS), default="qwen2_5_vl",
                   help="the served model's family: which plugin class serves the harness methods (--tiny builds it)")
    p.add_argument("--tiny", action="store_true",
                   help="serve a tiny random Qwen2.5-VL built offline (head_dim 32 for vLLM's CPU attention)")
    p.add_argument("--methods", nargs="+", default=["full", "vllm_evs", "dycoke", "random"],
                   help="full (no pruning), vllm_evs (vLLM's own EVS), or servable harness methods (the plugin)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25], help="fractions of video tokens kept")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per load level")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long per load level")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request (greedy, EOS ignored)")
    p.add_argument("--frames", type=int, default=16, help="frames of the synthetic video (when no --video)")
    p.add_argument("--size", type=int, default=112, help="frame side of the synthetic video, pixels")
    p.add_argument("--video", help="an mp4 to send instead of the synthetic one")
    p.add_argument("--reuse-video", action="store_true",
                   help="send every request's video under one cache key, so vLLM serves it from its caches after the "
                        "first (default: a fresh key per request; see one_request)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--out", default=str(ROOT / "results" / "serving" / "bench_serving.csv"))
    p.add_argument("--server-timeout", type=float, default=600.0, help="seconds to wait for a server to start")
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: ``python -c SYNTHETIC_MP4 frames size fps out.mp4`` in the vLLM environment (its OpenCV): a noise background with
#: a block moving across
SYNTHETIC_MP4 = (
    "import sys, cv2, numpy as np\n"
    "n, s, fps, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
    "rng = np.random.default_rng(0); bg = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)\n"
    "w = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*'mp4v'), fps, (s, s))\n"
    "for i in range(n):\n"
    "    f = bg.copy(); x = (i * 5) % max(1, s - s // 4); f[s // 3: s // 3 + s // 4, x: x + s // 4] = 250\n"
    "    w.write(f)\n"
    "w.release()\n")


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` for one configuration, terminated on exit."""

    def __init__(self, args, model: str, config: str, budget: float):
        self.port = _free_port()
        cmd = [args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(self.port),
               "--max-model-len", str(args.max_model_len), "--dtype", args.dtype,
               "--limit-mm-per-prompt", json.dumps({"video": 1, "image": 0})]
        if config != "full":
            cmd += ["--video-pruning-rate", str(1.0 - budget)]
        if config not in ("full", "vllm_evs"):
            overrides = {"architectures": [ARCHS[args.family]], "tango_method": config,
                         "tango_hparams": json.dumps(SERVABLE_SETTINGS.get(config, {}))}
            cmd += ["--hf-overrides", json.dumps(overrides)]
        if args.tiny:
            cmd += ["--enforce-eager"]
        cmd += args.server_args
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1" if args.tiny else "0")}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + args.server_timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"server for {config} did not start; last log lines:\n{self.tail()}")
                time.sleep(1)

    def tail(self, n: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text().splitlines()[-n:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def one_request(url: str, model: str, video_b64: str, max_tokens: int, timeout: float, fresh: bool = True) -> dict:
    """A streamed chat completion; ``ttft`` is the arrival of the first chunk that counts a generated token (vLLM's
    per-chunk usage; a content test would miss tokens that do not yet decode to text), seconds from sending. The
    video carries a fresh ``uuid`` (vLLM's multimodal cache key): every request sends the same video, and without it
    vLLM's processor cache, encoder cache (shared across requests by content hash) and prefix cache would process
    the video, run the encoder and the pruning once, and serve every later request from cache (``fresh=False``:
    that cached case, ``--reuse-video``)."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{video_b64}"},
                 **({"uuid": f"bench-{uuid.uuid4().hex}"} if fresh else {})},
                {"type": "text", "text": "Describe the motion in the video."}]}]}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    ttft, usage = None, {}
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if ttft is None and usage.get("completion_tokens", 0) >= 1:
                ttft = time.perf_counter() - start
    return {"ttft": ttft, "end": time.perf_counter() - start, "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens", 0)}


#: vLLM's cache counters (Prometheus ``/metrics``) read around each load level, recorded as the level's deltas
CACHE_COUNTERS = {"prefix_cache_hit_tokens": "vllm:prefix_cache_hits_total",
                  "mm_cache_hits": "vllm:mm_cache_hits_total"}


def cache_counters(url: str) -> dict[str, float]:
    """The current values of ``CACHE_COUNTERS`` (summed over label sets; 0 when vLLM does not export one; NaN when
    the server no longer answers: its failed requests are recorded, not this)."""
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    except OSError:
        return dict.fromkeys(CACHE_COUNTERS, float("nan"))
    out = dict.fromkeys(CACHE_COUNTERS, 0.0)
    for line in text.splitlines():
        for key, name in CACHE_COUNTERS.items():
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


def load_level(server: Server, model: str, video_b64: str, args, concurrency: int) -> dict:
    """``args.requests`` requests, ``concurrency`` in flight, none started after ``args.max_seconds``; with the
    cache hits vLLM counted meanwhile (prefix-cache hit tokens: at most the text before the video per request)."""
    results, failures, lock = [], [], threading.Lock()
    before = cache_counters(server.url)
    t0 = time.perf_counter()

    def worker(_):
        if time.perf_counter() - t0 > args.max_seconds:
            return
        try:
            r = one_request(server.url, model, video_b64, args.max_tokens, timeout=args.max_seconds,
                            fresh=not args.reuse_video)
            with lock:
                results.append(r)
        except Exception as e:  # noqa: BLE001 (any failed request is counted, not fatal)
            with lock:
                failures.append(f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(args.requests)))
    duration = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] * 1e3 for r in results if r["ttft"] is not None)

    def pct(q):
        return round(statistics.quantiles(ttfts, n=100, method="inclusive")[q - 1], 1) if len(ttfts) > 1 else (
            round(ttfts[0], 1) if ttfts else None)

    after = cache_counters(server.url)
    return {**{k: after[k] - before[k] for k in CACHE_COUNTERS},
            "requests": args.requests, "completed": len(results), "failed": len(failures),
            "duration_s": round(duration, 3), "req_s": round(len(results) / duration, 3),
            "ttft_p50_ms": pct(50), "ttft_p90_ms": pct(90),
            "output_tok_s": round(sum(r["completion_tokens"] for r in results) / duration, 2),
            "prompt_tokens": results[0]["prompt_tokens"] if results else None, "errors": failures[:3]}


def versions(python: str) -> dict:
    code = ("import json, torch, transformers, vllm, platform\n"
            "dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or 'cpu'\n"
            "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, "
            "'transformers': transformers.__version__, 'device': dev}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.python).exists():
        sys.exit(f"--python {args.python} does not exist: run `make setup-vllm` (or pass the vLLM environment's "
                 "interpreter)")
    if not (args.model or args.tiny):
        sys.exit("pass --model <checkpoint> or --tiny")
    work = Path(tempfile.mkdtemp(prefix="bench_serving."))
    model = args.model
    if args.tiny:
        model = str(work / f"tiny_{args.family}_vllm")
        build = {"qwen2_5_vl": "build_tiny_qwen2_5_vl(sys.argv[1], text_heads=2, text_kv_heads=1, "
                               "mrope_section=(4, 6, 6))",
                 "qwen3_vl": "build_tiny_qwen3_vl(sys.argv[1], text_heads=2, text_kv_heads=1, head_dim=32, "
                             "mrope_section=(8, 4, 4))"}[args.family]  # vLLM's CPU attention: head_dim >= 32
        subprocess.run([args.python, "-c", f"import sys; from tango.models import tiny; tiny.{build}", model],
                       check=True, cwd=str(ROOT))
    if args.video:
        video = Path(args.video).read_bytes()
    else:
        path = work / "clip.mp4"
        subprocess.run([args.python, "-c", SYNTHETIC_MP4, str(args.frames), str(args.size), "2.0", str(path)],
                       check=True)
        video = path.read_bytes()
    video_b64 = base64.b64encode(video).decode()
    env = versions(args.python)
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for config in args.methods:
            for budget in ([1.0] if config == "full" else args.budgets):
                print(f"[bench_serving] {config} budget {budget:g}: starting the server", flush=True)
                server = Server(args, model, config, budget)
                try:
                    one_request(server.url, model, video_b64, 2, timeout=args.max_seconds)  # warm-up, untimed
                    for c in args.concurrency:
                        row = load_level(server, model, video_b64, args, c)
                        row.update(config=config, method={"full": "none", "vllm_evs": "evs"}.get(config, config),
                                   budget=budget,
                                   concurrency=c, max_tokens=args.max_tokens,
                                   video_cache_key="shared" if args.reuse_video else "per_request",
                                   frames=args.frames if not args.video else "", model=args.model or "tiny",
                                   python=platform.python_version(),
                                   date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), git_sha=sha, **env)
                        writer.writerow(row)
                        f.flush()
                        errors = f" errors: {row['errors']}" if row["errors"] else ""
                        print(f"  c={c}: {row['completed']}/{row['requests']} ok, {row['req_s']} req/s, TTFT p50 "
                              f"{row['ttft_p50_ms']} ms, p90 {row['ttft_p90_ms']} ms, {row['output_tok_s']} tok/s, "
                              f"prompt {row['prompt_tokens']} tokens, cache hits: prefix "
                              f"{row['prefix_cache_hit_tokens']:g} tokens, multimodal {row['mm_cache_hits']:g}{errors}",
                              flush=True)
                finally:
                    server.close()
    print(f"[bench_serving] rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
