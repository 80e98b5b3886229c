"""Qwen2.5-VL in vLLM with a harness pruning method between the vision encoder and the LLM.

vLLM's own pruning path (EVS) is reused at its three hook points, with the harness's method in EVS's place:

1. **Placeholders** (frontend, before the vision encoder runs): the prompt gets exactly ``method.count(T, L, budget,
   grid)`` video tokens (``T`` temporal patches, ``L = (H/2)(W/2)`` merged tokens each). Only *servable* methods
   (``PruningMethod.servable``: acting before the LLM, count known from the shape) can be served; another count
   would kill the engine.
2. **Pruning** (worker, after the ViT and merger): ``method.prune(x [T, L, D], budget, grid, timestamps)``
   (``timestamps``: :func:`patch_times`), the harness's code unchanged; kept tokens carry their original 3-D M-RoPE
   ids ``(t, h, w)`` as 3 extra channels (vLLM's convention), gathered by ``Selection.indices`` as the harness
   does. A method with ``needs_attention``
   also gets the harness's vision attention signal (``attn [T, L]``, and ``metric [T, L, hd]`` for ``last_layer``):
   vLLM's encoder attention returns no weights, so while the encoder runs on the videos a forward hook on its last
   full-attention block recomputes that block's queries and keys (its own ``qkv`` and rotary) and runs the harness's
   own functions on them (:mod:`tango.models.vision_attention`, :func:`vision_attention`); the encoder's output is
   unchanged. Both sources are computed: ``last_layer`` (VisionZip, HoliTom, FlashVID) and ``pooling_head`` (Tango,
   FastVID); which of these methods can be served is decided by their count alone (``servable``).
3. **Positions**: vLLM rewrites the prompt's M-RoPE ids from those channels (``recompute_mrope_positions``); the 4th
   channel sets where the text after the video starts (``tango_text_pos``, below).

Configuration (``hf_overrides``, visible to the frontend and the worker): ``architectures:
["TangoQwen2_5_VLForConditionalGeneration"]``, ``tango_method`` (a registered name), ``tango_hparams`` (JSON object
of its hyperparameters), ``tango_text_pos``; the budget is ``1 - video_pruning_rate`` (the engine flag that turns
the pruning path on). With ``video_pruning_rate`` unset or 0 the model is stock Qwen2.5-VL.

Positions (docs/vllm-serving.md section 4; ``tango_text_pos``):

- ``"hf5"`` (default): the text after the video starts at ``base + max(H, W)/2``, as transformers 5.23's
  ``get_rope_index`` and so the harness; prefill logits equal the harness's. Decoding continues at ``max + 1``
  (vLLM's ``rope_deltas``), where transformers 5.23's ``generate`` uses the last position + 1: the two agree while
  the video's temporal ids stay below its spatial extent, and the later tokens differ otherwise.
- ``"max1"``: at ``max(t, h, w) + 1`` of the unpruned video, as transformers 4.x and vLLM's unpruned path.
- ``"evs"``: at ``base + W/2``, vLLM's EVS.

Deviation from vLLM's EVS path: ``second_per_grid_ts`` stays a float (EVS casts it to an integer before scaling the
temporal ids, which moves them when the sampled frame rate is not a divisor of 2). The position channels travel in
the embedding dtype: use float32 or keep ids below 256 in bfloat16 (vLLM's own limitation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement, PromptUpdate
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from tango.methods import METHODS, build_method
from tango.models.vision_attention import ATTENTION_SOURCES, unwindow

TEXT_POSITIONS = ("hf5", "max1", "evs")
#: a file path: each pruned video's kept indices (and prune's ``attn``/``metric``/``timestamps``) are appended (tests)
RECORD_ENV = "TANGO_VLLM_RECORD"


def _served(method) -> bool:
    """Servable here: an exact count, and any vision attention source it needs is one the plugin computes."""
    return method.servable and (not method.needs_attention or method.attention_source in ATTENTION_SOURCES)


def method_from_config(hf_config) -> Any:
    """The harness method named by ``hf_config.tango_method`` with ``tango_hparams``; refuses one that cannot be
    served, naming the servable ones."""
    name = getattr(hf_config, "tango_method", None)
    if name is None:
        raise ValueError("video_pruning_rate is set but hf_overrides has no 'tango_method'; valid: "
                         f"{sorted(METHODS)}")
    hparams = getattr(hf_config, "tango_hparams", None) or {}
    method = build_method(name, **(json.loads(hparams) if isinstance(hparams, str) else dict(hparams)))
    servable = sorted(n for n in METHODS if _served(build_method(n)))
    if not method.servable:
        raise ValueError(f"method {name!r} with {hparams or 'its defaults'} is not servable: its kept count depends on "
                         f"the video or it acts inside the LLM. Served here at their defaults: {servable} (and vidcom2 "
                         "with count_rule=vllm, dycoke with kv_pruning=false, tango, holitom and flashvid with "
                         "count_rule=exact)")
    if method.needs_attention and method.attention_source not in ATTENTION_SOURCES:
        raise ValueError(f"method {name!r} needs the vision attention source {method.attention_source!r}; this plugin "
                         f"computes {sorted(ATTENTION_SOURCES)}")
    return method


@contextmanager
def vision_attention(visual, grid_thw: list[list[int]], source: str, block=None,
                     raster=None) -> Iterator[list[dict[str, torch.Tensor]]]:
    """While vLLM's Qwen2.5-VL vision encoder ``visual`` runs on videos of patch grids ``grid_thw`` (``[[T, h, w],
    ...]``), compute the harness's attention ``source`` (``ATTENTION_SOURCES``) of each video from the last
    full-attention block, into the yielded list: one dict per video, ``attn [T, L]`` (and ``metric [T, L, hd]`` for
    ``last_layer``), raster order of the merged grid, exactly as the harness's adapter computes it in transformers.

    vLLM's encoder attention (``MMEncoderAttention``: SDPA / flash kernels over ``cu_seqlens``) has no
    attention-weights output, so a forward hook on that block's ``Qwen2_5_VisionAttention`` recomputes its queries
    and keys from its own ``qkv`` projection and its own rotary on the ``cos``/``sin`` it received, as its
    ``forward`` does; the block's output is left untouched. The encoder runs the videos concatenated, each
    ``T h w`` rows in its window order (temporal patches contiguous, each a full-attention segment of ``cu_seqlens``),
    so the rows split per video by ``grid_thw`` and each video's window permutation is undone with the encoder's own
    ``get_window_index_thw``. The hook is removed on exit, also on error.

    Other towers with the same attention module (Qwen3-VL: every block full attention, no windows): ``block`` the
    ``Qwen2_5_VisionAttention`` to hook (default: the last full-attention block's) and ``raster(t, h, w)`` returning
    the function that turns that video's rows ``[T * L, ...]`` in tower order into ``[T, L, ...]`` (default: undo
    the window order)."""
    fn = ATTENTION_SOURCES[source]
    captured: list[dict[str, torch.Tensor]] = []
    sizes = [t * h * w for t, h, w in grid_thw]

    def hook(mod, args, kwargs, out) -> None:
        x = args[0] if args else kwargs["x"]                                  # [S, B, C], window order
        s, b, _ = x.shape
        if b != 1 or s != sum(sizes):
            raise RuntimeError(f"vision attention hook: input {tuple(x.shape)}, expected [{sum(sizes)}, 1, C]")
        heads, hd = mod.num_attention_heads_per_partition, mod.hidden_size_per_attention_head
        qkv = mod.qkv(x)[0].view(s, 3, heads, hd)                             # "s b (three head head_dim)", b = 1
        k_raw = qkv[:, 1]                                                     # [S, H, hd] before RoPE
        cos, sin = kwargs.get("rotary_pos_emb_cos"), kwargs.get("rotary_pos_emb_sin")
        if cos is not None and sin is not None:                               # "(two b) s head head_dim", as forward
            q, k = mod.apply_rotary_emb(qkv[:, :2].transpose(0, 1).contiguous(), cos, sin).unbind(0)
        else:
            q, k = qkv[:, 0], k_raw
        for (t, h, w), qv, kv, kr in zip(grid_thw, q.split(sizes), k.split(sizes), k_raw.split(sizes)):
            if raster is not None:
                to_raster = raster(t, h, w)
            else:
                window_index = visual.get_window_index_thw(t, h, w)[0]
                to_raster = lambda rows, wi=window_index, t=t: unwindow(rows, wi, t)
            captured.append(fn(qv, kv, kr, (t, h, w), visual.spatial_merge_unit, mod.attn.scale, to_raster))

    if block is None:
        block = visual.blocks[visual.fullatt_block_indexes[-1]].attn
    # vLLM's encoder attention kernel returns no attention weights: recompute them beside it (docstring)
    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def patch_times(t: int, second_per_grid: float, temporal_patch_size: int) -> torch.Tensor:
    """``[t]`` seconds of the temporal patches, the harness's rule (``Qwen25VL.timestamps``, the Tango reference's
    ``np.interp`` of the sampled frames' times onto ``linspace(0, F - 1, t)``) for ``F = t * temporal_patch_size``
    frames evenly spaced by ``second_per_grid / temporal_patch_size`` from 0: vLLM passes no per-frame times for
    Qwen2.5-VL. Equal to the harness's for such frames (an odd frame count, padded by the processor, or uneven
    sampling would differ); a common offset does not change ST-RoPE's relative rotations."""
    frames = t * temporal_patch_size
    return torch.linspace(0, frames - 1, t, dtype=torch.float64).float() * (second_per_grid / temporal_patch_size)


