"""Qwen2.5-VL adapter (``Qwen2_5_VLForConditionalGeneration``, transformers 5.23).

Pre-LLM pruning path, public seams only (``get_video_features`` and ``inputs_embeds``; no patched code):
ViT + merger (``get_video_features``) -> ``x [N, L, D]`` with ``N = grid_t`` temporal patches (2 frames each) and
``L = (grid_h/2) * (grid_w/2)`` merged tokens -> method -> ``inputs_embeds`` with exactly as many video placeholders
as kept tokens -> ``generate``.

Positions: unlike LLaVA, every kept token keeps its **original** 3-D M-RoPE id ``(t, h, w)``, as the reference Tango
code does. The full ``position_ids [3, 1, S]`` of the unpruned prompt come from the model's own
``model.model.get_rope_index`` (with ``mm_token_type_ids``, ``video_grid_thw`` and ``second_per_grid_ts``); the
columns of the kept text positions are kept, and the video columns are replaced by the ids of each output token's
source token (``Selection.indices``, so merged tokens take their representative's position). They are passed to
``generate`` as a **3-row** tensor: ``generate`` extends them by ``last + 1`` per decode step, so decoding continues
exactly where the unpruned prompt's would. With every token kept this is bit-exact with
``model.generate(**processor_inputs)`` (tested).

M-RoPE convention (explicit; tested on a clip whose temporal ids outrun the text): the harness reproduces
transformers 5.23 -- the model's own ``generate`` and so lmms-eval's ``qwen2_5_vl`` wrapper on this version: text
after the video starts at ``base + max(grid_h, grid_w) / merge`` (``get_rope_index``) even when the temporal ids
``t * tokens_per_second * second_per_grid`` go higher, and decoding continues at the **last** prompt position + 1.
transformers 4.x (the authors' Qwen code: Tango, FastVID on 4.51, FlashVID on 4.57) and vLLM start that text at
``max(t, h, w) + 1`` and decode at ``max + 1`` (``rope_deltas``). The two agree whenever the prompt's last position
is its maximum, i.e. the temporal extent ``t_max`` stays below ``max(grid_h, grid_w) / merge``; otherwise the text
after the video and every generated token sit at other positions (different logits; the answer can change).
``model.model.rope_deltas`` is set to ``last + 1 - S'`` (the model would store ``max + 1 - S``), so a manual
``forward`` loop with a cache continues where ``generate`` does (tested).

In-LLM stages are the method's own ``decoder_hooks`` (:mod:`tango.hooks`): the M-RoPE ``(cos, sin)`` the text layers
receive are already combined to ``(B, S, head_dim)``, so gathering them by kept position keeps each token's original
3-D rotation.

Attention source ``pooling_head`` (the Qwen2.5-VL path of https://github.com/xjtupanda/Tango): in the last
full-attention ViT block (``fullatt_block_indexes[-1]``) a forward hook recomputes queries and keys from that block's
``qkv`` projection and the rotary ``(cos, sin)`` it receives (the tower keeps its SDPA / FA2 kernel); per temporal
patch all patch queries are averaged into one query per head, keys are averaged over each 2x2 merge unit (4 consecutive rows in window
order), ``softmax(q k^T / sqrt(d))`` over that temporal patch's merged tokens, mean over heads, then the window
permutation is undone -> ``attn [N, L]``. Unlike the reference (bf16 matmul), means and softmax run in fp32.
Attention source ``last_layer`` (VisionZip), from the same hook: attention received per patch within its temporal
patch (mean over heads and queries) and the block's pre-RoPE keys, both averaged over each 2x2 merge unit.
The math after the ``q``/``k`` recomputation is :mod:`tango.models.vision_attention` (torch only), which the vLLM
plugin (``integrations/vllm``) runs on the queries and keys it recomputes inside vLLM's encoder.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from tango.flops import _get, llm_prefill_flops, llm_prefill_macs_paper
from tango.methods.base import PruningMethod
from tango.models import full_configs
from tango.models.base import FamilySpec, Generation, VideoAdapter, load_pretrained, prefill_and_decode
from tango.models.tiny import build_tiny_qwen2_5_vl
from tango.models.vision_attention import ATTENTION_SOURCES, unwindow
from tango.timing import Stopwatch
from tango.video import Clip

VIDEO_TYPE = 2  # mm_token_type_ids: 0 text, 1 image, 2 video


def _video_tokens(config, frames: int, frame_hw=(448, 448)) -> tuple[int, int]:
    return full_configs.qwen_video_tokens(config, frames, *frame_hw), 0


def _prefill_flops(config, frames: int, tokens_per_layer, frame_hw=(448, 448)) -> dict:
    return qwen2_5_vl_prefill_flops(config, full_configs.qwen_video_grid(config, frames, *frame_hw), tokens_per_layer)


class Qwen25VL(VideoAdapter):
    family = "qwen2_5_vl"
    spec = FamilySpec(display_name="Qwen2.5-VL-7B", hf_class="Qwen2_5_VLForConditionalGeneration",
                      hub_id="Qwen/Qwen2.5-VL-7B-Instruct", full_config=full_configs.qwen2_5_vl_7b_config,
                      offline_processor=full_configs.qwen2_5_vl_processor, build_tiny=build_tiny_qwen2_5_vl,
                      video_tokens=_video_tokens, prefill_flops=_prefill_flops)

    preprocessing_options = ("video_resize", "min_pixels", "max_pixels")
    #: ``(rows [T * L, ...], grid_thw, vision_cfg) -> [T, L, ...]`` for the attention sources; None: undo the window
    #: permutation (:func:`_to_raster`).
    to_raster = None

    def __init__(self, pretrained: str, device: torch.device, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny: bool = False, seed: int = 0):
        import transformers

        self._setup(*load_pretrained(getattr(transformers, self.spec.hf_class), self.family, pretrained, device,
                                     dtype, attn_implementation, tiny, seed), device)

    def _setup(self, model, processor, device) -> None:
        super()._setup(model, processor, device)
        self.merge = self.model.config.vision_config.spatial_merge_size

    def prepare(self, clip: Clip, question: str) -> dict:
        """Processor inputs on the model's device: ``input_ids``, ``attention_mask``, ``mm_token_type_ids [1, S]``,
        ``pixel_values_videos [grid_t*grid_h*grid_w, C*2*14*14]``, ``video_grid_thw [1, 3]``, ``second_per_grid_ts``.

        The clip's frames are already sampled by the harness (``do_sample_frames=False``); its metadata gives the
        processor the real sampled frame rate, so ``second_per_grid_ts`` (the temporal M-RoPE spacing) is
        ``temporal_patch_size / sampled_fps`` as in qwen-vl-utils, instead of the processor's 24 fps fallback. The
        processor config's min/max pixels are kept; ``cap_pixels_per_frame=True`` is the qwen-vl-utils total-pixel
        cap. An odd frame count is padded by the processor (last frame repeated to fill the temporal patch)."""
        from transformers.video_utils import VideoMetadata

        videos_kwargs = {"do_sample_frames": False, "cap_pixels_per_frame": True}
        frames = clip.frames
        if self.preprocessing.video_resize == "qwen_vl_utils":  # resized already, as lmms-eval's Qwen wrappers do
            frames, videos_kwargs = self.qwen_vl_utils_resize(frames), {"do_sample_frames": False, "do_resize": False}
        if clip.avg_fps > 0 and clip.total_frames > 0:  # else the processor's 24 fps fallback
            videos_kwargs["video_metadata"] = [VideoMetadata(
                total_num_frames=int(clip.total_frames), fps=float(clip.avg_fps),
                frames_indices=[int(i) for i in clip.indices])]
        inputs = self.processor(text=self.prompt(question), videos=[frames], return_tensors="pt",
                                videos_kwargs=videos_kwargs)
        return {k: v.to(self.device) for k, v in inputs.items()}

    def qwen_vl_utils_resize(self, frames: np.ndarray) -> torch.Tensor:
        """``[T, H, W, 3]`` uint8 -> ``[T, 3, H', W']`` float, resized as qwen-vl-utils' ``fetch_video`` resizes a
        decoded video (its own ``smart_resize`` with the per-frame bounds it derives from ``min_pixels`` /
        ``max_pixels`` and its token limits, then bicubic with antialiasing), which the processor then only
        normalises (``do_resize=False``)."""
        from qwen_vl_utils import vision_process as qvu  # its own resize call and objects, as fetch_video uses them

        p = self.preprocessing
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        n, _, h, w = video.shape
        factor = self.processor.video_processor.patch_size * qvu.SPATIAL_MERGE_SIZE
        min_pixels = p.min_pixels if p.min_pixels is not None else qvu.VIDEO_MIN_TOKEN_NUM * factor * factor
        limit = max(min(qvu.VIDEO_MAX_TOKEN_NUM * factor * factor, qvu.MODEL_SEQ_LEN * factor * factor * 0.9 / n
                        * qvu.FRAME_FACTOR), int(min_pixels * 1.05))
        max_pixels = limit if p.max_pixels is None else min(p.max_pixels, limit)
        size = qvu.smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return qvu.transforms.functional.resize(video, list(size), interpolation=qvu.InterpolationMode.BICUBIC,
                                                antialias=True).float()

    @staticmethod
    def timestamps(clip: Clip, grid_t: int) -> torch.Tensor:
        """``[grid_t]`` seconds: the sampled-frame times linearly interpolated onto the temporal patches (reference
        ``vlmeval/vlm/qwen2_vl/model.py``: ``np.interp(linspace(0, F-1, grid_t), arange(F), times)``)."""
        times = np.asarray(clip.timestamps, dtype=np.float64)
        target = np.linspace(0, len(times) - 1, grid_t)
        return torch.as_tensor(np.interp(target, np.arange(len(times)), times), dtype=torch.float32)

    @contextmanager
    def _capture_attention(self, source: str | None, grid_thw: torch.Tensor):
        """While the tower runs, capture the method's attention source into the yielded dict, in raster order of the
        merged grid: ``attn [N, L]`` (and ``metric [N, L, head_dim]`` for ``last_layer``)."""
        captured: dict[str, torch.Tensor] = {}
        if source is None:
            yield captured
            return
        sources = {"pooling_head": mean_query_attention, "last_layer": received_attention}
        if source not in sources:
            raise ValueError(f"attention source {source!r}; valid: {sorted(sources)}")
        visual = self.model.model.visual

        def hook(mod, args, kwargs, out):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured.update(sources[source](mod, hidden, kwargs["position_embeddings"], grid_thw, visual.config,
                                            to_raster=self.to_raster))

        handle = self._attention_block(visual).attn.register_forward_hook(hook, with_kwargs=True)
        try:
            yield captured
        finally:
            handle.remove()

    def _attention_block(self, visual):
        """The ViT block the attention sources read: the last full-attention one."""
        return visual.blocks[visual.fullatt_block_indexes[-1]]

    def _encode_and_prune(self, inputs: dict, clip: Clip, method: PruningMethod, budget: float):
        """One request's vision tower (with the method's attention source captured) and the method, timed:
        ``(stopwatch, start mark, (grid_t, grid_h, grid_w), L, tower output, Selection)``."""
        self.check_method(method)
        ids = inputs["input_ids"]
        thw = inputs["video_grid_thw"]
        if ids.shape[0] != 1 or thw.shape[0] != 1:
            raise ValueError(f"one request with one video at a time; got input_ids {tuple(ids.shape)}, "
                             f"video_grid_thw {tuple(thw.shape)}")
        n, gh, gw = (int(v) for v in thw[0])
        grid = (gh // self.merge, gw // self.merge)
        length = grid[0] * grid[1]

        sw = Stopwatch(self.device)
        t_start = sw.now()
        source = method.attention_source if method.needs_attention else None
        with self._capture_attention(source, thw) as cap, sw("vision"):
            out = self.model.model.get_video_features(inputs["pixel_values_videos"], thw)
        video = out.pooler_output[0]
        x = video.view(n, length, video.shape[-1])
        timestamps = self.timestamps(clip, n).to(self.device)
        metric = cap.get("metric")
        if metric is None and source == "pooling_head":  # the Tango reference's per-frame global feature on Qwen
            metric = x.mean(dim=1)
        with sw("pruning"):
            sel = method.prune(x, budget=budget, attn=cap.get("attn"), timestamps=timestamps, grid=grid, metric=metric)
        return sw, t_start, (n, gh, gw), length, out, sel

    def _prefill_flops(self, thw, per_layer) -> dict:
        return qwen2_5_vl_prefill_flops(self.model.config, thw, per_layer)

    def _finish(self, text: str, stats: dict, per_layer, ms: dict, thw) -> Generation:
        """Add the prefill FLOPs (exact and the papers' convention) to a request's figures."""
        flops = self._prefill_flops(thw, per_layer)
        stats.update({k.replace("flops_", "tflops_"): v / 1e12 for k, v in flops.items()})
        stats["tflops_prefill"] = sum(flops.values()) / 1e12
        stats["tflops_llm_paper"] = llm_prefill_macs_paper(self.model.config.text_config, per_layer) / 1e12
        stats["achieved_tflop_s"] = stats["tflops_prefill"] / (ms["ttft"] / 1e3) if ms["ttft"] > 0 else None
        return Generation(text=text, stats=stats)

    @torch.inference_mode()
    def generate(self, inputs: dict, clip: Clip, method: PruningMethod, budget: float,
                 max_new_tokens: int = 16, stop: list[str] | None = None) -> Generation:
        sw, t_start, thw, _, _, sel = self._encode_and_prune(inputs, clip, method, budget)
        ids_p, pos_p = self.pruned_positions(inputs, sel.indices, sel.tokens.shape[0])
        embeds = self.model.get_input_embeddings()(ids_p)
        is_video_p = ids_p == self.video_token_id
        embeds[is_video_p] = sel.tokens.to(embeds.dtype)
        # Where generate() continues (last + 1; module doc), for manual cached forward loops that read rope_deltas.
        self.model.model.rope_deltas = (pos_p[:, :, -1].amax(0) + 1 - ids_p.shape[1])[:, None]

        text, stats, per_layer, ms = prefill_and_decode(
            self.model, self.processor, sw, t_start, embeds=embeds, ids=ids_p, sel=sel, method=method, budget=budget,
            video_token_id=self.video_token_id, n_vis=int(is_video_p.sum()), max_new_tokens=max_new_tokens, stop=stop,
            reply=self.preprocessing.reply, position_ids=pos_p)
        return self._finish(text, stats, per_layer, ms, thw)

    def pruned_positions(self, inputs: dict, indices: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids with ``kept`` video placeholders and their 3-D M-RoPE ids ``[3, 1, S']``.

        The unpruned ids come from the model's ``get_rope_index``; text positions keep their columns, and the
        ``j``-th kept video placeholder takes the id of video token ``indices[j]`` (flat ``t * L + l``, raster order
        of the merged grid, which is also the order of the video placeholders)."""
        ids = inputs["input_ids"]
        mm = inputs.get("mm_token_type_ids")
        if mm is None:
            mm = torch.where(ids == self.video_token_id, VIDEO_TYPE, 0)
        pos, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=mm, video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs.get("second_per_grid_ts"), attention_mask=inputs.get("attention_mask"))
        is_video = ids[0] == self.video_token_id
        keep = ~is_video | (torch.cumsum(is_video, 0) <= kept)
        ids_p = ids[:, keep]
        pos_p = pos[:, :, keep].clone()
        pos_p[:, :, ids_p[0] == self.video_token_id] = pos[:, :, is_video][:, :, indices.to(pos.device)]
        return ids_p, pos_p


