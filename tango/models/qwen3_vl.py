"""Qwen3-VL adapter (``Qwen3VLForConditionalGeneration``, transformers 5.23).

What differs from Qwen2.5-VL (:mod:`tango.models.qwen2_5_vl`, whose pre-LLM path, positions and attention sources
this adapter reuses), and how the harness handles it:

- **Prompt layout.** One block per temporal patch ``t``: ``<{time:.1f} seconds><|vision_start|><|video_pad|> x L
  <|vision_end|>``, so the ``N L`` visual tokens are ``N`` runs separated by text. transformers 4.57's processor
  replaced the chat template's whole ``<|vision_start|><|video_pad|><|vision_end|>`` by these blocks; 5.x
  replaces only the pad token, which nests every block inside the template's own start / end pair. The harness
  follows 4.57's rule (the layout the checkpoint was released and evaluated with): the template's wrapper is
  removed before the processor expands the pad (:meth:`Qwen3VL.prompt`, tested). Timestamps are the processor's
  (``frames_indices / fps`` averaged over each temporal patch) and are also what Tango's ST-RoPE receives.
- **Pruned layout.** The kept tokens are grouped by their source temporal patch (a stable sort of the method's
  output by ``index // L``: the identity for every method whose output is already frame-major) and placed in that
  patch's block. Timestamp text and the vision start / end tokens are never pruned: **a temporal patch whose every
  token is dropped keeps its ``<t seconds><|vision_start|><|vision_end|>``**, as the authors' Qwen3-VL code of
  FlashVID and VidCom2 does (they gather only video-pad positions). Each kept token keeps its original 3-D M-RoPE
  id from the model's ``get_rope_index`` on the unpruned prompt (a merged token: its representative's), text keeps
  its ids, and decoding continues from the unpruned last position + 1, which here equals ``max + 1`` (the prompt
  ends with text). ``generate`` receives the 4-row ids the model builds itself (row 0: the sequence positions the
  causal mask uses), so at budget 1 the run is bit-exact with ``model.generate(**processor_inputs)`` (tested).
- **DeepStack.** The tower also returns one feature map per ``deepstack_visual_indexes`` entry; the model adds map
  ``i`` to the visual positions after decoder layer ``i``. The harness gathers every map with the kept indices
  (a merged token gets its representative's feature, as FlashVID's Qwen3-VL code does) and adds them with forward
  hooks (:func:`tango.hooks.add_after_layers`, the model's own arithmetic) instead of through the model, so an
  in-LLM drop before the last DeepStack layer keeps every map aligned with the tokens still present.
- **Attention sources.** Every ViT block is full attention and there is no window permutation (rows are merge
  units of 4 consecutive patches in raster order). ``pooling_head`` (Tango, FastVID, FlashVID) and ``last_layer``
  (VisionZip, HoliTom) read the **last** block, by analogy with Qwen2.5-VL, where Tango's reference reads the last
  full-attention block (also the last block): the deepest layer whose attention sees the whole temporal patch.
- In-LLM stages use :func:`tango.hooks.qwen3_attention_row` (``q_norm`` before the rotation).
"""

from __future__ import annotations


import numpy as np
import torch

from tango.flops import _get, llm_prefill_flops
from tango.methods.base import PruningMethod
from tango.models import full_configs
from tango.models.base import FamilySpec, Generation, prefill_and_decode
from tango.models.qwen2_5_vl import VIDEO_TYPE, Qwen25VL
from tango.models.tiny import build_tiny_qwen3_vl
from tango.video import Clip

TEMPLATE_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def _video_tokens(config, frames: int, frame_hw=(448, 448)) -> tuple[int, int]:
    """Visual tokens and the vision start / end pair of every temporal patch (the timestamp text is text)."""
    t, _, _ = full_configs.qwen3_video_grid(config, frames, *frame_hw)
    return full_configs.qwen3_video_tokens(config, frames, *frame_hw), 2 * t


def _prefill_flops(config, frames: int, tokens_per_layer, frame_hw=(448, 448)) -> dict:
    return qwen3_vl_prefill_flops(config, full_configs.qwen3_video_grid(config, frames, *frame_hw), tokens_per_layer)


