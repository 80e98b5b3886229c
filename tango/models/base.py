"""Model adapters: load a checkpoint with ``from_pretrained`` and run pruned prefill + decoding.

An adapter turns one decoded clip and a question into generated text, calling the method's pure tensor code between
the vision side and the LLM through public transformers seams only. Families map to adapter classes by dotted path, so
listing or composing configs never imports a model.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

#: family -> its adapter class (lazy dotted path: listing or composing configs imports no model). The only list of
#: families: tests, benchmarks and tables derive theirs from it and from each adapter's :class:`FamilySpec`.
ADAPTERS = {
    "llava_ov": "tango.models.llava_ov.LlavaOneVision",
    "llava_video": "tango.models.llava_ov.LlavaVideo",
    "qwen2_5_vl": "tango.models.qwen2_5_vl.Qwen25VL",
    "qwen3_vl": "tango.models.qwen3_vl.Qwen3VL",
}


@dataclass(frozen=True)
class FamilySpec:
    """What the harness knows about a model family, held by its adapter class (``Adapter.spec``).

    Attributes:
        display_name: the full-size model's name in tables (``"LLaVA-OV-7B"``).
        hf_class: the transformers class of its checkpoints.
        hub_id: the full-size checkpoint on the hub.
        full_config: ``(offline_ids=False) -> config``: the full-size architecture as a transformers config, typed
            in (no download); ``offline_ids`` uses the special-token ids of ``offline_processor``.
        offline_processor: ``() -> processor`` with the real visual sizes and the offline byte tokenizer.
        build_tiny: ``(out_dir, seed=0) -> Path``: a tiny random checkpoint of the architecture, for CPU tests.
        video_tokens: ``(config, frames, frame_hw) -> (visual, layout)``: tokens of a video before pruning, analytic
            (``layout``: newlines the LLM sees besides the visual tokens).
        prefill_flops: ``(config, frames, tokens_per_layer, frame_hw) -> {flops_vision, flops_projector,
            flops_llm}`` in the exact convention of :mod:`tango.flops` (what the adapter records per request).

    The adapter's own code holds the rest of the family: prompt layout, the visual span it hands to methods, its
    attention sources.
    """

    display_name: str
    hf_class: str
    hub_id: str
    full_config: Callable[..., Any]
    offline_processor: Callable[[], Any]
    build_tiny: Callable[..., Any]
    video_tokens: Callable[..., tuple[int, int]]
    prefill_flops: Callable[..., dict]


def adapter_class(family: str) -> type:
    """The adapter class of model ``family``; an unknown family lists the valid ones."""
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; valid: {sorted(ADAPTERS)}")
    module, cls = ADAPTERS[family].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def family_spec(family: str) -> FamilySpec:
    return adapter_class(family).spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Generation:
    """One request's output: the text and its per-request figures (token counts, latency split in ms)."""

    text: str
    stats: dict[str, float | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Preprocessing:
    """How a request becomes model inputs where reference paths differ (``configs/model``; recorded in every row).

    Attributes:
        system_prompt: a system turn before the user turn (lmms-eval's Qwen chat wrappers: "You are a helpful
            assistant."); None: none.
        video_resize: ``"processor"`` (the processor's own resize; Qwen with ``cap_pixels_per_frame``) or
            ``"qwen_vl_utils"`` (Qwen only: qwen-vl-utils' video resize with ``min_pixels`` / ``max_pixels``, then the
            processor with ``do_resize=False``, as lmms-eval's Qwen chat wrappers do).
        min_pixels, max_pixels: the qwen-vl-utils resize bounds (lmms-eval: 256 * 28 * 28 and 1605632).
        video_layout: Qwen3-VL only: ``"flat"`` (transformers 4.57's per-patch blocks) or ``"nested"`` (what 5.x's
            processor makes of the chat template: the blocks inside the template's own vision start / end pair).
        chat_template: LLaVA only: ``"processor"`` (the processor's template on structured content: a video item,
            then the question) or ``"tokenizer"`` (lmms-eval's ``llava_hf``: the string ``"<video>\\n" + question``
            through the tokenizer's own template, Qwen2-Instruct's, which adds its default system turn).
        reply: ``"until"`` (the decoded reply cut at the task's ``until`` strings and stripped) or ``"raw"`` (as
            decoded, what lmms-eval's ``llava_hf``, ``qwen2_5_vl`` and ``qwen3_vl`` wrappers return).
    """

    system_prompt: str | None = None
    video_resize: str = "processor"
    min_pixels: int | None = None
    max_pixels: int | None = None
    video_layout: str = "flat"
    chat_template: str = "processor"
    reply: str = "until"


#: the :class:`Preprocessing` settings an adapter implements or refuses (``VideoAdapter.preprocessing_options``)
PER_FAMILY_OPTIONS = ("video_resize", "min_pixels", "max_pixels", "video_layout", "chat_template")


class VideoAdapter:
    """What every adapter shares: construction around a built model (``from_model``), the chat prompt with one
    video, and the basic attributes. Subclasses extend ``_setup`` and implement ``prepare`` and ``generate``."""

    family = "base"
    #: the :class:`Preprocessing` fields this family honours beyond the system prompt (others must stay default)
    preprocessing_options: tuple[str, ...] = ()
    preprocessing = Preprocessing()

    def configure(self, preprocessing: Preprocessing) -> None:
        """Use ``preprocessing``; a setting this family does not implement is an error naming it."""
        default = Preprocessing()
        for name in PER_FAMILY_OPTIONS:
            if getattr(preprocessing, name) != getattr(default, name) and name not in self.preprocessing_options:
                raise ValueError(f"model.{name}={getattr(preprocessing, name)!r} is not supported by the "
                                 f"{self.family!r} adapter (it supports {list(self.preprocessing_options)})")
        self.preprocessing = preprocessing

    @classmethod
    def from_model(cls, model, processor, device: torch.device | str):
        """The adapter around an already-built model and processor (e.g. random weights of the real architecture
        built on the GPU by ``scripts/bench_prefill.py``); everything else as with ``__init__``."""
        self = cls.__new__(cls)
        self._setup(model.to(torch.device(device)).eval(), processor, device)
        return self

    def _setup(self, model, processor, device) -> None:
        self.device = torch.device(device)
        self.model, self.processor = model, processor
        self.video_token_id = self.model.config.video_token_id

    def check_method(self, method) -> None:
        """Refuse a method that does not support this family (its ``families``), naming both."""
        if method.families and self.family not in method.families:
            raise ValueError(f"method {method.name!r} supports the model families {list(method.families)}, not "
                             f"{self.family!r}")

    def prompt(self, question: str) -> str:
        """The prompt text with one video placeholder (``Preprocessing.chat_template`` says whose template)."""
        system = self.preprocessing.system_prompt
        if self.preprocessing.chat_template == "tokenizer":  # lmms-eval's llava_hf: one string, the tokenizer's own
            tok = self.processor.tokenizer
            if tok.chat_template is None:
                raise ValueError("model.chat_template='tokenizer' but this checkpoint's tokenizer has no chat template")
            messages = [{"role": "user", "content": f"{self.processor.video_token}\n{question}"}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; valid here: 'auto', 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid: {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_pretrained(model_cls, family: str, pretrained: str, device, dtype: str, attn_implementation: str,
                    tiny: bool, seed: int):
    """``(model, processor)`` from a hub id or local path; a tiny checkpoint is first built there if asked for."""
    from transformers import AutoProcessor

    if tiny:
        ensure_tiny_checkpoint(family, pretrained, seed=seed)
    try:
        model = model_cls.from_pretrained(pretrained, dtype=resolve_dtype(dtype),
                                          attn_implementation=attn_implementation)
        processor = AutoProcessor.from_pretrained(pretrained)
    except OSError as e:  # transformers' message is long; name the checkpoint first
        raise OSError(f"cannot load the {family} checkpoint {pretrained!r}: not a local checkpoint directory and not "
                      f"available from the hub here ({e})") from e
    return model.to(torch.device(device)).eval(), processor


def ensure_tiny_checkpoint(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny checkpoint of ``family`` (its adapter's ``spec.build_tiny``) at ``out_dir`` unless it is there;
    safe under concurrent callers."""
    from tango.models.tiny import MARKER, TINY_VERSION

    build = family_spec(family).build_tiny
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"family": family, "seed": seed, "version": TINY_VERSION}
    with FileLock(str(out_dir) + ".lock"):
        marker = out_dir / MARKER
        if not marker.exists() or json.loads(marker.read_text()) != stamp:
            if out_dir.exists():  # an older recipe or another seed: rebuild (only ever a tiny checkpoint)
                if not marker.exists():
                    raise FileExistsError(f"{out_dir} exists but is not a tiny checkpoint built by the harness; "
                                          "refusing to overwrite it")
                shutil.rmtree(out_dir)
            build(out_dir, seed=seed)
            marker.write_text(json.dumps(stamp))
    return out_dir


def load_adapter(family: str, **kwargs):
    """Instantiate the adapter of model ``family`` (``configs/model/*.yaml: family``)."""
    return adapter_class(family)(**kwargs)


def prefill_and_decode(model, processor, sw, t_start, *, embeds, ids, sel, method, budget: float, video_token_id: int,
                       n_vis: int, token_mask: torch.Tensor | None = None, max_new_tokens: int,
                       stop: list[str] | None, reply: str = "until",
                       deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None, **generate_kwargs):
    """The LLM half shared by the adapters: greedy ``generate`` on the assembled ``inputs_embeds`` under the
    method's decoder hooks, with the prefill / decode split taken from the first LLM forward.

    Args:
        sw, t_start: the request's :class:`~tango.timing.Stopwatch` with ``vision`` and ``pruning`` recorded, and
            the request's start mark.
        embeds, ids: ``[1, S, D]`` / ``[1, S]`` the prompt the LLM sees (video span already pruned).
        n_vis: prunable visual positions at the start of the video span (in-LLM methods never drop the rest).
        token_mask: ``[S_v]`` over the video span, True for visual tokens, False for layout tokens (newlines);
            None: all visual. In-LLM drops are counted in visual tokens through it.
        reply: ``"until"``: the text cut at the first of ``stop`` and stripped; ``"raw"``: as decoded
            (:class:`Preprocessing`).
        deepstack: ``(positions [V], maps)`` with ``maps[i] [V, D]`` added after decoder layer ``i`` at prefill
            (Qwen3-VL, :func:`tango.hooks.add_after_layers`), kept aligned with any in-LLM drop.
    Returns:
        ``(text, stats, per_layer)``: the answer, the per-request figures, and the sequence length per decoder
        layer (an int when every layer sees the same length) for the FLOPs count.
    """
    from contextlib import nullcontext

    from tango.hooks import DecoderView, add_after_layers

    lm = model.model.language_model
    layers = lm.layers
    span = torch.nonzero(ids[0] == video_token_id)[:, 0]
    decoder = DecoderView(layers, lm.config.model_type, visual_positions=span[:n_vis])
    # At budget 1 every method is the identity: nothing is attached, so the run equals the unhooked model.
    hooks = method.decoder_hooks(decoder, budget) if budget < 1.0 else nullcontext({})
    marks: list = []
    hook = lm.register_forward_hook(lambda *_: marks.append(sw.now()) if not marks else None)
    t_llm = sw.now()
    try:
        with hooks as state, (add_after_layers(layers, *deepstack, state) if deepstack else nullcontext()):
            out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    finally:
        hook.remove()
    t_end = sw.now()
    sw.span("llm_prefill", t_llm, marks[0])
    sw.span("ttft", t_start, marks[0])  # vision + pruning + embedding assembly + LLM prefill
    sw.span("decode", marks[0], t_end)
    ms = sw.results()
    new_tokens = out.shape[1]
    text = processor.batch_decode(out, skip_special_tokens=True)[0]
    if reply == "until":
        for s in stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        text = text.strip()
    elif reply != "raw":
        raise ValueError(f"reply={reply!r}; valid: 'until', 'raw'")
    seq = int(ids.shape[1])
    stats = {
        "tokens_in": int(sel.stats["tokens_in"]),
        "tokens_out": int(sel.stats["tokens_out"]),
        "prompt_tokens": seq,
        "new_tokens": int(new_tokens),
        "vision_ms": ms["vision"],
        "pruning_ms": ms["pruning"],
        "llm_prefill_ms": ms["llm_prefill"],
        "ttft_ms": ms["ttft"],
        "decode_tok_s": (new_tokens - 1) / (ms["decode"] / 1e3) if new_tokens > 1 and ms["decode"] > 0 else None,
        "tokens_layer_avg": int(sel.stats["tokens_out"]),
    }
    per_layer: int | list[int] = seq
    if "keep" in state:  # dropped inside the LLM: layers >= K see the kept positions only
        k, keep, base = state["layer"], state["keep"], int(sel.stats["tokens_out"])
        mask = torch.ones(int(span.numel()), dtype=torch.bool) if token_mask is None else token_mask.cpu()
        kept_span = torch.isin(span.cpu(), keep.cpu())  # which positions of the video span are still present
        after = int((mask & kept_span).sum())  # visual tokens (not newlines) still present from layer K on
        per_layer = [seq] * k + [int(keep.numel())] * (len(layers) - k)
        vis = [base] * k + [after] * (len(layers) - k)
        stats["tokens_layer_avg"] = sum(vis) / len(vis)
        stats["tokens_after_layer"] = vis[-1]
    if "pruned_steps" in state:  # decode-time KV selection
        stats["kv_steps"], stats["kv_pruned_steps"] = state["steps"], state["pruned_steps"]
    stats.update({f"method/{k}": v for k, v in sel.stats.items() if k not in ("tokens_in", "tokens_out")})
    return text, stats, per_layer, ms
