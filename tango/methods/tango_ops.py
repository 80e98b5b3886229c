"""Pure tensor steps of Tango: segmentation, salient selection, spatio-temporal merging, the LLaVA-Video inner stage.

See ``tango/methods/tango.py`` for the method, its provenance and its deviations from the reference code.
All functions are batched over a leading dimension where the reference loops (frames, clusters, frame pairs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods import dpc
from tango.methods.dpc import assign_nearest, columns_argmin, dpc_knn, gathered_cdist, pairwise_dist

# --------------------------------------------------------------------------------------------------------------------
# Temporal video segmentation
# --------------------------------------------------------------------------------------------------------------------


def consecutive_cosine(x: Tensor) -> Tensor:
    """Cosine similarity of each token with the same token of the next frame: ``x [N, ..., D]`` -> ``[N-1, ...]``."""
    xn = F.normalize(x.float(), p=2, dim=-1)
    return (xn[:-1] * xn[1:]).sum(dim=-1)


def static_window_gain(sim: Tensor, tau: float) -> Tensor:
    """HoliTom's removable-token count ``G[s, e] = (e - s) * #{l : sim[n, l] > tau for all s <= n < e}``.

    Args:
        sim: ``[N-1, L]`` consecutive-frame similarities.
        tau: static threshold.

    Returns:
        ``[N, N]`` long; zero where ``e <= s``. Built from per-token run lengths in O(N*L + N^2) memory instead of
        the reference's O(N^2 * L) cumulative-product table.
    """
    n1, l = sim.shape
    n = n1 + 1
    dev = sim.device
    is_sim = sim > tau
    rows = torch.arange(n1, device=dev)
    # First non-similar pair at or after each start: reverse cumulative minimum over "position if False else n1".
    first_break = torch.where(is_sim, torch.full_like(rows[:, None].expand(n1, l), n1), rows[:, None].expand(n1, l))
    first_break = first_break.flip(0).cummin(dim=0).values.flip(0)
    run = first_break - rows[:, None]  # [N-1, L]: pairs a token stays similar for, starting at frame s
    hist = torch.zeros(n1, n, dtype=torch.long, device=dev).scatter_add_(1, run, torch.ones_like(run))
    at_least = hist.flip(1).cumsum(1).flip(1)  # at_least[s, w] = #{l : run[s, l] >= w}
    width = (torch.arange(n, device=dev)[None, :] - rows[:, None]).clamp(min=0)  # e - s, [N-1, N]
    gain = width * at_least.gather(1, width)
    return torch.cat([gain, torch.zeros(1, n, dtype=torch.long, device=dev)], dim=0)


def holitom_segments(sim: Tensor, tau: float, max_window: int = 1024) -> list[int]:
    """HoliTom dynamic program: contiguous segments maximising the total removable static-token count.

    ``dp[e] = max(dp[e-1], max_s dp[s-1] + G[s, e])`` over window starts ``s`` with ``e - s + 1 <= max_window``;
    on ties the shorter window wins and a frame on its own beats every tie (the reference's strict ``>`` scan).

    Args:
        sim: ``[N-1, L]`` consecutive-frame per-token cosine similarities.
        tau: similarity threshold for a token to count as static.
        max_window: longest segment, in frames.

    Returns:
        Segment sizes in frames, summing to N.
    """
    n = sim.shape[0] + 1
    if n == 1:
        return [1]
    gain = static_window_gain(sim, tau).cpu()
    # base[s] = dp[s - 1], the best value of the frames before start s. The recurrence is sequential over the end
    # frame; each step is one vector op over its window starts.
    base = torch.zeros(n + 1, dtype=torch.long)
    start = torch.zeros(n, dtype=torch.long)
    for e in range(n):
        lo = max(0, e - max_window + 1)
        cand = (base[lo : e + 1] + gain[lo : e + 1, e]).flip(0)  # starts e, e-1, ..., lo
        best = int(cand.argmax())  # first maximum = latest start = shortest window
        base[e + 1] = cand[best]
        start[e] = e - best
    sizes, e = [], n - 1
    while e >= 0:  # backtracking over segments, not frames x tokens
        s = int(start[e])
        sizes.append(e - s + 1)
        e = s - 1
    return sizes[::-1]


def fastvid_segments(sim: Tensor, n_cuts: int, tau: float) -> list[int]:
    """FastVID segmentation: cut after the ``n_cuts`` least similar transitions and every transition below ``tau``.

    Args:
        sim: ``[N-1]`` cosine similarity of consecutive frames' global features.
        n_cuts: c - 1 in FastVID's notation (upstream: c = 8, so 7 cuts).
        tau: similarity threshold.

    Returns:
        Segment sizes in frames, summing to N.
    """
    n1 = sim.shape[0]
    cut = sim < tau
    cut[sim.topk(min(n_cuts, n1), largest=False).indices] = True
    # A cut at transition i ends a segment at frame i; sentinels -1 and N-1 close the first and last segments.
    ends = torch.cat(
        [torch.tensor([-1], device=sim.device), cut.nonzero().flatten(), torch.tensor([n1], device=sim.device)]
    )
    return ends.diff().tolist()


# --------------------------------------------------------------------------------------------------------------------
# Salient token selection and spatio-temporal merging
# --------------------------------------------------------------------------------------------------------------------


def select_salient(
    xr: Tensor,
    score: Tensor,
    k: int,
    *,
    alpha: float,
    k_neighbors: int,
    diverse: bool = True,
    generator: torch.Generator | None = None,
    noise: float = 1e-6,
) -> Tensor:
    """Salient Token Selection, batched over B token sets of equal size M.

    Top ``int(alpha * k)`` tokens by ``score`` are the candidates; DPC-KNN (on ``xr``) splits them into ``k`` clusters
    and each cluster keeps its highest-score member (an empty cluster keeps its centre). With ``diverse=False``
    (ablation) it is plain top-``k`` by score.

    Args:
        xr: ``[B, M, D]`` clustering features (ST-RoPE'd, unit norm).
        score: ``[B, M]`` saliency.
        k: salient tokens per set, ``0 <= k <= M``.

    Returns:
        ``[B, k']`` long local indices, ``k' = min(k, int(alpha * k))``, cluster order (unsorted).
    """
    _, m, d = xr.shape
    n_cand = min(int(alpha * k), m)
    k = min(k, n_cand)
    if not diverse:
        return score.topk(k, dim=1).indices
    cand = score.topk(n_cand, dim=1).indices  # [B, n_cand], decreasing score
    if n_cand <= k or n_cand <= 1:
        return cand
    cand_score = score.gather(1, cand)
    # The candidates' distances serve the density peaks and, through the centres' columns, the assignment (the
    # same values as a fresh cdist to the centres).
    dist = pairwise_dist(xr.gather(1, cand[..., None].expand(-1, -1, d)))
    centres = dpc_knn(None, k, k_neighbors, generator=generator, noise=noise, dist=dist)  # [B, k]
    assign = columns_argmin(dist, centres)  # [B, n_cand]
    member = assign[..., None] == torch.arange(k, device=xr.device)  # [B, n_cand, k]
    masked = cand_score[..., None].masked_fill(~member, torch.finfo(cand_score.dtype).min)
    best = torch.where(member.any(dim=1), masked.argmax(dim=1), centres)  # first maximum: higher-ranked candidate
    return cand.gather(1, _dedupe(best, n_cand))


def _dedupe(best: Tensor, n_cand: int) -> Tensor:
    """Replace repeated picks in ``best [B, k]`` (candidate ranks) by the best-ranked unpicked candidates.

    Only identical clustering features produce repeats (an empty cluster's centre is another cluster's best
    member, e.g. all-zero tokens); upstream then keeps the token twice.
    """
    same = best[:, :, None] == best[:, None, :]
    repeat = torch.tril(same, diagonal=-1).any(dim=-1)  # [B, k]: an earlier slot holds the same candidate
    if not bool(repeat.any()):
        return best
    used = torch.zeros(best.shape[0], n_cand, dtype=torch.bool, device=best.device).scatter_(1, best, True)
    free = torch.argsort(used.to(torch.uint8), dim=1, stable=True)  # unpicked ranks first, ascending
    nth_repeat = (repeat.cumsum(dim=1) - 1).clamp(min=0)
    return torch.where(repeat, free.gather(1, nth_repeat), best)


def merge_context(
    x: Tensor,
    xr: Tensor,
    n_anchors: int,
    *,
    k_neighbors: int,
    beta: float,
    merge: bool = True,
    fix_order: bool = False,
    generator: torch.Generator | None = None,
    noise: float = 1e-6,
    rows: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Spatio-Temporal Merging of one pool of context tokens per batch row.

    DPC-KNN picks ``n_anchors`` anchors on ``xr``; every pool token (anchors included) joins its nearest anchor;
    anchor ``z`` with ``n_z`` members becomes ``w * x_z + (1 - w) * mean(members)``, ``w = max(1 / n_z, beta)``.

    The reference computes the merged rows for the anchors in ascending pool order but writes them to the anchors
    in DPC-KNN score order. ``fix_order=False`` reproduces that (row ``j`` of the ascending merge lands on the
    ``j``-th anchor by score); ``fix_order=True`` gives every anchor the merge of its own cluster.

    Args:
        x: ``[B, P, D]`` features to merge (raw, not normalised), or, with ``rows``, ``[B, M, D]`` of which the pool is
            ``x.gather(1, rows)``.
        xr: ``[B, P, Dr]`` clustering features (``[B, M, Dr]`` with ``rows``).
        n_anchors: C, ``1 <= C <= P``.
        merge: False (ablation) keeps the anchors' own features.
        rows: optional ``[B, P]`` ascending pool rows of ``x`` and ``xr``: the pool is read in place, never copied.

    Returns:
        ``(anchors [B, C] local indices into the pool, features [B, C, D] for those anchors)``.
    """
    b, d = x.shape[0], x.shape[-1]
    p = x.shape[1] if rows is None else rows.shape[1]
    # Up to MAX_BLOCK distances, one matrix serves the density peaks and, through the anchors' columns, the
    # assignment (the same values as upstream's fresh cdist to the anchors). Above it, dpc_knn and the assignment
    # recompute distances in row blocks.
    big = b * p * p > dpc.MAX_BLOCK
    if big and rows is not None:
        xr = xr.gather(1, rows[..., None].expand(-1, -1, xr.shape[-1]))
    dist = None if big else gathered_cdist(xr, rows) if rows is not None else pairwise_dist(xr)
    centres = dpc_knn(xr if big else None, n_anchors, k_neighbors, generator=generator, noise=noise, dist=dist)
    asc = centres.sort(dim=1).values  # centres are in score order
    src = asc if rows is None else rows.gather(1, asc)  # anchors' rows of x
    anchor_x = x.gather(1, src[..., None].expand(-1, -1, d))
    if not merge:
        return asc, anchor_x  # no merged rows, so no write-back order to reproduce
    if dist is None:
        assign = assign_nearest(xr, xr.gather(1, asc[..., None].expand(-1, -1, xr.shape[-1])))  # [B, P]
    else:
        assign = columns_argmin(dist, asc)  # [B, P]
    # One flat index_add over all rows, in ascending row order: the same per-anchor summation order as upstream's
    # index_add_ over the gathered pool. With ``rows``, rows outside the pool go to a discarded extra row.
    target = (assign + torch.arange(b, device=x.device)[:, None] * n_anchors).flatten()
    if rows is not None:
        m = x.shape[1]
        full = torch.full((b, m), b * n_anchors, dtype=target.dtype, device=x.device)
        target = full.scatter_(1, rows, target.view(b, p)).flatten()
    src_rows = x.reshape(-1, d)
    sums = torch.zeros(b * n_anchors + 1, d, dtype=x.dtype, device=x.device).index_add_(0, target, src_rows)
    counts = torch.zeros(b * n_anchors + 1, 1, dtype=x.dtype, device=x.device).index_add_(
        0, target, torch.ones(src_rows.shape[0], 1, dtype=x.dtype, device=x.device)
    )
    sums, counts = sums[:-1], counts[:-1].clamp(min=1)
    w = (1.0 / counts).clamp(min=beta).view(b, n_anchors, 1)
    feats = w * anchor_x + (1 - w) * (sums / counts).view(b, n_anchors, d)
    return (asc if fix_order else centres), feats


def budget_split(n_tokens: int, ratio: float, context_ratio: float, at_least_one: bool) -> tuple[int, int]:
    """``(salient, context)`` counts of a set of ``n_tokens`` kept at ``ratio`` (reference rounding).

    ``n_keep = ceil(n_tokens * ratio)`` (at least 1 for a non-empty set when ``at_least_one``),
    ``salient = int(n_keep * (1 - context_ratio))``, ``context = n_keep - salient``.
    """
    n_keep = math.ceil(n_tokens * ratio)
    if at_least_one and n_tokens > 0:
        n_keep = max(1, n_keep)
    n_sal = int(n_keep * (1.0 - context_ratio))
    return n_sal, n_keep - n_sal


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x [B, M, D]``, ``idx [B, K]`` -> ``[B, K, D]``."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def unselected(m: int, selected: Tensor) -> Tensor:
    """``[B, M - K]`` ascending local indices of the tokens not in ``selected [B, K]`` (unique per row)."""
    b = selected.shape[0]
    keep = torch.ones(b, m, dtype=torch.bool, device=selected.device)
    keep.scatter_(1, selected, False)
    return keep.nonzero()[:, 1].view(b, -1)


def compress(
    x: Tensor,
    xr: Tensor,
    score: Tensor,
    ratio: float,
    *,
    context_ratio: float,
    alpha: float,
    k_neighbors: int,
    beta: float,
    diverse: bool = True,
    merge: bool = True,
    fix_order: bool = False,
    generator: torch.Generator | None = None,
    noise: float = 1e-6,
) -> tuple[Tensor, Tensor, int, int]:
    """Tango's per-set compressor (single-frame segments and a segment's static set), batched over B sets.

    Keeps ``ceil(M * ratio)`` tokens per set (at least one): salient tokens by :func:`select_salient`, then context
    anchors by :func:`merge_context` over the tokens left.

    Args:
        x: ``[B, M, D]`` features; xr: ``[B, M, Dr]`` clustering features; score: ``[B, M]`` saliency.

    Returns:
        ``(indices [B, K] local, features [B, K, D], n_salient, n_context)``, salient first, not sorted.
    """
    b, m, d = x.shape
    n_sal, n_ctx = budget_split(m, ratio, context_ratio, at_least_one=True)
    idx = [x.new_zeros(b, 0, dtype=torch.long)]
    feats = [x.new_zeros(b, 0, d)]
    if n_sal > 0:
        sal = select_salient(
            xr, score, n_sal, alpha=alpha, k_neighbors=k_neighbors, diverse=diverse, generator=generator, noise=noise
        )
        idx.append(sal)
        feats.append(gather_rows(x, sal))
    n_sal_out = idx[-1].shape[1]
    if n_ctx > 0:
        rest = unselected(m, idx[-1]) if n_sal > 0 else torch.arange(m, device=x.device).expand(b, m)
        n_ctx = min(n_ctx, rest.shape[1])
        if rest.shape[1] <= n_ctx:
            idx.append(rest)
            feats.append(gather_rows(x, rest))
        else:
            anchors, merged = merge_context(
                x,
                xr,
                n_ctx,
                rows=rest,
                k_neighbors=k_neighbors,
                beta=beta,
                merge=merge,
                fix_order=fix_order,
                generator=generator,
                noise=noise,
            )
            idx.append(rest.gather(1, anchors))
            feats.append(merged)
    idx_all = torch.cat(idx, dim=1)
    return idx_all, torch.cat(feats, dim=1), n_sal_out, idx_all.shape[1] - n_sal_out


def rescaled_ratio(ratio: float, n_frames: int, n_tokens: int, n_static: int) -> float:
    """Segment ratio after collapsing ``n_static`` positions to one copy: ``min(r / ((N*L - (N-1)*S) / (N*L)), 1)``.

    Computed in Python floats in the reference's order, so ``ceil`` lands on the same integers.
    """
    total = n_frames * n_tokens
    return min(ratio / ((total - (n_frames - 1) * n_static) / total), 1.0)


# --------------------------------------------------------------------------------------------------------------------
# LLaVA-Video inner-LLM stage
# --------------------------------------------------------------------------------------------------------------------


def pre_llm_ratio(budget: float, layer: int, keep: float, n_layers: int) -> float:
    """Pre-LLM retention so that the layer-averaged visual ratio equals ``budget`` when layers ``>= layer`` keep
    ``keep`` of the visual span: ``min(n_layers * r / (layer + (n_layers - layer) * keep), 1)``, rounded to 6
    significant digits like the run script's ``awk`` print (0.121739 for r = 0.1)."""
    return float(f"{min(n_layers * budget / (layer + (n_layers - layer) * keep), 1.0):.6g}")


def inner_llm_merge(hidden: Tensor, attn: Tensor, keep: float = 0.5, weight: float = 0.6) -> tuple[Tensor, Tensor]:
    """HoliTom/Tango inner-LLM prune + merge over the visual span, at the prefill of decoder layer K.

    The top ``round(Lv * keep)`` visual tokens by ``attn`` are kept; every dropped token joins the kept token of
    highest cosine similarity of ``hidden``; a kept token becomes
    ``weight * h + (1 - weight) * (h + sum(members)) / (1 + n_members)``.

    Args:
        hidden: ``[B, Lv, D]`` hidden states of the visual span entering layer K (newline tokens included).
        attn: ``[Lv]`` attention of the last input token to the visual span at layer K-1, averaged over heads
            (upstream uses batch row 0 for every row; pass that row).
        keep: fraction of the visual span kept.
        weight: weight of the kept token itself.

    Returns:
        ``(keep_idx [K] ascending local indices into the span, merged [B, K, D] in that order)``. Kept tokens keep
        their original position ids (the adapter indexes positions with ``keep_idx``).
    """
    b, lv, d = hidden.shape
    n_keep = round(lv * keep)  # Python rounding, half to even, as upstream
    top = attn.topk(n_keep).indices
    dropped = torch.ones(lv, dtype=torch.bool, device=hidden.device)
    dropped[top] = False
    kept_h = hidden[:, top]
    drop_h = hidden[:, dropped]
    sim = F.normalize(drop_h, dim=-1) @ F.normalize(kept_h, dim=-1).transpose(1, 2)
    target = sim.argmax(dim=-1)  # [B, n_dropped], index into top-k order
    sums = torch.zeros_like(kept_h).scatter_add_(1, target[..., None].expand(-1, -1, d), drop_h)
    counts = torch.zeros(b, n_keep, dtype=hidden.dtype, device=hidden.device).scatter_add_(
        1, target, torch.ones_like(target, dtype=hidden.dtype)
    )
    merged = weight * kept_h + (1 - weight) * ((kept_h + sums) / (1.0 + counts)[..., None])
    order = top.argsort()
    return top[order], merged[:, order]
