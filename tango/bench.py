"""End-to-end prefill latency benchmark: library half of ``scripts/bench_prefill.py``.

Every request goes through the model adapter's own ``generate`` (``tango.models.llava_ov`` / ``qwen2_5_vl``), the
code path of evaluation, with ``max_new_tokens=1`` so only the prefill runs; the adapter's
:class:`~tango.timing.Stopwatch` (CUDA events on GPU, ``perf_counter`` on CPU) gives the per-request split
(``vision_ms``, ``pruning_ms``, ``llm_prefill_ms``, ``ttft_ms``) and the analytical prefill FLOPs.

The **zero-overhead bound** of a method is the same model fed a pre-drawn random subset of the same size
(:class:`RandomSubset`): vision + the pruned LLM, with no attention source and an indexing-only "pruning".
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget
from tango.models.base import ADAPTERS, adapter_class
from tango.records import percentile

#: family -> name of its model config (``configs/model/<name>.yaml``) for full-size and smoke (tiny) runs.
MODEL_NAMES = {family: family for family in ADAPTERS}
TINY_MODEL_NAMES = {family: f"tiny_{family}" for family in ADAPTERS}

FIELDS = [
    "date", "model", "family", "method", "variant", "budget", "frames", "frame_hw",
    "tokens_in", "tokens_out", "tokens_layer_avg", "prompt_tokens",
    "ttft_ms", "ttft_p10_ms", "ttft_p90_ms", "vision_ms", "attn_source_ms_est", "pruning_ms", "llm_prefill_ms",
    "other_ms", "speedup_vs_none", "bound_ttft_ms", "frac_of_bound",
    "tflops_vision", "tflops_projector", "tflops_llm", "tflops_prefill", "achieved_tflop_s", "peak_mem_gib",
    "warmup", "repeats", "device", "device_name", "driver", "cuda", "torch", "transformers", "lmms_eval",
    "lock_sha256", "env_matches_lock", "dtype",
    "attn_implementation", "sdpa_backends", "threads", "status", "note",
]


@dataclass
class RandomSubset(PruningMethod):
    """A fixed, pre-drawn random subset of ``size`` of the ``total`` visual tokens, in raster order (the
    zero-overhead bound; not registered in ``METHODS``). ``prune`` only gathers rows: no attention source, no host
    sync, indices already on the device after the first (warm-up) call."""

    name: str = "random_subset"
    size: int = 1
    total: int = 1
    seed: int = 0
    stage: ClassVar[str] = "pre_llm"
    needs_attention: ClassVar[bool] = False
    _idx: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not 1 <= self.size <= self.total:
            raise ValueError(f"size={self.size} must lie in [1, total={self.total}]")
        g = torch.Generator().manual_seed(self.seed)
        self._idx["cpu"] = torch.randperm(self.total, generator=g)[: self.size].sort().values

    def indices(self, device) -> Tensor:
        key = str(device)
        if key not in self._idx:
            self._idx[key] = self._idx["cpu"].to(device)
        return self._idx[key]

    def prune(self, x: Tensor, *, budget: float = 1.0, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        check_budget(budget)
        n, l, d = x.shape
        if n * l != self.total:
            raise ValueError(f"RandomSubset drawn for {self.total} tokens, got x with {n * l}")
        idx = self.indices(x.device)
        return Selection(tokens=x.reshape(n * l, d).index_select(0, idx), indices=idx,
                         stats={"tokens_in": self.total, "tokens_out": self.size})


# ---- building adapters -----------------------------------------------------------------------------------------------

def adapter_from_model(family: str, model, processor, device):
    """The adapter of ``family`` around an already-built ``model`` and ``processor`` (its ``from_model``), so every
    attribute the adapter derives from the model is derived by the adapter's own code."""
    return adapter_class(family).from_model(model, processor, device)


