"""VisionZip, SigLIP port for video LLMs: dominant tokens by received attention + contextual merged tokens.

Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR'25), arXiv:2412.04467.
Reproduced: the SigLIP / LLaVA-OneVision port used in published video comparisons,
``cokeshao/HoliTom@e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0``: the nested ``visionzip(...)`` function inside
``visionzip/llava_arch.py::LlavaMetaForCausalLM_visionzip.prepare_inputs_labels_for_multimodal`` (the official
``dvlab-research/VisionZip`` supports CLIP only). Parity is tested against that function
(``tests/fixtures/visionzip/``).

Algorithm, per frame of ``L`` pooled tokens, ``S`` output tokens (``budget_rule``, below):

- ``dominant = int(S * dominant_ratio)`` (54/64), ``contextual = S - dominant``;
- dominant = top-``dominant`` tokens by ``attn`` (no CLS on SigLIP, so all of them come from top-k), emitted in
  ascending position order (the port selects them with a boolean mask);
- the other ``R = L - dominant`` tokens, in position order: every ``max(1, R // contextual)``-th one is a target
  (the first ``contextual`` of them); every non-target joins the target of highest cosine of ``metric``;
  contextual token = target row + mean of its members (the target is not in the mean);
- output per frame: ``[dominant ..., contextual ...]``, frames in order.

What the adapter must feed (HoliTom's ``siglip_encoder.py`` with ``WRAPPER=visionzip``):

- ``x``: the projected features, pooled as usual (LLaVA-OV: bilinear 27x27 -> 14x14; LLaVA-Video: 2x2 average
  -> 13x13);
- ``attn [N, L]``: attention weights of the **last layer of the (26-layer) SigLIP tower**, averaged over heads,
  then over queries (attention *received* by each of the 729 patches), then pooled to ``L`` exactly like ``x``;
- ``metric [N, L, head_dim]``: that layer's key states (``k_proj`` output split into heads, no RoPE in SigLIP)
  averaged over heads, pooled like ``x``. Without ``metric`` the method falls back to ``x`` (``stats['metric']``
  records which one was used).

LLM positions are re-indexed contiguously after this method (pre-LLM). For LLaVA-Video's ``grid`` newlines set
``sort_by_position=True``: the port then sorts each frame's output by the representative token's position and the
adapter re-inserts the newlines: running the port shows one newline after *every* grid row, a row with no kept token
becoming a lone newline (``H`` newlines per frame; row of a token = ``index % L // W``).

Intentional deviations from the reference:

- Budget -> ``S`` per frame (``budget_rule``, recorded in ``stats['budget_rule']``): ``"scripts"`` (default) uses the
  authors' hand-set ``SPATIAL_TOKENS`` on 196-token LLaVA-OV frames, 20/30/40/50 at budgets 0.10/0.15/0.20/0.25
  (``scripts/eval_ov-7b_visionzip.sh``), and ``round(L * budget)`` for any other (L, budget), which the scripts never
  ran (``stats['budget_rule'] = "round"`` then); ``"round"`` always uses ``round(L * budget)`` (20/29/39/49 on 196).
- ``contextual == 0`` (only with ``dominant_ratio=1``) returns the dominant tokens only; the reference divides by zero.
- The merge ``bmm`` runs over all ``L`` source positions (zeros for non-members) instead of a gathered copy of the
  non-dominant rows: same sums, float rounding may differ in the last bits.
- ``budget == 1`` returns the input unchanged (the reference would reorder and "merge" zero members).
- ``sort_by_position=True`` pairs every token with its own position. The reference's ``grid`` path does not: it
  gathers the dominant *positions* in top-k order but the dominant *tokens* in ascending order, then sorts both by
  position, so dominant rows land in the wrong slots (found by running it; 26-27 of 28 dominant rows per frame in the
  fixture case). Positions, newline layout and contextual rows still match it; only that bug is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection

#: HoliTom's VisionZip script (scripts/eval_ov-7b_visionzip.sh): SPATIAL_TOKENS per 196-token frame by RETAIN_RATIO.
SCRIPT_TOKENS = {196: {0.1: 20, 0.15: 30, 0.2: 40, 0.25: 50}}
BUDGET_RULES = ("scripts", "round")


def visionzip_split(tokens_per_frame: int, dominant_ratio: float) -> tuple[int, int]:
    """``(dominant, contextual)`` for ``tokens_per_frame`` output tokens: ``int(S * ratio)`` and the rest."""
    dominant = int(tokens_per_frame * dominant_ratio)
    return dominant, tokens_per_frame - dominant


def visionzip_frames(
    x: Tensor, attn: Tensor, metric: Tensor, dominant: int, contextual: int, sort_by_position: bool = False
) -> tuple[Tensor, Tensor]:
    """VisionZip on every frame at once.

    Args:
        x: ``[N, L, D]`` features.
        attn: ``[N, L]`` attention received by each token (higher = more dominant).
        metric: ``[N, L, Dm]`` merge metric (keys); cosine similarity on it decides the contextual merge.
        dominant: dominant tokens per frame, ``0 <= dominant <= L``.
        contextual: contextual (merged) tokens per frame, ``0 <= contextual <= L - dominant``.
        sort_by_position: sort each frame's output by representative position (HoliTom's ``grid`` path).

    Returns:
        ``tokens [N, dominant + contextual, D]`` and ``positions [N, dominant + contextual]`` (within-frame index of
        each output token's representative: the dominant token itself, or the contextual target).
    """
    n, length, d = x.shape
    top = attn.topk(dominant, dim=1).indices
    is_dom = torch.zeros(n, length, dtype=torch.bool, device=x.device).scatter_(1, top, True)
    # A stable sort on "is not dominant" lists dominant positions ascending, then the rest ascending: the order the
    # reference's boolean-mask selection produces.
    order = torch.sort((~is_dom).to(torch.uint8), dim=1, stable=True).indices
    dom_pos, rest_pos = order[:, :dominant], order[:, dominant:]
    dom_tokens = x.gather(1, dom_pos.unsqueeze(-1).expand(-1, -1, d))
    if contextual == 0:
        tokens, positions = dom_tokens, dom_pos
    else:
        rest = length - dominant
        step = max(1, rest // contextual)
        tgt = torch.arange(0, rest, step, device=x.device)[:contextual]
        is_tgt = torch.zeros(rest, dtype=torch.bool, device=x.device)
        is_tgt[tgt] = True
        mem = (~is_tgt).nonzero().squeeze(1)
        tgt_pos, mem_pos = rest_pos[:, tgt], rest_pos[:, mem]
        m = metric.gather(1, rest_pos.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))
        m = m / m.norm(dim=-1, keepdim=True)
        assign = torch.bmm(m[:, mem], m[:, tgt].transpose(1, 2)).argmax(dim=2)  # [N, |mem|]
        # One-hot [N, contextual, L] over source positions, as the reference's bmm merge but indexing x in place:
        # x is read once instead of being gathered into a non-dominant copy first.
        onehot = torch.zeros(n, contextual * length, dtype=x.dtype, device=x.device)
        onehot.scatter_(1, assign * length + mem_pos, 1.0)
        onehot = onehot.view(n, contextual, length)
        summed = torch.bmm(onehot, x)
        counts = onehot.sum(-1, keepdim=True).clamp(min=1)
        ctx_tokens = x.gather(1, tgt_pos.unsqueeze(-1).expand(-1, -1, d)) + summed / counts
        tokens = torch.cat([dom_tokens, ctx_tokens], dim=1)
        positions = torch.cat([dom_pos, tgt_pos], dim=1)
    if sort_by_position:
        positions, perm = positions.sort(dim=1)
        tokens = tokens.gather(1, perm.unsqueeze(-1).expand(-1, -1, d))
    return tokens, positions


@dataclass
class VisionZip(PruningMethod):
    """VisionZip (HoliTom's SigLIP port), per frame, ``S`` tokens per frame by ``budget_rule``."""

    name: str = "visionzip"
    #: share of each frame's tokens that are dominant (top attention); the rest are contextual (merged).
    dominant_ratio: float = 54 / 64
    #: sort each frame's output by position (HoliTom's LLaVA-Video ``grid`` path); False = OV ``one_token`` order.
    sort_by_position: bool = False
    #: budget -> tokens per frame: "scripts" (the authors' SPATIAL_TOKENS where they ran, else round) or "round".
    budget_rule: str = "scripts"

    stage = "pre_llm"
    display_name = "VisionZip"
    color = "#56B4E9"  # Okabe-Ito
    needs_attention = True
    #: attention received in the last vision layer, with that layer's keys as ``metric`` (see the module doc)
    attention_source = "last_layer"
    #: LLaVA-Video layout: the port puts a newline after every grid row, kept token or not
    grid_newlines = "all_rows"

    def __post_init__(self) -> None:
        if not 0.0 <= self.dominant_ratio <= 1.0:
            raise ValueError(f"dominant_ratio={self.dominant_ratio!r} is outside the valid range [0, 1]")
        if self.budget_rule not in BUDGET_RULES:
            raise ValueError(f"budget_rule={self.budget_rule!r}; valid: {list(BUDGET_RULES)}")

    def tokens_per_frame(self, tokens_per_frame_in: int, budget: float) -> tuple[int, str]:
        """``(S, rule that gave it)``: the scripts' ``SPATIAL_TOKENS`` where they set one (``budget_rule="scripts"``),
        else ``round(L * budget)``, at least 1."""
        budget = check_budget(budget)
        script = SCRIPT_TOKENS.get(tokens_per_frame_in, {}).get(round(budget, 6))
        if self.budget_rule == "scripts" and script is not None:
            return script, "scripts"
        return max(1, min(tokens_per_frame_in, round(tokens_per_frame_in * budget))), "round"

    servable = True

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if check_budget(budget) == 1.0:
            return num_frames * tokens_per_frame
        return num_frames * self.tokens_per_frame(tokens_per_frame, budget)[0]

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """Per-frame VisionZip on ``x [N, L, D]`` with ``attn [N, L]`` and ``metric [N, L, Dm]`` (see module doc)."""
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, length, _ = x.shape
        if attn is None or attn.shape != (n, length):
            got = None if attn is None else tuple(attn.shape)
            raise ValueError(f"visionzip needs attn of shape {(n, length)} (SigLIP received attention), got {got}")
        if metric is not None and metric.shape[:2] != (n, length):
            raise ValueError(f"visionzip metric must be [N, L, Dm] = [{n}, {length}, Dm], got {tuple(metric.shape)}")
        s, rule = self.tokens_per_frame(length, budget)
        dominant, contextual = visionzip_split(s, self.dominant_ratio)
        tokens, pos = visionzip_frames(
            x, attn, x if metric is None else metric, dominant, contextual, self.sort_by_position
        )
        frame = torch.arange(n, device=x.device).unsqueeze(1)
        return Selection(
            tokens=tokens.reshape(-1, x.shape[-1]),
            indices=(frame * length + pos).reshape(-1),
            stats={
                "tokens_in": n * length,
                "tokens_out": n * s,
                "tokens_per_frame": s,
                "budget_rule": rule,
                "dominant_per_frame": dominant,
                "contextual_per_frame": contextual,
                "metric": "x" if metric is None else "metric",
            },
        )


__all__ = ["VisionZip", "visionzip_frames", "visionzip_split"]
