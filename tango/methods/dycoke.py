"""DyCoke: temporal token merging (TTM) before the LLM + dynamic KV-cache pruning during decoding.

Paper: "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models" (CVPR'25), arXiv:2411.15024.
Reproduced: ``KD-TAO/DyCoke@dd7463498203479d0ff6f2d29c4e72928c0af244``:
stage 1 = ``llava/model/llava_arch.py::dycole_ttm`` (sic), stage 2 =
``llava/model/language_model/modeling_qwen2.py::PrunableDynamicCache.dycoke_pruning`` / ``update_cache``.
Parity is tested against both (``tests/fixtures/dycoke/``).

Stage 1, TTM (``prune``), on ``x [N, L, D]``; ``keep`` tokens per pruned frame:

- pass 1: frames 1, 3, 5, ... keep their ``keep`` tokens least cosine-similar to the same position in the previous
  frame (cosine of L2-normalised rows);
- pass 2: for ``i = 0, 4, 8, ...`` while ``i < N - 4``, frame ``i + 2`` keeps its ``keep`` tokens least similar to
  frame ``i`` (cosine of the raw rows); the other even frames ("anchors": 0, 4, ..., and the last even frames) stay
  full. At N = 32: anchors 0, 4, ..., 28 and 30 (9 frames).
- tokens are dropped, not averaged; output is frame-major, anchors in raster order, pruned frames in
  ascending-similarity order (the reference's sorted ``topk(largest=False)``). Positions are re-indexed after it.

Budget mapping (``budget`` = fraction of the ``N * L`` tokens entering the LLM), recorded as ``stats['regime']``:

- ``"ttm"``: ``keep = round((budget * N * L - A * L) / P)`` (``A`` anchors, ``P`` pruned frames), clipped to
  ``[0, L]``. Exact reference algorithm; the reference's own knob is ``keep = int((1 - k) * L)``.
- The reference cannot go below its **floor** ``A * L / (N * L)`` (all pruned frames empty): 28.1% at N = 32,
  ``stats['ttm_floor']``. Below it, regime ``"ttm_cap"`` (a variant, not in the paper): every frame, anchors
  included, keeps ``round(budget * N * L / N_used)`` tokens; pruned frames by the TTM rule, anchor ``f`` by least
  similarity to frame ``f - 1`` (frame 0: to frame 1). Discontinuous at the floor by design: just above it the
  reference keeps full anchors and near-empty pruned frames, just below it all frames get the same count.
- ``"ttm_k"``: ``merging_ratio`` (the reference's ``dycoke_k``) is set: ``keep = int((1 - k) * L)`` and ``budget`` is
  only checked (``budget == 1`` still returns the input); k = 0.7 keeps 3098 / 6272 tokens at N = 32.

Stage 2, decode-time KV selection (:func:`kv_select`; :meth:`DyCoke.decoder_hooks` calls it at every decode step
at layer ``kv_layer`` and gathers the cache of layers ``>= kv_layer``): the decode token's attention row at layer
``kv_layer - 1``, averaged over heads, sliced to the video span; if its cosine with the previous step's slice is
``< kv_threshold`` (or there is no previous step), keep the top ``int(image_len * (1 - kv_prune_ratio))`` video
tokens plus every non-video position; **otherwise nothing is pruned for that step** (the reference resets the
selection at layers ``< kv_layer`` every step, so stable steps use the full cache). The reference's
``image_len`` is the TTM output length **minus one** (the last video token is never prunable); use
:meth:`DyCoke.kv_positions`. Kept keys are post-RoPE, so original positions are kept implicitly.

Intentional deviations from the reference:

- ``budget`` mapping and the ``"ttm_cap"`` variant above (the reference has only ``k``).
- Similarities use the reference's own calls (pass 1: ``cosine_similarity`` of ``normalize``d frames; pass 2: of
  the raw frames), batched over frames: bit-identical values, so repeated or near-identical frames (static cameras,
  duplicated frames) order their near-tied tokens exactly as the reference (fixture case ``repeated_frames``).
  Computed in ``x``'s dtype, as the reference.
- N <= 4: pass 2 is skipped; the reference crashes (``torch.stack`` of an empty list). N < 2 raises.
- ``drop_odd_last_frame=False`` keeps the last frame of an odd-length video as an anchor; the default reproduces the
  reference, which silently drops it.
- :func:`kv_select` returns the kept positions sorted (the reference's are an unsorted top-k: same set; attention
  over a gathered cache does not depend on order), as a tensor instead of a Python list rebuilt in every layer.
- The previous step's attention is state the decoder hooks keep and reset per sample; the reference keeps it on the
  model, so the first step of a sample is compared with the last step of the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.hooks import keep_positions
from tango.methods.base import PruningMethod, SampleError, Selection, check_budget, identity_selection

#: How each regime turns ``budget`` into kept counts (recorded as ``stats['budget_rule']``; N frames of L tokens,
#: A anchor frames kept whole, P pruned frames, N_used frames the TTM schedule uses).
BUDGET_RULES = {
    "ttm": "round((r*N*L - A*L)/P) per pruned frame, anchors whole",
    "ttm_cap": "round(r*N*L/N_used) per frame, anchors included",
    "ttm_k": "int((1-k)*L) per pruned frame (merging_ratio k), anchors whole",
}

ANCHOR, PASS1, PASS2 = 0, 1, 2


def ttm_schedule(num_frames: int, drop_odd_last_frame: bool = True) -> tuple[Tensor, Tensor]:
    """Role of each used frame in TTM.

    Returns:
        ``kind [N_used]`` (0 anchor, 1 pass-1 frame, 2 pass-2 frame) and ``ref [N_used]``, the frame each one is
        compared with (anchors: the previous frame, frame 0: frame 1; only the ``ttm_cap`` variant uses it).
        ``N_used = N - N % 2`` when ``drop_odd_last_frame`` (the reference), else ``N``.
    """
    n_used = num_frames - num_frames % 2 if drop_odd_last_frame else num_frames
    if n_used < 2:  # a per-sample error: a video can decode to fewer frames than the config asks for (fps sampling)
        raise SampleError(
            f"dycoke needs at least 2 frames, got num_frames={num_frames} (drop_odd_last_frame={drop_odd_last_frame})"
        )
    f = torch.arange(n_used)
    kind = torch.full((n_used,), ANCHOR)
    kind[f % 2 == 1] = PASS1
    kind[(f % 4 == 2) & (f < num_frames - 2)] = PASS2
    ref = torch.where(kind == PASS2, f - 2, f - 1)
    ref[0] = 1
    return kind, ref


def _cos(x: Tensor, a: slice, b: slice, normalized: bool) -> Tensor:
    """Cosine of same-position tokens of frames ``x[a]`` and ``x[b]`` -> ``[F, L]``, with the reference's own calls:
    pass 1 ``cosine_similarity(normalize(frame_i), normalize(frame_j))``, pass 2 ``cosine_similarity`` of the raw
    frames. Batched over frames, the values are bit-identical to its per-frame calls (tested), so near-ties between
    repeated or near-identical frames order exactly as in the reference."""
    if normalized:
        return F.cosine_similarity(F.normalize(x[a], p=2, dim=-1), F.normalize(x[b], p=2, dim=-1), dim=-1)
    return F.cosine_similarity(x[a], x[b], dim=-1)


def _neighbour_similarity(x: Tensor, n_used: int, with_anchors: bool) -> Tensor:
    """``[N_used, L]`` similarity of each token to the same position in its TTM reference frame (ttm_schedule)."""
    n, length, _ = x.shape
    sim = torch.zeros(n_used, length, dtype=x.dtype, device=x.device)
    odd = n_used // 2
    # the reference's argument order: the earlier frame first
    sim[1:n_used:2] = _cos(x, slice(0, 2 * odd - 1, 2), slice(1, 2 * odd, 2), normalized=True)
    if with_anchors:  # ttm_cap: even frames vs the previous frame, frame 0 vs frame 1; pass-2 rows overwritten below
        even = (n_used - 1) // 2
        sim[2:n_used:2] = _cos(x, slice(1, 2 * even, 2), slice(2, 2 * even + 1, 2), normalized=True)
        sim[0] = _cos(x, slice(0, 1), slice(1, 2), normalized=True)[0]
    pass2 = len(range(2, n - 2, 4))
    if pass2:
        sim[2 : 4 * pass2 - 1 : 4] = _cos(x, slice(0, 4 * pass2 - 3, 4), slice(2, 4 * pass2 - 1, 4), normalized=False)
    return sim


def ttm_indices(x: Tensor, keep: int, anchor_keep: Optional[int] = None, drop_odd_last_frame: bool = True) -> Tensor:
    """Flat source indices (``frame * L + l``) kept by TTM, in output order.

    Args:
        x: ``[N, L, D]`` post-projector, post-pool frame tokens.
        keep: tokens kept per pruned (non-anchor) frame, ``0 <= keep <= L``.
        anchor_keep: None = anchors stay full (the reference); an int caps anchors too (the ``ttm_cap`` variant).
        drop_odd_last_frame: drop the last frame of an odd-length video, as the reference does.

    Returns:
        ``[M]`` long indices; ``x.reshape(-1, D)[indices]`` are the output tokens.
    """
    n, length, _ = x.shape
    kind = ttm_schedule(n, drop_odd_last_frame)[0].to(x.device)
    n_used = kind.numel()
    full = (kind == ANCHOR) if anchor_keep is None else torch.zeros_like(kind, dtype=torch.bool)
    count = torch.where(kind == ANCHOR, length if anchor_keep is None else anchor_keep, keep)
    sim = _neighbour_similarity(x, n_used, with_anchors=anchor_keep is not None)
    order = torch.arange(length, device=x.device).expand(n_used, length).clone()
    kmax = int(count[~full].max()) if bool((~full).any()) else 0
    if kmax > 0:
        order[~full, :kmax] = sim[~full].topk(kmax, dim=1, largest=False).indices
    valid = torch.arange(length, device=x.device) < count.unsqueeze(1)
    frame = torch.arange(n_used, device=x.device).unsqueeze(1)
    return (frame * length + order)[valid]


class KVStep(NamedTuple):
    """One decode step of DyCoke's KV selection."""

    keep: Optional[Tensor]  #: ``[S']`` sorted cache positions to attend at layers >= kv_layer; None = full cache
    image_attn: Tensor  #: ``[image_len]`` head-averaged video-span attention: pass it as ``prev`` next step
    similarity: float  #: cosine with the previous step's ``image_attn`` (0 on the first step)


