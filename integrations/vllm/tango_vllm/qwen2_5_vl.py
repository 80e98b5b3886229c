"""Qwen2.5-VL in vLLM with a harness pruning method between the vision encoder and the LLM.

vLLM's own pruning path (EVS) is reused at its three hook points, with the harness's method in EVS's place:

1. **Placeholders** (frontend, before the vision encoder runs): the prompt gets exactly ``method.count(T, L, budget,
   grid)`` video tokens (``T`` temporal patches, ``L = (H/2)(W/2)`` merged tokens each). Only *servable* methods
   (``PruningMethod.servable``: acting before the LLM, count known from the shape) can be served; another count
   would kill the engine.
2. **Pruning** (worker, after the ViT and merger): ``method.prune(x [T, L, D], budget, grid, timestamps)``, the
   harness's code unchanged; kept tokens carry their original 3-D M-RoPE ids ``(t, h, w)`` as 3 extra channels
   (vLLM's convention), gathered by ``Selection.indices`` as the harness does.
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
from collections.abc import Mapping, Sequence
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

TEXT_POSITIONS = ("hf5", "max1", "evs")
#: a file path: each pruned video's kept indices are appended to it as a JSON line (tests)
RECORD_ENV = "TANGO_VLLM_RECORD"


def method_from_config(hf_config) -> Any:
    """The harness method named by ``hf_config.tango_method`` with ``tango_hparams``; refuses one that cannot be
    served, naming the servable ones."""
    name = getattr(hf_config, "tango_method", None)
    if name is None:
        raise ValueError("video_pruning_rate is set but hf_overrides has no 'tango_method'; valid: "
                         f"{sorted(METHODS)}")
    hparams = getattr(hf_config, "tango_hparams", None) or {}
    method = build_method(name, **(json.loads(hparams) if isinstance(hparams, str) else dict(hparams)))
    servable = sorted(n for n in METHODS if build_method(n).servable and not build_method(n).needs_attention)
    if not method.servable:
        raise ValueError(f"method {name!r} with {hparams or 'its defaults'} is not servable: its kept count depends on "
                         f"the video or it acts inside the LLM. Served here at their defaults: {servable} (and vidcom2 "
                         "with count_rule=vllm, dycoke with kv_pruning=false)")
    if method.needs_attention:
        raise ValueError(f"method {name!r} needs a vision attention signal ({method.attention_source}), which this "
                         "plugin does not compute yet")
    return method


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

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input) -> tuple[torch.Tensor, ...]:
        """Per video: ``[T * L, D]`` merged ViT tokens -> the method's kept tokens ``[M, D + 4]`` with their
        ``(t, h, w)`` ids and the text offset appended (vLLM's EVS layout)."""
        grid_thw = video_input["video_grid_thw"].tolist()
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise ValueError("second_per_grid_ts is required to prune a video (pass the video's metadata)")
        merge = self.visual.spatial_merge_size
        tps = self.config.vision_config.tokens_per_second
        budget = 1.0 - self.video_pruning_rate
        out = []
        for emb, thw, spg in zip(video_embeds_split, grid_thw, seconds.tolist()):
            t, h, w = (int(v) for v in thw)
            grid = (h // merge, w // merge)
            length = grid[0] * grid[1]
            sel = self.tango_method.prune(emb.view(t, length, -1), budget=budget, grid=grid,
                                          timestamps=torch.arange(t, dtype=torch.float32) * float(spg))
            expected = self.tango_method.count(t, length, budget, grid)
            if sel.tokens.shape[0] != expected:  # the frontend wrote `expected` placeholders: fail this loudly
                raise RuntimeError(f"{self.tango_method.name} kept {sel.tokens.shape[0]} tokens, its count() says "
                                   f"{expected} (grid {thw})")
            pos = compute_mrope_for_media(torch.tensor(thw), merge, tokens_per_second=tps,
                                          video_second_per_grid=float(spg))
            pos[:, 3] = text_position(self.tango_text_pos, pos, grid)
            pos = pos.to(emb.device)[sel.indices.to(emb.device)]
            out.append(torch.cat([sel.tokens.to(emb.dtype), pos.to(emb.dtype)], dim=1))
            if os.environ.get(RECORD_ENV):  # the kept indices, for parity tests against the harness
                with open(os.environ[RECORD_ENV], "a") as f:
                    f.write(json.dumps({"method": self.tango_method.name, "grid_thw": thw,
                                        "indices": sel.indices.tolist()}) + "\n")
        return tuple(out)