def _qk(attn_mod, hidden: torch.Tensor, position_embeddings):
    """The block's RoPE'd queries and keys ``[S, H, hd]`` and its keys before RoPE, recomputed from ``qkv``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        apply_rotary_pos_emb_vision,
    )

    s = hidden.shape[0]
    q, k, _ = attn_mod.qkv(hidden).reshape(s, 3, attn_mod.num_heads, attn_mod.head_dim).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q_rot, k_rot = apply_rotary_pos_emb_vision(q, k, cos, sin)
    return q_rot, k_rot, k


def _to_raster(window_order: torch.Tensor, grid_thw: torch.Tensor, vision_cfg) -> torch.Tensor:
    """``[T * L, ...]`` merged tokens in the ViT's window order -> ``[T, L, ...]`` raster order."""
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(grid_thw, vision_cfg.spatial_merge_size, vision_cfg.window_size,
                                              vision_cfg.patch_size)
    return unwindow(window_order, window_index, int(grid_thw[0, 0]))


def _attention_source(source: str, attn_mod, hidden: torch.Tensor, position_embeddings, grid_thw: torch.Tensor,
                      vision_cfg, to_raster=None) -> dict[str, torch.Tensor]:
    """``ATTENTION_SOURCES[source]`` (:mod:`tango.models.vision_attention`) on the block's recomputed ``q``/``k``."""
    to_raster = to_raster or _to_raster
    q, k, k_raw = _qk(attn_mod, hidden, position_embeddings)
    return ATTENTION_SOURCES[source](q, k, k_raw, tuple(int(v) for v in grid_thw[0]),
                                     vision_cfg.spatial_merge_size ** 2, attn_mod.scaling,
                                     lambda rows: to_raster(rows, grid_thw, vision_cfg))


