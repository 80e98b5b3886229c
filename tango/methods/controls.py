"""Controls: seeded random token dropping and uniform spatial pooling to the budget.

Benchmarks of pruning methods (UniPruneBench, VTC-Bench) found both strong; a method that does not beat them at a
budget has not shown that its selection helps. Neither reads attention or a similarity metric.

- ``random``: keep a uniformly random subset, ``round(L * r)`` per frame (``mode="per_frame"``) or
  ``round(N * L * r)`` over the whole video (``mode="global"``), at least one token; kept tokens in ascending flat
  order. The draw comes from ``torch.Generator().manual_seed(seed)`` at every call, so a video of a given shape
  always loses the same positions (a fixed random mask per ``(N, L)``, reproducible and resumable); another
  ``seed`` is another draw.
- ``uniform_pool``: per frame, ``adaptive_avg_pool2d`` of the ``(H, W)`` token grid to ``(h', w')``: each side
  scaled by ``sqrt(r)`` and rounded down or up, the combination with the product nearest ``r * H * W``
  (:func:`pooled_grid`). Each pooled token takes the position of its cell's centre token (upper-left of the centre
  for even cells), so position ids stay on the original grid. On 14 x 14: 4x5, 5x6, 6x7, 7x7 at 10/15/20/25 %
  (20, 30, 42, 49 tokens per frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection

MODES = ("per_frame", "global")


@dataclass
class RandomDrop(PruningMethod):
    """Seeded random token dropping (a control)."""

    name: str = "random"
    #: "per_frame" (round(L r) of every frame) or "global" (round(N L r) over the video).
    mode: str = "per_frame"
    #: seed of the draw (the same mask for every video of one shape).
    seed: int = 0
    stage = "pre_llm"
    display_name = "Random"
    color = "#BBBBBB"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"random: mode={self.mode!r} is invalid; valid: {list(MODES)}")

    servable = True

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        n, l = num_frames, tokens_per_frame
        if check_budget(budget) == 1.0:
            return n * l
        return n * max(1, round(l * budget)) if self.mode == "per_frame" else max(1, round(n * l * budget))

    def prune(self, x: Tensor, *, budget: float, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """Keep a random subset of ``x [N, L, D]``'s tokens, ascending flat order."""
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, l, d = x.shape
        gen = torch.Generator().manual_seed(int(self.seed))
        if self.mode == "per_frame":
            k = max(1, round(l * budget))
            local = torch.rand(n, l, generator=gen).topk(k, dim=1).indices.to(x.device)
            idx = (torch.arange(n, device=x.device)[:, None] * l + local).flatten().sort().values
            rule = f"round(L*r)={k} per frame"
        else:
            k = max(1, round(n * l * budget))
            idx = torch.rand(n * l, generator=gen).topk(k).indices.to(x.device).sort().values
            rule = f"round(N*L*r)={k} per video"
        return Selection(tokens=x.reshape(n * l, d)[idx], indices=idx,
                         stats={"tokens_in": n * l, "tokens_out": int(idx.numel()), "budget_rule": rule})


def _frame_grid(l: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """``(H, W)`` of an ``L``-token frame: ``grid``, or the square one when it is None."""
    if grid is None:
        side = math.isqrt(l)
        if side * side != l:
            raise ValueError(f"uniform_pool: L={l} is not a square grid: pass grid=(H, W)")
        grid = (side, side)
    h, w = int(grid[0]), int(grid[1])
    if h * w != l:
        raise ValueError(f"uniform_pool: grid {(h, w)} does not match L={l} tokens per frame")
    return h, w


def pooled_grid(h: int, w: int, budget: float) -> tuple[int, int]:
    """``(h', w')``: each side scaled by ``sqrt(budget)`` and rounded down or up (at least 1), the combination whose
    product is nearest ``budget * h * w``; ties go to the aspect ratio nearest ``h / w``, then the smaller product.
    The cells stay near the frame's aspect, so the pooling is uniform in both directions."""
    s = math.sqrt(budget)
    sides = [sorted({max(1, min(n, math.floor(n * s))), max(1, min(n, math.ceil(n * s)))}) for n in (h, w)]
    target = budget * h * w
    return min(((a, b) for a in sides[0] for b in sides[1]),
               key=lambda p: (abs(p[0] * p[1] - target), abs(math.log(p[0] / p[1]) - math.log(h / w)), p[0] * p[1]))


def cell_centres(size: int, out: int) -> Tensor:
    """Centre index of each of ``out`` adaptive-pooling cells over ``size`` positions (PyTorch's cell bounds
    ``floor(i size / out)`` .. ``ceil((i + 1) size / out)``; upper-left of the centre for even cells)."""
    i = torch.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    return (start + end - 1) // 2


@dataclass
class UniformPool(PruningMethod):
    """Uniform spatial average pooling of every frame to the budget (a control)."""

    name: str = "uniform_pool"
    stage = "pre_llm"
    display_name = "Uniform pooling"
    color = "#DDCC77"

    servable = True

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if check_budget(budget) == 1.0:
            return num_frames * tokens_per_frame
        ph, pw = pooled_grid(*_frame_grid(tokens_per_frame, grid), budget)
        return num_frames * ph * pw

    def prune(self, x: Tensor, *, budget: float, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """Pool ``x [N, L, D]`` (``L = H * W``, raster order) per frame to ``(h', w')`` cells, raster order."""
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, l, d = x.shape
        h, w = _frame_grid(l, grid)
        ph, pw = pooled_grid(h, w, budget)
        pooled = F.adaptive_avg_pool2d(x.reshape(n, h, w, d).permute(0, 3, 1, 2), (ph, pw))  # [N, D, h', w']
        tokens = pooled.permute(0, 2, 3, 1).reshape(n * ph * pw, d)
        local = (cell_centres(h, ph)[:, None] * w + cell_centres(w, pw)[None, :]).flatten().to(x.device)
        idx = (torch.arange(n, device=x.device)[:, None] * l + local).flatten()
        return Selection(tokens=tokens, indices=idx,
                         stats={"tokens_in": n * l, "tokens_out": int(idx.numel()), "pooled_grid": f"{ph}x{pw}",
                                "budget_rule": f"adaptive avg pool {h}x{w} -> {ph}x{pw} per frame"})
