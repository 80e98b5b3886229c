"""Qwen3-VL in vLLM with a harness pruning method between the vision encoder and the LLM.

vLLM's Qwen3-VL already prunes videos (EVS / VidCom²) at two hook points; the harness's method takes the place of
vLLM's retention mask at both, and vLLM builds everything else itself:

1. **Placeholders** (frontend): vLLM writes a pruned video as per-temporal-patch timestamp text and vision start /
   end tokens around ``[num_tokens] + [0] * (T - 1)`` video tokens (the per-frame split is unknown before the
   encoder runs; every token of the block is a placeholder, ``PromptUpdateDetails.from_seq``). The plugin's
   processor keeps that and sets ``num_tokens = method.count(T, L, budget, grid)``: only *servable* methods.
2. **Pruning** (worker, ``_postprocess_video_embeds_evs``): per video, ``method.prune`` on the merger's output (the
   main channels ``emb[:, :visual_dim]`` as ``[T, L, D]``), the harness's code unchanged; the DeepStack channels
   ``emb[:, visual_dim:]`` follow each output's representative (``Selection.indices``; a merged token gets its
   representative's DeepStack features, as the harness). The kept set becomes vLLM's retention mask (rows in
   ascending flat index, the mask's order) and vLLM's ``_create_final_video_embeddings`` builds the real layout:
   per temporal patch its timestamp text, vision start, its kept tokens, vision end (a patch with none kept keeps
   its text and start / end pair), the DeepStack channels, and the kept tokens' original M-RoPE ids (text keeps the
   unpruned ids, so the text after the video starts at the unpruned position: vLLM puts it at the block's max + 1,
   the block's last vision end).

Differences from the harness's Qwen3-VL adapter (:mod:`tango.models.qwen3_vl`), which lays out a pruned video the same
way: inside one temporal patch the harness keeps the method's output order, this plugin ascending flat index
(vLLM's mask). The two agree for every method whose output is ascending within each patch (checked on random
inputs: none, EVS, random, uniform pooling, VidCom² with ``count_rule=vllm``, Tango and HoliTom with
``count_rule=exact``); VisionZip's and DyCoke's TTM outputs are not (the same tokens and ids, another order inside a
patch, so the LLM's output differs from the harness's). A mask cannot hold an index twice, so a method whose
``Selection`` can repeat an index is refused at start (:data:`REPEATS_INDICES`: FlashVID), and any repeat at run time
fails loudly.

Configuration as for Qwen2.5-VL (``hf_overrides``: ``architectures: ["TangoQwen3VLForConditionalGeneration"]``,
``tango_method``, ``tango_hparams``; the budget is ``1 - video_pruning_rate``). No ``tango_text_pos``: the text after
the video is always at its unpruned position (the harness's, transformers 5.23's). Timestamps (``prune``'s
``timestamps [T]``) are vLLM's per-patch times, the processor's rule the harness uses (``Qwen3VL.timestamps``).
A method that reads the vision attention gets it from the tower's last block (every block is full attention, no
window order), recomputed beside vLLM's kernel by the Qwen2.5-VL plugin's hook (:func:`vision_attention`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from tango_vllm.qwen2_5_vl import RECORD_ENV, method_from_config, vision_attention

#: methods whose ``Selection.indices`` can repeat an index (FlashVID's ADTS can draw a token twice): a retention mask
#: cannot express that, so they are refused here
REPEATS_INDICES = ("flashvid",)


def qwen3_method_from_config(hf_config) -> Any:
    """:func:`method_from_config`, also refusing :data:`REPEATS_INDICES`."""
    method = method_from_config(hf_config)
    if method.name in REPEATS_INDICES:
        raise ValueError(f"method {method.name!r} can keep a token index twice, which vLLM's Qwen3-VL retention mask "
                         "cannot express; not served for Qwen3-VL (every other servable method is)")
    return method


def _raster(t: int, h: int, w: int):
    """Qwen3-VL's tower order is already raster (merge units, no windows): ``[T * L, ...]`` -> ``[T, L, ...]``."""
    return lambda rows: rows.view(t, -1, *rows.shape[1:])