def kv_select(
    attn: Tensor,
    prev: Optional[Tensor],
    *,
    visual: Tensor,
    prune_ratio: float,
    threshold: float = 0.9,
) -> KVStep:
    """DyCoke stage 2 for one decode step.

    Args:
        attn: ``[H, S]`` (or head-averaged ``[S]``) attention of the decode token at layer ``kv_layer - 1`` over the
            full cache of length ``S`` (the new token included).
        prev: ``[V]`` ``image_attn`` of the previous step of this sample, or None on its first step.
        visual: ``[V]`` sorted cache positions of the prunable video tokens (the reference: the TTM output but its
            last token, see ``DyCoke.kv_positions``).
        prune_ratio: fraction of the span dropped (``dycoke_p``); ``int(V * (1 - p))`` are kept.
        threshold: a step prunes only when the similarity with ``prev`` is below it.
    """
    row = attn.mean(0) if attn.dim() == 2 else attn
    image_attn = row[visual]
    sim = 0.0 if prev is None else float(F.cosine_similarity(image_attn, prev, dim=0))
    if sim >= threshold:
        return KVStep(None, image_attn, sim)
    top = visual[image_attn.topk(int(visual.numel() * (1 - prune_ratio))).indices]
    return KVStep(keep_positions(row.shape[0], visual, top), image_attn, sim)


