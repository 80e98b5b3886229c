"""VidCom² (Video Compression Commander, Liu et al., EMNLP 2025, arXiv 2505.14454): per-frame budgets from frame
uniqueness, then each frame's most distinctive tokens.

Reproduced: ``token_compressor/vidcom2/vidcom2.py::vidcom2_compression`` of github.com/xuyang-liu16/VidCom2 at commit
``944a17d14f4848ad080a65eab2b0711a760fa154`` (``count_rule="authors"``) and vLLM's port
``vllm/multimodal/video_prune/vidcom2.py::compute_retention_mask`` of github.com/vllm-project/vllm at commit
``0f17ee061e413bf8ab7927f926f69cdff24dc63e`` (``count_rule="vllm"``).

On ``x [N, L, D]`` (N frames, or Qwen temporal grids, of L tokens), in the input's dtype like upstream:

1. the ``int(D * channel_ratio)`` channels of lowest variance over all ``N * L`` tokens (``topk`` order);
2. ``f = normalize`` of those channels; ``v`` / ``s``: multi-scale Gaussian similarity
   ``sum_a exp(-|f - c|^2 / 2a)``, ``a in {1/8, 1/4, 1/2, 1, 2}``, to the video mean ``c`` (v) and to the
   frame's mean (s), ``[N, L]`` each;
3. frame budgets: ``p = softmax((u - max u) / temperature)`` with ``u_i = -mean_l v[i]`` (a frame far from the video
   mean scores higher), ``scale_i = min(r (1 + p_i - mean p), 1)``, ``k_i = max(round(scale_i L), 1)`` (torch
   half-to-even, in the input dtype);
4. each frame keeps its ``k_i`` tokens of smallest ``v + s``; rows are copies, ascending flat order.

``count_rule="vllm"`` (the serving path; vLLM's knob is the pruning rate ``q = 1 - budget``, in Python floats, so
``r = 1 - q`` is 0.09999999999999998 for budget 0.1): ``k_i`` is also capped at L, and the kept set is reconciled
to exactly ``max(N, min(int(N L (1 - q)), N L))`` tokens (vLLM sizes the prompt before the encoder runs): above it
the kept tokens of largest ``v + s`` are dropped, below it the unkept tokens of smallest ``v + s`` are added, over
the whole video. ``stats['reconciled']`` is the signed number of tokens that step moved.

Intentional deviations:

- Per-frame selection is one batched ``argsort`` (stable) instead of upstream's ``topk(sorted=False)`` per frame; the
  reconcile step likewise. On exact score ties at a frame's k-th token (duplicate tokens; more likely in bf16) the
  chosen token can differ from upstream's, whose tie order is ``topk``'s implementation detail.
- The authors hard-code L (196 for LLaVA-OV, 169 for LLaVA-Video); here L is the input's.
- LLaVA-Video: the authors put all 13 row newlines of every frame after that frame's kept tokens; the harness's
  LLaVA-Video adapter lays out newlines by its own convention for every pre-LLM method (see ``tango/models``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection

UPSTREAM = "github.com/xuyang-liu16/VidCom2@944a17d14f4848ad080a65eab2b0711a760fa154"
VLLM = "github.com/vllm-project/vllm@0f17ee061e413bf8ab7927f926f69cdff24dc63e"
COUNT_RULES = ("authors", "vllm")
ALPHAS = tuple(2.0**k for k in range(-3, 2))


def gaussian_similarity(f: Tensor, centre: Tensor) -> Tensor:
    """``sum_a exp(-|f - centre|^2 / 2a)`` over ``ALPHAS``: ``f [N, L, C]`` -> ``[N, L]`` (upstream's sum order)."""
    dist_sq = ((f - centre) ** 2).sum(dim=-1)
    return sum(torch.exp(-dist_sq / (2.0 * a)) for a in ALPHAS)


def vidcom2_scores(x: Tensor, channel_ratio: float) -> tuple[Tensor, Tensor]:
    """``(v [N, L], s [N, L])``: similarity of each token to the video mean and to its frame's mean, on the
    lowest-variance channels of ``x [N, L, D]``."""
    n, l, d = x.shape
    flat = x.reshape(n * l, d)
    low = torch.topk(flat.var(dim=0, unbiased=False), k=max(1, int(d * channel_ratio)), largest=False).indices
    f = F.normalize(flat[:, low].view(n, l, -1), dim=-1)
    video_sim = gaussian_similarity(f, f.mean(dim=(0, 1), keepdim=True))
    return video_sim, gaussian_similarity(f, f.mean(dim=1, keepdim=True))


def vllm_count(num_frames: int, tokens_per_frame: int, q: float) -> int:
    """vLLM's exact count at pruning rate ``q``: ``max(N, min(int(N L (1 - q)), N L))``."""
    n, l = num_frames, tokens_per_frame
    return max(n, min(int(n * l * (1.0 - q)), n * l))


def frame_budgets(v: Tensor, ratio: float, temperature: float, cap: bool) -> Tensor:
    """``[N]`` long: ``max(round(min(ratio (1 + p_i - mean p), 1) L), 1)`` (and ``<= L`` with ``cap``)."""
    u = -v.mean(dim=-1)
    p = F.softmax((u - u.max()) / temperature, dim=0)
    k = ((ratio * (1.0 + p - p.mean())).clamp(max=1.0) * v.shape[1]).round().long()
    return k.clamp(min=1, max=v.shape[1]) if cap else k.clamp(min=1)


@dataclass
class VidCom2(PruningMethod):
    """VidCom²: frame-uniqueness budgets, then the most distinctive tokens of each frame."""

    name: str = "vidcom2"
    #: "authors" (sum of the per-frame counts) or "vllm" (vLLM's exact count, reconciled by score).
    count_rule: str = "authors"
    #: share of the channels (lowest variance) the scores use.
    channel_ratio: float = 0.5
    #: softmax temperature of the frame budgets.
    temperature: float = 0.01

    stage = "pre_llm"
    display_name = "VidCom²"
    color = "#44AA99"

    def __post_init__(self) -> None:
        if self.count_rule not in COUNT_RULES:
            raise ValueError(f"vidcom2: count_rule={self.count_rule!r} is invalid; valid: {list(COUNT_RULES)}")
        if not 0.0 < self.channel_ratio <= 1.0:
            raise ValueError(f"vidcom2: channel_ratio={self.channel_ratio!r} is invalid; valid: (0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"vidcom2: temperature={self.temperature!r} is invalid; valid: > 0")

    @property
    def servable(self) -> bool:
        """Only with vLLM's exact count (``count_rule="vllm"``); the authors' per-frame sum depends on the video."""
        return self.count_rule == "vllm"

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if not self.servable:
            return super().count(num_frames, tokens_per_frame, budget, grid)
        if check_budget(budget) == 1.0:
            return num_frames * tokens_per_frame
        return vllm_count(num_frames, tokens_per_frame, 1.0 - budget)

    def prune(self, x: Tensor, *, budget: float, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """VidCom² on ``x [N, L, D]``: kept rows (copies) in ascending flat order."""
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, l, d = x.shape
        v, s = vidcom2_scores(x, self.channel_ratio)
        vllm = self.count_rule == "vllm"
        q = 1.0 - budget
        k = frame_budgets(v, (1.0 - q) if vllm else budget, self.temperature, cap=vllm)  # [N]
        score = (v + s).reshape(n * l)
        rank = torch.argsort(v + s, dim=1, stable=True).argsort(dim=1)  # rank of each token in its frame
        keep = (rank < k[:, None]).reshape(n * l)
        stats = {"tokens_in": n * l, "count_rule": self.count_rule,
                 "frame_budget_min": int(k.min()), "frame_budget_max": int(k.max())}
        if vllm:
            moved = vllm_count(n, l, q) - int(keep.sum())
            if moved:
                # drop the kept tokens of largest score / add the unkept of smallest, over the whole video
                pool = keep.nonzero().flatten() if moved < 0 else (~keep).nonzero().flatten()
                order = torch.argsort(score[pool], stable=True, descending=moved < 0)
                keep[pool[order[: abs(moved)]]] = moved > 0
            stats.update(pruning_rate=q, reconciled=moved,
                         budget_rule="max(N, min(int(N*L*(1-q)), N*L)), q = 1 - budget (vLLM, reconciled by score)")
        else:
            stats["budget_rule"] = "sum_i max(round(min(r*(1+p_i-mean p), 1)*L), 1) per frame (authors)"
        idx = keep.nonzero().flatten()
        stats["tokens_out"] = int(idx.numel())
        return Selection(tokens=x.reshape(n * l, d)[idx], indices=idx, stats=stats)
