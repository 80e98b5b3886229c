"""EVS (Efficient Video Sampling, NVIDIA, arXiv 2510.14624) as vLLM implements it (``--video-pruning-rate q``).

Reproduced: ``vllm/multimodal/video_prune/evs.py::compute_retention_mask`` and ``compute_retained_tokens_count`` of
github.com/vllm-project/vllm at commit ``d750efb17f402de810f88283c64f4ec0f7cb6c93`` (the same function bodies ship in
``vllm==0.33.0``; older trees have them in ``vllm/multimodal/evs.py``).

On ``x [N, L, D]`` (N frames, or temporal grids for Qwen, of L tokens):

1. ``dissim[t, l] = 1 - cosine(x[t, l], x[t - 1, l])`` for ``t >= 1`` (``F.cosine_similarity`` itself, so equal
   tokens tie exactly as in vLLM); every token of frame 0 gets 255, above any dissimilarity;
2. ``order = argsort(dissim.flatten(), descending, stable)`` (ties: the lower flat index first);
3. keep the first ``max(L, int(N * L * (1 - q)))`` (vLLM's count, in Python floats: q = 0.9 gives
   ``1 - q = 0.09999999999999998``), returned in ascending flat order.

The count depends only on ``(N, L, q)``: vLLM sizes the prompt before the vision encoder runs, so EVS is servable
as is. The first frame is always whole, so at ``N * (1 - q) <= 1`` the output is exactly frame 0 and the realised
retention exceeds the budget (``stats['tokens_out']`` and the record's ``budget_gap`` show it).

Budget: the harness's ``budget`` r is the kept fraction, vLLM's knob the pruned fraction: ``q = 1 - r`` (Python
float), recorded as ``stats['pruning_rate']`` beside the count rule.

Intentional deviations / extensions:

- vLLM ships EVS for the Qwen family (Qwen2.5-VL, Qwen3-VL) and Nemotron/InternVL; the harness also applies the same
  function to LLaVA's pooled per-frame grids (the algorithm reads only ``x``). Frames are the harness's frames
  (Qwen: temporal grids of two frames, as in vLLM).
- Positions: the harness's Qwen adapter keeps the kept tokens' original M-RoPE positions (what transformers'
  unpruned ``generate`` uses); vLLM rewrites them (``recompute_mrope_positions``: text after the video restarts at
  ``base + W'``). Answers can differ where those conventions differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection

UPSTREAM = "github.com/vllm-project/vllm@d750efb17f402de810f88283c64f4ec0f7cb6c93"
BUDGET_RULE = "max(L, int(N*L*(1-q))), q = 1 - budget (vLLM video_pruning_rate)"


def evs_count(tokens_per_frame: int, num_frames: int, q: float) -> int:
    """vLLM's ``compute_retained_tokens_count``: ``max(L, int(N * L * (1 - q)))`` in Python floats."""
    return max(tokens_per_frame, int(tokens_per_frame * num_frames * (1 - q)))


def evs_order(x: Tensor) -> Tensor:
    """``[N * L]`` flat indices of ``x [N, L, D]``, most changed first: frame 0, then ``1 - cosine`` to the same token
    of the previous frame, descending, stable (vLLM's ranking)."""
    n, l, _ = x.shape
    dissim = 1 - F.cosine_similarity(x[1:], x[:-1], dim=-1)  # [N-1, L], argument order as vLLM
    dissim = torch.cat([255 * torch.ones_like(x[:1, :, 0]), dissim], dim=0)
    return torch.argsort(dissim.flatten(), descending=True, stable=True)


@dataclass
class EVS(PruningMethod):
    """EVS: drop the tokens that changed least since the previous frame; the first frame always kept."""

    name: str = "evs"
    stage = "pre_llm"
    display_name = "EVS"
    color = "#999999"  # Okabe-Ito grey

    def pruning_rate(self, budget: float) -> float:
        """vLLM's ``video_pruning_rate`` q for the harness's ``budget``: ``1 - budget``."""
        return 1.0 - check_budget(budget)

    servable = True

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if check_budget(budget) == 1.0:
            return num_frames * tokens_per_frame
        return evs_count(tokens_per_frame, num_frames, self.pruning_rate(budget))

    def prune(self, x: Tensor, *, budget: float, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """EVS on ``x [N, L, D]``; returns ``max(L, int(N L (1 - q)))`` tokens in ascending flat order."""
        budget = check_budget(budget)
        if budget == 1.0:
            sel = identity_selection(x)
            sel.stats.update(pruning_rate=0.0, budget_rule=BUDGET_RULE)
            return sel
        n, l, d = x.shape
        q = self.pruning_rate(budget)
        count = evs_count(l, n, q)
        idx = evs_order(x)[:count].sort().values
        return Selection(tokens=x.reshape(n * l, d)[idx], indices=idx,
                         stats={"tokens_in": n * l, "tokens_out": count, "pruning_rate": q,
                                "first_frame_only": int(count == l), "budget_rule": BUDGET_RULE})