def mean_query_attention(attn_mod, hidden: torch.Tensor, position_embeddings, grid_thw: torch.Tensor,
                         vision_cfg, to_raster=None) -> dict[str, torch.Tensor]:
    """Tango's Qwen2.5-VL saliency from one full-attention ViT block, in raster order of the merged grid
    (:func:`tango.models.vision_attention.pooling_head_attention`).

    Args:
        attn_mod: the block's ``Qwen2_5_VLVisionAttention``.
        hidden: ``[S, C]`` its input (after ``norm1``), in window order; ``S = grid_t * grid_h * grid_w``.
        position_embeddings: the rotary ``(cos, sin)`` it receives, ``[S, head_dim]`` each, in window order.
        grid_thw: ``[1, 3]`` the video's grid.
        to_raster: ``(rows [T * L, ...], grid_thw, vision_cfg) -> [T, L, ...]``, the tower's row order to raster
            order of the merged grid; default: undo Qwen2.5-VL's window permutation (Qwen3-VL has none).
    Returns:
        ``attn [grid_t, L]`` fp32, each row summing to 1.
    """
    return _attention_source("pooling_head", attn_mod, hidden, position_embeddings, grid_thw, vision_cfg, to_raster)


def received_attention(attn_mod, hidden: torch.Tensor, position_embeddings, grid_thw: torch.Tensor,
                       vision_cfg, to_raster=None) -> dict[str, torch.Tensor]:
    """VisionZip's source on Qwen2.5-VL, from the same full-attention block (the last block in released configs),
    arguments as :func:`mean_query_attention` (:func:`tango.models.vision_attention.last_layer_attention`).

    ``attn [grid_t, L]``: attention each patch receives within its temporal patch (softmax over that temporal
    patch's patches, mean over heads and queries), then the mean over each 2x2 merge unit (the analogue of LLaVA's
    2x2 pooling, so rows sum to 1/4). ``metric [grid_t, L, head_dim]``: the block's keys **before** RoPE (content only,
    like SigLIP's keys), mean over heads and over the merge unit. Frame by frame: ``[H, n, n]`` at a time."""
    return _attention_source("last_layer", attn_mod, hidden, position_embeddings, grid_thw, vision_cfg, to_raster)