@dataclass
class DyCoke(PruningMethod):
    """DyCoke: TTM at the LLM input (``prune``) + decode-time KV selection (``kv_select``)."""

    name: str = "dycoke"
    #: the reference's TTM knob k (``dycoke_k``, paper 0.7); set, it overrides the budget mapping (regime ttm_k).
    merging_ratio: Optional[float] = None
    #: drop the last frame of an odd-length video, as the reference does.
    drop_odd_last_frame: bool = True
    #: enable stage 2 (decode-time KV pruning, :meth:`decoder_hooks`).
    kv_pruning: bool = True
    #: decoder layer L from which the KV cache is pruned; the signal is layer L-1's attention (``dycoke_l``).
    kv_layer: int = 3
    #: fraction of the video span dropped from the KV cache at a pruned step (``dycoke_p``).
    kv_prune_ratio: float = 0.7
    #: a decode step prunes only when its attention's cosine with the previous step's is below this.
    kv_threshold: float = 0.9

    stage = "both"
    display_name = "DyCoke"
    nonstandard_regimes = {"ttm_cap": ("the budget is below DyCoke's floor (anchor frames kept whole; the run's "
                                       "method/ttm_floor, 28.1 % at 32 frames), so every frame keeps the same count, "
                                       "anchors included (harness variant, not in the paper)")}
    color = "#009E73"  # Okabe-Ito
    needs_attention = False

    def __post_init__(self) -> None:
        if self.merging_ratio is not None and not 0.0 <= self.merging_ratio <= 1.0:
            raise ValueError(f"merging_ratio={self.merging_ratio!r} is outside the valid range [0, 1] (or None)")
        if self.kv_layer < 1:
            raise ValueError(f"kv_layer={self.kv_layer!r} must be >= 1: the signal is the attention of layer kv_layer-1")
        if not 0.0 <= self.kv_prune_ratio < 1.0:
            raise ValueError(f"kv_prune_ratio={self.kv_prune_ratio!r} is outside the valid range [0, 1)")
        if not 0.0 <= self.kv_threshold <= 1.0:
            raise ValueError(f"kv_threshold={self.kv_threshold!r} is outside the valid range [0, 1]")

    def check_feasible(self, budget: float, num_frames: int) -> None:
        """TTM pairs frames: at most ``num_frames`` sampled frames must give at least 2 used ones."""
        if check_budget(budget) < 1.0:
            ttm_schedule(num_frames, self.drop_odd_last_frame)

    def plan(self, num_frames: int, tokens_per_frame: int, budget: float) -> dict:
        """Per-frame counts and regime for ``budget`` (see module doc); no tensors involved."""
        budget = check_budget(budget)
        kind, _ = ttm_schedule(num_frames, self.drop_odd_last_frame)
        n_used, anchors = kind.numel(), int((kind == ANCHOR).sum())
        pruned, total, length = n_used - anchors, num_frames * tokens_per_frame, tokens_per_frame
        floor = anchors * length
        anchor_keep = None
        if self.merging_ratio is not None:
            regime, keep = "ttm_k", int((1 - self.merging_ratio) * length)
        elif budget * total >= floor:
            regime, keep = "ttm", min(length, round((budget * total - floor) / pruned))
        else:
            regime = "ttm_cap"
            keep = anchor_keep = max(1, min(length, round(budget * total / n_used)))
        out = anchors * (length if anchor_keep is None else anchor_keep) + pruned * keep
        return {"regime": regime, "budget_rule": BUDGET_RULES[regime], "keep_per_frame": keep,
                "anchor_keep": anchor_keep, "anchor_frames": anchors,
                "dropped_frames": num_frames - n_used, "tokens_out": out, "ttm_floor": floor / total}

    @property
    def servable(self) -> bool:
        """Stage 1 (TTM) alone: its count is :meth:`plan`'s; stage 2 prunes the KV cache inside the decoder."""
        return not self.kv_pruning

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if not self.servable:
            return super().count(num_frames, tokens_per_frame, budget, grid)
        if check_budget(budget) == 1.0:
            return num_frames * tokens_per_frame
        return self.plan(num_frames, tokens_per_frame, budget)["tokens_out"]

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """TTM on ``x [N, L, D]``; the KV stage runs later, in the decoder (``kv_select``)."""
        budget = check_budget(budget)
        n, length, d = x.shape
        if budget == 1.0:
            sel = identity_selection(x)
            sel.stats.update(regime="identity")
            return sel
        plan = self.plan(n, length, budget)
        idx = ttm_indices(x, plan["keep_per_frame"], plan["anchor_keep"], self.drop_odd_last_frame)
        image_len = idx.numel() - 1
        kv_keep = int(image_len * (1 - self.kv_prune_ratio))
        stats = {
            "tokens_in": n * length,
            "tokens_out": idx.numel(),
            "regime": plan["regime"],
            "budget_rule": plan["budget_rule"],
            "keep_per_frame": plan["keep_per_frame"],
            "anchor_frames": plan["anchor_frames"],
            "dropped_frames": plan["dropped_frames"],
            "ttm_floor": plan["ttm_floor"],
            # Stage 2 acts on decode steps only: every layer sees the TTM output at prefill.
            "tokens_layer_avg": idx.numel(),
            # Visual KV entries attended at layers >= kv_layer on a pruned decode step (reference off-by-one kept).
            "kv_tokens_pruned_step": idx.numel() - image_len + kv_keep if self.kv_pruning else idx.numel(),
        }
        return Selection(tokens=x.reshape(-1, d)[idx], indices=idx, stats=stats)

    def kv_positions(self, visual: Tensor) -> Tensor:
        """The prunable video positions as the reference sets them: the TTM output but its last token."""
        return visual[:-1]

    def kv_select(self, attn: Tensor, prev: Optional[Tensor], *, visual: Tensor) -> KVStep:
        """:func:`kv_select` with this method's ``kv_prune_ratio`` and ``kv_threshold``."""
        return kv_select(attn, prev, visual=visual, prune_ratio=self.kv_prune_ratio, threshold=self.kv_threshold)

    def decoder_hooks(self, decoder, budget: float):
        """Stage 2: at each decode step, layers ``>= kv_layer`` attend to the KV entries :meth:`kv_select` keeps
        (the previous step's attention carried over, as the reference does)."""
        from contextlib import nullcontext

        from tango.hooks import restrict_decode_attention

        if not self.kv_pruning:
            return nullcontext({})
        visual = self.kv_positions(decoder.visual_positions)
        prev: dict = {"attn": None}

        def select(row):
            step = self.kv_select(row, prev["attn"], visual=visual.to(row.device))
            prev["attn"] = step.image_attn
            return step.keep
        return restrict_decode_attention(decoder.layers, self.kv_layer, select, attention_row=decoder.attention_row)


__all__ = ["DyCoke", "KVStep", "kv_select", "ttm_indices", "ttm_schedule"]