class TangoQwen3VLProcessor(Qwen3VLMultiModalProcessor):
    """vLLM's Qwen3-VL prompt updates, with ``method.count(...)`` video tokens when pruning is on."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        rate = self.info.ctx.get_mm_config().video_pruning_rate
        if not rate:
            return updates
        hf_config = self.info.get_hf_config()
        method = qwen3_method_from_config(hf_config)
        merge = hf_config.vision_config.spatial_merge_size
        tokenizer = self.info.get_tokenizer()

        def video_repl(item_idx: int):
            # vLLM's own pruned placeholder layout (module doc), with the method's count
            item = out_mm_kwargs["video"][item_idx]
            t, h, w = (int(v) for v in item["video_grid_thw"].data)
            grid = (h // merge, w // merge)
            kept = method.count(t, grid[0] * grid[1], 1.0 - rate, grid)
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[kept] + [0] * (t - 1), timestamps=item["timestamps"].data, tokenizer=tokenizer,
                vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id, video_token_id=hf_config.video_token_id)

        return [PromptReplacement(modality="video", target=u.target, replacement=video_repl)
                if u.modality == "video" else u for u in updates]


@MULTIMODAL_REGISTRY.register_processor(TangoQwen3VLProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class TangoQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Stock Qwen3-VL whose video pruning step is the harness method (module doc)."""

    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        method = qwen3_method_from_config(self.config) if self.is_multimodal_pruning_enabled else None
        self.tango_method = method
        #: the vision attention source the method reads (None: none), computed in _process_video_input
        self.tango_source = method.attention_source if method is not None and method.needs_attention else None
        if self.tango_source and (self.use_data_parallel or self.visual.blocks[-1].attn.tp_size > 1
                                  or vllm_config.compilation_config.compile_mm_encoder):
            raise NotImplementedError(f"{method.name} reads the vision encoder's attention, computed for a whole, "
                                      "eager encoder: not with a data- or tensor-parallel or compiled encoder")
        self._tango_signals: list[dict[str, torch.Tensor]] | None = None

    def _process_video_input(self, video_input) -> tuple[torch.Tensor, ...]:
        """vLLM's video encoding; for a method that needs attention, each video's attention source is captured from
        the last block (:func:`vision_attention`) for :meth:`_postprocess_video_embeds_evs`, which vLLM calls next."""
        if self.tango_source is None:
            return super()._process_video_input(video_input)
        if video_input["type"] == "video_embeds":
            raise ValueError(f"{self.tango_method.name} needs the vision encoder's attention: send the video, not "
                             "precomputed video_embeds")
        with vision_attention(self.visual, video_input["video_grid_thw"].tolist(), self.tango_source,
                              block=self.visual.blocks[-1].attn, raster=_raster) as signals:
            embeds = super()._process_video_input(video_input)
        self._tango_signals = signals
        return embeds

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input) -> tuple[torch.Tensor, ...]:
        """Per video: ``[T * L, visual_dim * (1 + deepstack levels)]`` merger outputs -> vLLM's final per-patch
        layout ``[S, visual_dim * (1 + levels) + 5]`` (``_create_final_video_embeddings``) of the method's
        ``M = count()`` kept tokens, ``S`` = the video's prompt block (timestamps, start / end tokens, ``M``)."""
        if self.tango_method is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        grid_thw = video_input["video_grid_thw"].tolist()
        merge = self.visual.spatial_merge_size
        budget = 1.0 - self.video_pruning_rate
        method, dim = self.tango_method, self.visual_dim
        signals, self._tango_signals = self._tango_signals, None
        if self.tango_source is None:
            signals = [{}] * len(grid_thw)
        elif signals is None or len(signals) != len(grid_thw):
            raise RuntimeError(f"{method.name}: no vision attention captured for these {len(grid_thw)} videos")
        out = []
        for emb, thw, times, sig in zip(video_embeds_split, grid_thw, video_input.timestamps, signals):
            t, h, w = (int(v) for v in thw)
            grid = (h // merge, w // merge)
            length = grid[0] * grid[1]
            x = emb[:, :dim].view(t, length, dim)
            signal = {"attn": sig.get("attn"), "metric": sig.get("metric")}
            if signal["metric"] is None and self.tango_source == "pooling_head":  # as the harness: per-frame mean
                signal["metric"] = x.mean(dim=1)
            signal["timestamps"] = torch.tensor([float(s) for s in times], dtype=torch.float32)
            sel = method.prune(x, budget=budget, grid=grid, **signal)
            expected = method.count(t, length, budget, grid)
            if sel.tokens.shape[0] != expected:  # the frontend wrote `expected` placeholders: fail this loudly
                raise RuntimeError(f"{method.name} kept {sel.tokens.shape[0]} tokens, its count() says {expected} "
                                   f"(grid {thw})")
            idx, order = sel.indices.to(emb.device).sort()  # the retention mask's order (module doc)
            if expected > 1 and bool((idx[1:] == idx[:-1]).any()):
                raise RuntimeError(f"{method.name} kept a token index twice: not expressible as vLLM's Qwen3-VL "
                                   "retention mask")
            kept = torch.cat([sel.tokens.to(emb.device, emb.dtype)[order], emb[idx, dim:]], dim=1)
            mask = torch.zeros(t * length, dtype=torch.bool, device=emb.device)
            mask[idx] = True
            out.append(self._create_final_video_embeddings(
                video_embeddings=kept, num_tokens_per_frame=torch.bincount(idx // length, minlength=t).tolist(),
                timestamps=times, video_grid_thw=[t, h, w], retention_mask=mask))
            if os.environ.get(RECORD_ENV):  # the kept indices (method order) and prune's inputs, for parity tests
                with open(os.environ[RECORD_ENV], "a") as f:
                    f.write(json.dumps({"method": method.name, "grid_thw": thw, "indices": sel.indices.tolist(),
                                        **{k: v.tolist() for k, v in signal.items() if v is not None}}) + "\n")
        return tuple(out)