def _plain_raster(rows: torch.Tensor, grid_thw: torch.Tensor, vision_cfg) -> torch.Tensor:
    """``[T * L, ...]`` merged tokens in the tower's order (already raster, no windows) -> ``[T, L, ...]``."""
    return rows.view(int(grid_thw[0, 0]), -1, *rows.shape[1:])


class Qwen3VL(Qwen25VL):
    family = "qwen3_vl"
    spec = FamilySpec(display_name="Qwen3-VL-8B", hf_class="Qwen3VLForConditionalGeneration",
                      hub_id="Qwen/Qwen3-VL-8B-Instruct", full_config=full_configs.qwen3_vl_8b_config,
                      offline_processor=full_configs.qwen3_vl_processor, build_tiny=build_tiny_qwen3_vl,
                      video_tokens=_video_tokens, prefill_flops=_prefill_flops)
    to_raster = staticmethod(_plain_raster)  # no window permutation
    preprocessing_options = ("video_resize", "min_pixels", "max_pixels", "video_layout")

    def prompt(self, question: str) -> str:
        """The chat template's text with its per-video ``<|vision_start|><|video_pad|><|vision_end|>`` reduced to the
        pad, which the processor expands to the per-temporal-patch blocks (transformers 4.57's layout; module doc)."""
        text = super().prompt(question)
        if self.preprocessing.video_layout == "nested":  # left to the processor: 5.x nests the blocks in the pair
            return text
        if text.count(TEMPLATE_VIDEO) != 1:
            raise ValueError(f"the chat template should emit {TEMPLATE_VIDEO!r} once for the video; got {text!r}")
        return text.replace(TEMPLATE_VIDEO, self.processor.video_token)

    @staticmethod
    def timestamps(clip: Clip, grid_t: int) -> torch.Tensor:
        """``[grid_t]`` seconds, the prompt's own: each temporal patch's first and last frame times averaged, the last
        frame repeated to fill the final patch (``Qwen3VLProcessor._calculate_timestamps``)."""
        times = np.asarray(clip.timestamps, dtype=np.float64)
        if len(times) % 2:
            times = np.append(times, times[-1])
        if len(times) != 2 * grid_t:
            raise ValueError(f"{len(clip.timestamps)} frame times do not fill grid_t={grid_t} temporal patches of 2")
        return torch.as_tensor((times[0::2] + times[1::2]) / 2, dtype=torch.float32)

    def _attention_block(self, visual):
        """Every block is full attention: the last one (module doc)."""
        return visual.blocks[-1]

    def _prefill_flops(self, thw, per_layer) -> dict:
        return qwen3_vl_prefill_flops(self.model.config, thw, per_layer)

    @torch.inference_mode()
    def generate(self, inputs: dict, clip: Clip, method: PruningMethod, budget: float,
                 max_new_tokens: int = 16, stop: list[str] | None = None) -> Generation:
        sw, t_start, thw, length, out, sel = self._encode_and_prune(inputs, clip, method, budget)
        n = thw[0]
        # Each kept token goes into its source patch's block: group by patch, keeping the method's order inside it.
        order = torch.argsort(torch.div(sel.indices, length, rounding_mode="floor"), stable=True)
        tokens, indices = sel.tokens[order], sel.indices[order]

        ids_p, pos_p = self.pruned_positions(inputs, indices, length)
        embeds = self.model.get_input_embeddings()(ids_p)
        is_video_p = ids_p == self.video_token_id
        embeds[is_video_p] = tokens.to(embeds.dtype)
        self.model.model.rope_deltas = (pos_p[1:, :, -1].amax(0) + 1 - ids_p.shape[1])[:, None]  # last + 1 = max + 1
        visual_pos = torch.nonzero(is_video_p[0])[:, 0]
        maps = [feats[0][indices] for feats in out.deepstack_features]

        text, stats, per_layer, ms = prefill_and_decode(
            self.model, self.processor, sw, t_start, embeds=embeds, ids=ids_p, sel=sel, method=method, budget=budget,
            video_token_id=self.video_token_id, n_vis=int(is_video_p.sum()), max_new_tokens=max_new_tokens, stop=stop,
            reply=self.preprocessing.reply, position_ids=pos_p, deepstack=(visual_pos, maps))
        stats["frames_emptied"] = n - int(torch.unique(torch.div(indices, length, rounding_mode="floor")).numel())
        return self._finish(text, stats, per_layer, ms, thw)

    def pruned_positions(self, inputs: dict, indices: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids with every text token and, inside temporal patch ``t``'s block, one video placeholder per entry
        of ``indices`` (flat ``t * L + l``, grouped by ``t``, in that order; duplicates allowed) whose patch is
        ``t``; and the 4-row position ids ``[4, 1, S']`` the model's own ``generate`` builds: row 0 ``arange(S')``
        (the causal mask's), rows 1-3 the 3-D M-RoPE ids of the unpruned prompt (``get_rope_index``), each
        placeholder taking the ids of its source token."""
        ids = inputs["input_ids"]
        mm = inputs.get("mm_token_type_ids")
        if mm is None:
            mm = torch.where(ids == self.video_token_id, VIDEO_TYPE, 0)
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=mm, video_grid_thw=inputs["video_grid_thw"],
                                                 attention_mask=inputs.get("attention_mask"))
        is_video = ids[0] == self.video_token_id
        n = int(inputs["video_grid_thw"][0, 0])
        video_pos = torch.nonzero(is_video)[:, 0]
        if video_pos.numel() != n * length:
            raise ValueError(f"the prompt holds {video_pos.numel()} video placeholders, not {n} x {length}")
        text_pos = torch.nonzero(~is_video)[:, 0]
        indices = indices.to(ids.device)
        frame = torch.div(indices, length, rounding_mode="floor")
        counts = torch.bincount(frame, minlength=n)
        rank = torch.arange(indices.numel(), device=ids.device) - (torch.cumsum(counts, 0) - counts)[frame]
        # Sort key: a text token at its position; a kept token at its patch's first placeholder, then by its rank
        # among that patch's kept tokens (that position is never a text position, so keys are distinct).
        scale = indices.numel() + 1
        key = torch.cat([text_pos * scale, video_pos[frame * length] * scale + rank])
        src = torch.cat([text_pos, video_pos[indices]])[torch.argsort(key)]
        seq = torch.arange(src.numel(), device=ids.device).view(1, 1, -1)
        return ids[:, src], torch.cat([seq, pos[:, :, src]], dim=0)


def qwen3_vl_vision_flops(vision_cfg, grid_thw) -> dict[str, float]:
    """Qwen3-VL ViT on one video grid ``(t, h, w)`` (patches): patch embedding (Conv3d) + blocks (full attention
    within each temporal patch, non-gated GELU MLP) as ``flops_vision``; the patch merger and the DeepStack mergers
    (one per ``deepstack_visual_indexes`` entry, each an MLP on the merged tokens) as ``flops_projector``.

    Conventions of :mod:`tango.flops` (linear ``2 * n * d_in * d_out``, attention ``QK^T`` and ``AV`` over each
    segment's full square; norms, the learned position-grid interpolation, RoPE and activations not counted)."""
    t, h, w = (int(v) for v in grid_thw)
    d, ff = _get(vision_cfg, "hidden_size"), _get(vision_cfg, "intermediate_size")
    p, tp = _get(vision_cfg, "patch_size"), _get(vision_cfg, "temporal_patch_size")
    m = _get(vision_cfg, "spatial_merge_size")
    s = t * h * w
    embed = 2 * s * d * _get(vision_cfg, "in_channels", 3) * tp * p * p
    linear = 2 * s * d * 3 * d + 2 * s * d * d + 2 * 2 * s * d * ff               # qkv, proj, fc1 + fc2
    attention = t * 2 * 2 * (h * w) ** 2 * d                                         # one segment per temporal patch
    blocks = _get(vision_cfg, "depth") * (linear + attention)
    hid, merged = d * m * m, s // (m * m)
    merger = 2 * merged * hid * hid + 2 * merged * hid * _get(vision_cfg, "out_hidden_size")
    return {"flops_vision": float(embed + blocks),
            "flops_projector": float(merger * (1 + len(_get(vision_cfg, "deepstack_visual_indexes"))))}


def qwen3_vl_prefill_flops(config, grid_thw, tokens_per_layer) -> dict[str, float]:
    """Prefill FLOPs of Qwen3-VL split into vision tower, mergers (projector) and LLM. The DeepStack additions are
    elementwise (not counted)."""
    return {**qwen3_vl_vision_flops(config.vision_config, grid_thw),
            "flops_llm": llm_prefill_flops(config.text_config, tokens_per_layer)}