def text_position(rule: str, positions: torch.Tensor, grid: tuple[int, int]) -> int:
    """Where the text after the video starts, relative to the video's base position (the 4th channel), from the
    unpruned video's ``positions [T * L, 3+]`` (``compute_mrope_for_media``) and its merged grid ``(H, W)``."""
    if rule == "hf5":
        return max(grid)
    if rule == "evs":
        return grid[1]
    if rule == "max1":
        return int(positions[:, :3].max()) + 1
    raise ValueError(f"tango_text_pos={rule!r}; valid: {list(TEXT_POSITIONS)}")


class TangoQwen2_5_VLProcessor(Qwen2_5_VLMultiModalProcessor):
    """Writes ``method.count(...)`` video placeholders when pruning is on."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        rate = self.info.ctx.get_mm_config().video_pruning_rate
        if not rate:
            return updates
        method = method_from_config(self.info.get_hf_config())
        merge = self.info.get_image_processor(**hf_processor_mm_kwargs).merge_size
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        video_token = self.info.get_tokenizer().get_vocab()[hf_processor.video_token]

        def video_placeholders(item_idx: int) -> list[int]:
            t, h, w = (int(v) for v in out_mm_kwargs["video"][item_idx]["video_grid_thw"].data)
            grid = (h // merge, w // merge)
            return [video_token] * method.count(t, grid[0] * grid[1], 1.0 - rate, grid)

        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=[video_token], replacement=video_placeholders)]


@MULTIMODAL_REGISTRY.register_processor(TangoQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class TangoQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Stock Qwen2.5-VL whose video pruning step is the harness method (module doc)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.tango_method = method_from_config(self.config) if self.video_pruning_rate else None
        self.tango_text_pos = getattr(self.config, "tango_text_pos", None) or "hf5"
        if self.tango_text_pos not in TEXT_POSITIONS:
            raise ValueError(f"tango_text_pos={self.tango_text_pos!r}; valid: {list(TEXT_POSITIONS)}")
        method = self.tango_method
        #: the vision attention source the method reads (None: none), computed in _process_video_input
        self.tango_source = method.attention_source if method is not None and method.needs_attention else None
        attn = self.visual.blocks[self.visual.fullatt_block_indexes[-1]].attn
        if self.tango_source and (self.use_data_parallel or attn.tp_size > 1
                                  or vllm_config.compilation_config.compile_mm_encoder):
            raise NotImplementedError(f"{method.name} reads the vision encoder's attention, computed for a whole, "
                                      "eager encoder: not with a data- or tensor-parallel or compiled encoder")
        self._tango_signals: list[dict[str, torch.Tensor]] | None = None

    def _process_video_input(self, video_input) -> tuple[torch.Tensor, ...]:
        """vLLM's video encoding; for a method that needs attention, each video's attention source is captured
        (:func:`vision_attention`) for :meth:`_postprocess_video_embeds_evs`, which vLLM calls next."""
        if self.tango_source is None:
            return super()._process_video_input(video_input)
        if video_input["type"] == "video_embeds":
            raise ValueError(f"{self.tango_method.name} needs the vision encoder's attention: send the video, not "
                             "precomputed video_embeds")
        with vision_attention(self.visual, video_input["video_grid_thw"].tolist(), self.tango_source) as signals:
            embeds = super()._process_video_input(video_input)
        self._tango_signals = signals
        return embeds

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input) -> tuple[torch.Tensor, ...]:
        """Per video: ``[T * L, D]`` merged ViT tokens (and the attention signal :meth:`_process_video_input`
        captured, for a method that needs one) -> the method's kept tokens ``[M, D + 4]`` with their ``(t, h, w)``
        ids and the text offset appended (vLLM's EVS layout)."""
        grid_thw = video_input["video_grid_thw"].tolist()
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise ValueError("second_per_grid_ts is required to prune a video (pass the video's metadata)")
        merge = self.visual.spatial_merge_size
        tps = self.config.vision_config.tokens_per_second
        temporal = self.config.vision_config.temporal_patch_size
        budget = 1.0 - self.video_pruning_rate
        signals, self._tango_signals = self._tango_signals, None
        if self.tango_source is None:
            signals = [{}] * len(grid_thw)
        elif signals is None or len(signals) != len(grid_thw):
            raise RuntimeError(f"{self.tango_method.name}: no vision attention captured for these {len(grid_thw)} "
                               "videos")
        out = []
        for emb, thw, spg, sig in zip(video_embeds_split, grid_thw, seconds.tolist(), signals):
            t, h, w = (int(v) for v in thw)
            grid = (h // merge, w // merge)
            length = grid[0] * grid[1]
            x = emb.view(t, length, -1)
            signal = {"attn": sig.get("attn"), "metric": sig.get("metric")}
            if signal["metric"] is None and self.tango_source == "pooling_head":  # as the harness: per-frame mean
                signal["metric"] = x.mean(dim=1)
            signal["timestamps"] = patch_times(t, float(spg), temporal)
            sel = self.tango_method.prune(x, budget=budget, grid=grid, **signal)
            expected = self.tango_method.count(t, length, budget, grid)
            if sel.tokens.shape[0] != expected:  # the frontend wrote `expected` placeholders: fail this loudly
                raise RuntimeError(f"{self.tango_method.name} kept {sel.tokens.shape[0]} tokens, its count() says "
                                   f"{expected} (grid {thw})")
            pos = compute_mrope_for_media(torch.tensor(thw), merge, tokens_per_second=tps,
                                          video_second_per_grid=float(spg))
            pos[:, 3] = text_position(self.tango_text_pos, pos, grid)
            pos = pos.to(emb.device)[sel.indices.to(emb.device)]
            out.append(torch.cat([sel.tokens.to(emb.dtype), pos.to(emb.dtype)], dim=1))
            if os.environ.get(RECORD_ENV):  # the kept indices and prune's inputs, for parity tests
                with open(os.environ[RECORD_ENV], "a") as f:
                    f.write(json.dumps({"method": self.tango_method.name, "grid_thw": thw,
                                        "indices": sel.indices.tolist(),
                                        **{k: v.tolist() for k, v in signal.items() if v is not None}}) + "\n")
        return tuple(out)