def build_full_adapter(family: str, device, dtype: torch.dtype = torch.bfloat16, attn_implementation: str = "sdpa",
                       seed: int = 0):
    """The real 7B architecture of ``family`` with random weights, built directly on ``device`` (no download, no
    checkpoint on disk), wrapped in its adapter."""
    from tango.models.full_configs import build_processor, full_config, model_class

    cfg = full_config(family, offline_ids=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class(family)._from_config(cfg, dtype=dtype, attn_implementation=attn_implementation)
    return adapter_from_model(family, model.eval(), build_processor(family), device)


def build_tiny_adapter(family: str, cache_dir, device="cpu", attn_implementation: str = "sdpa", seed: int = 0):
    """The tiny random checkpoint of ``family`` (built offline on first use), loaded and wrapped like the 7B one."""
    from pathlib import Path

    from transformers import AutoProcessor

    from tango.models.full_configs import model_class
    from tango.models.base import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint(family, Path(cache_dir) / "models" / TINY_MODEL_NAMES[family], seed=seed)
    model = model_class(family).from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
    return adapter_from_model(family, model.eval(), AutoProcessor.from_pretrained(path), device)


def method_for(model_name: str, method: str) -> PruningMethod:
    """The method object with its per-model settings (``configs/model_method/<model>_<method>.yaml``)."""
    from omegaconf import OmegaConf

    from tango.config import compose

    cfg = compose([f"model={model_name}", f"method={method}"])
    return OmegaConf.to_object(cfg.method)


# ---- inputs ----------------------------------------------------------------------------------------------------------

def synthetic_clip(frames: int, height: int, width: int, fps: float = 30.0, stride: int = 15, seed: int = 0):
    """A clip of uniformly random RGB frames (never zeros), sampled every ``stride`` source frames."""
    from tango.video import Clip

    rng = np.random.default_rng(seed)
    indices = np.arange(frames) * stride
    return Clip(frames=rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8), indices=indices,
                timestamps=indices / fps, avg_fps=fps, total_frames=int(frames * stride))


# ---- timing ----------------------------------------------------------------------------------------------------------

def measure(adapter, inputs: dict, clip, method: PruningMethod, budget: float, warmup: int, repeats: int) -> dict:
    """``warmup`` untimed then ``repeats`` timed requests through ``adapter.generate`` (prefill only); the median of
    every per-request figure, TTFT p10 / p90 and the peak device memory of the timed requests."""
    cuda = adapter.device.type == "cuda"
    for _ in range(warmup):
        adapter.generate(inputs, clip, method, budget, max_new_tokens=1)
    if cuda:
        torch.cuda.synchronize(adapter.device)
        torch.cuda.reset_peak_memory_stats(adapter.device)
    runs = [adapter.generate(inputs, clip, method, budget, max_new_tokens=1).stats for _ in range(repeats)]
    for r in runs:  # per request: TTFT not in the three named spans (attention pooling, embedding assembly, glue)
        r["other_ms"] = r["ttft_ms"] - sum(r.get(k) or 0.0 for k in ("vision_ms", "pruning_ms", "llm_prefill_ms"))
    out: dict = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        out[key] = statistics.median(vals) if vals else None
    ttft = [r["ttft_ms"] for r in runs]
    out["ttft_p10_ms"], out["ttft_p90_ms"] = percentile(ttft, 0.1), percentile(ttft, 0.9)
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated(adapter.device) / 2 ** 30 if cuda else None
    return out


# ---- environment -----------------------------------------------------------------------------------------------------

def environment(device: torch.device, dtype: torch.dtype, attn_implementation: str) -> dict:
    """Device, driver and library versions and the attention backend, for every row."""
    import platform

    import transformers

    from tango.environment import lock_status

    env = {"device": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
           "dtype": str(dtype).replace("torch.", ""), "attn_implementation": attn_implementation,
           "threads": torch.get_num_threads(), "cuda": torch.version.cuda or "", "driver": ""}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20, check=False).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
        b = torch.backends.cuda
        env["sdpa_backends"] = "+".join(n for n, on in [("flash", b.flash_sdp_enabled()),
                                                         ("mem_efficient", b.mem_efficient_sdp_enabled()),
                                                         ("cudnn", b.cudnn_sdp_enabled()),
                                                         ("math", b.math_sdp_enabled())] if on)
    else:
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as fh:
                name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
        except OSError:
            pass
        env["device_name"], env["sdpa_backends"] = name, "cpu"
    lock = lock_status()
    env.update(lmms_eval=lock["lmms_eval"], lock_sha256=lock["lock_sha256"], env_matches_lock=lock["env_matches_lock"])
    return env


def finish_rows(rows: list[dict]) -> list[dict]:
    """Derived columns per (model, frames): speedup vs ``none``, the attention-source estimate (vision time above
    ``none``'s) and the bound's TTFT with the fraction of it reached (``bound_ttft / ttft``)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    base = {(r["model"], r["frames"]): r for r in ok if r["method"] == "none" and r["variant"] == "method"}
    bounds = {(r["model"], r["frames"], r["method"], r["budget"]): r for r in ok if r["variant"] == "bound"}
    for r in ok:
        ref = base.get((r["model"], r["frames"]))
        if ref is not None:
            r["speedup_vs_none"] = ref["ttft_ms"] / r["ttft_ms"]
            if r["variant"] == "method" and r["vision_ms"] is not None:
                r["attn_source_ms_est"] = r["vision_ms"] - ref["vision_ms"]
        b = bounds.get((r["model"], r["frames"], r["method"], r["budget"]))
        if b is not None and r["variant"] == "method":
            r["bound_ttft_ms"] = b["ttft_ms"]
            r["frac_of_bound"] = b["ttft_ms"] / r["ttft_ms"]
    return rows