def _window_lengths(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def qwen2_5_vl_vision_flops(vision_cfg, grid_thw) -> dict[str, float]:
    """Qwen2.5-VL ViT on one video grid ``(t, h, w)`` (patches): patch embedding (Conv3d) + blocks (windowed or
    full attention, each per temporal patch) as ``flops_vision``; the patch merger's MLP as ``flops_projector``.

    Conventions of :mod:`tango.flops` (linear ``2 * n * d_in * d_out``, attention ``QK^T`` and ``AV`` over each
    attention segment's full square, norms / RoPE / activations / softmax not counted)."""
    t, h, w = (int(v) for v in grid_thw)
    d, ff = _get(vision_cfg, "hidden_size"), _get(vision_cfg, "intermediate_size")
    p, tp, m = _get(vision_cfg, "patch_size"), _get(vision_cfg, "temporal_patch_size"), _get(vision_cfg, "spatial_merge_size")
    s = t * h * w
    embed = 2 * s * d * _get(vision_cfg, "in_channels", 3) * tp * p * p
    linear = 2 * s * d * 3 * d + 2 * s * d * d + 3 * 2 * s * d * ff                 # qkv, proj, gated MLP
    full = t * 2 * 2 * (h * w) ** 2 * d                                              # one segment per temporal patch
    ws = _get(vision_cfg, "window_size") // m // p                                   # window side in merged tokens
    windows = sum((r * c * m * m) ** 2 for r in _window_lengths(h // m, ws) for c in _window_lengths(w // m, ws))
    windowed = t * 2 * 2 * windows * d
    depth = _get(vision_cfg, "depth")
    n_full = len([i for i in _get(vision_cfg, "fullatt_block_indexes") if i < depth])
    blocks = depth * linear + n_full * full + (depth - n_full) * windowed
    hid, merged = d * m * m, s // (m * m)
    merger = 2 * merged * hid * hid + 2 * merged * hid * _get(vision_cfg, "out_hidden_size")
    return {"flops_vision": float(embed + blocks), "flops_projector": float(merger)}


def qwen2_5_vl_prefill_flops(config, grid_thw, tokens_per_layer) -> dict[str, float]:
    """Prefill FLOPs of Qwen2.5-VL split into vision tower, merger (projector) and LLM."""
    return {**qwen2_5_vl_vision_flops(config.vision_config, grid_thw),
            "flops_llm": llm_prefill_flops(config.text_config, tokens_per_layer)}
