"""FastVID: dynamic density pruning for fast video LLMs (NeurIPS'25): LLaVA-OneVision's parallel implementation, and
the LLaVA-Video and Qwen2.5-VL forks.

Reproduced: ``LunarShen/FastVID@a40a109cb8df20e8c2c17c6850f8269717369990``,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py::Qwen2Model.forward`` (the block
between the ``FastVID`` markers, run at prefill before decoder layer 0). Parity is tested against that block,
executed unmodified on seeded inputs (``tests/fixtures/fastvid/``: exact kept indices, features to rtol 1e-5). Spec:
``/work/shared/docs/methods-holitom-fastvid.md`` §2.

On ``x [N, L, D]`` (the video's LLM input embeddings), ``attn [N, L]`` (the SigLIP attention-pooling head's probe
attention, pooled like the features: the harness's ``pooling_head`` source, Tango's) and ``metric [N, Dg]`` (the
same head's pooled output, the frame-global feature):

1. DySeg: ``s = cos(g_f, g_{f+1})`` of the global features; cuts after the ``c - 1`` least similar transitions and
   every transition with ``s < tau`` (:func:`tango_ops.fastvid_segments`, the cuts Tango uses);
2. per frame ``R = int(L r)``, ``salient = R - int(R d)``, ``context = int(R d)``; in a segment of n frames the
   anchor frames are the last and every ``p``-th before it, each with ``(context * n) // ceil(n / p)`` anchors;
3. salient tokens: every frame's top ``salient`` by ``attn``;
4. density on each frame's non-salient tokens (the shared :func:`tango.methods.dpc.dpc_knn`, FastVID's variant:
   distances ``/ sqrt(D)``, 4 nearest including the point itself; one noise draw ``[N, L - salient]``);
5. single-frame segments: anchors = the frame's top ``context`` by density score; every non-salient token of the
   frame (anchors included) joins the anchor of highest cosine; multi-frame segments: per anchor frame, its top
   ``(context * n) // ceil(n / p)`` tokens, the pool being the non-salient tokens of every frame of the segment;
   an anchor with ``n`` members becomes ``w * anchor + (1 - w) * mean(members)``, ``w = max(1 / (n + 1), beta)``;
6. output: salient and anchor tokens in flat index order (frame-major raster).

Kept count: ``N * salient`` + the anchors, at most ``N * int(L r)`` (below it where ``(context * n) // ceil(n / p)``
floors), recorded with the segment sizes in ``stats``.

Hyperparameters are the authors' (``scripts/eval.sh``; defaults in the fork's config): ``c`` 8, ``tau`` 0.9, ``d``
0.4, ``p`` 4, ``beta`` 0.6.

Intentional deviations:

- Positions: the LLaVA forks prune inside ``Qwen2Model.forward`` and keep the kept tokens' **original** position
  ids (text after the video keeps its positions, leaving a gap); here, as for every pre-LLM method on LLaVA (OV and
  Video), the LLM sees the kept tokens with contiguous positions. The token set and features are the reference's.
  On Qwen2.5-VL both keep the original M-RoPE positions.
- ``fork="video"`` (``configs/model_method/{,tiny_}llava_video_fastvid.yaml``) runs the LLaVA-Video fork's
  block (``fastvid_llavavideo/.../modeling_qwen2.py``, parity-tested in ``tests/fixtures/fastvid/video.json``): per
  segment of n frames ``R n`` tokens (``R = int(L r)``), ``int(R n d)`` of them anchors spread over ``ceil(n / p)``
  anchor frames (``i % p == 0``, reversed: the last frame is one), the salient rest spread evenly over the frames
  (top attention); per anchor frame the density (4 nearest including the point, ``cdist / sqrt(D)``, one noise draw
  per anchor frame in frame order) on its non-salient tokens picks its anchors, and its merge pool is every token
  of the segment except the segment's salient tokens and this frame's anchors (``w = max(1 / (n + 1), beta)``,
  members' mean). Exactly ``N R`` tokens. The fork hard-codes 64 frames of 13 x 13 tokens; here any N and L. Its
  row newlines (kept iff the row keeps a token) are the LLaVA-Video adapter's, which follows the same rule. The
  per-anchor-frame steps loop over anchor frames (each draws its own noise, as upstream).
- ``fork="qwen"`` (``configs/model_method/{,tiny_}qwen2_5_vl_fastvid.yaml``, the script's ``tau`` 0.84) runs
  the Qwen2.5-VL fork's block (``fastvid_qwen25vl/.../modeling_qwen2_5_vl.py``, parity-tested in
  ``tests/fixtures/fastvid/qwen.json``) on temporal patches: as the Video fork, but with ``max(int(R n d), 1)``
  anchors, and inside a multi-frame segment sub-segments end where the global cosine drops below
  ``sub_segment_threshold`` (``DySeg_ignore``, 0.95); only the last frame of each sub-segment keeps tokens (anchors
  capped at ``L // 2``, salient at the rest), so a segment without a sub-cut keeps one frame and the realised count
  falls below ``N R`` (recorded). The global feature is the per-patch mean of ``x`` (the adapter's metric on Qwen).
  Kept tokens keep their original M-RoPE positions, as upstream gathers them.
- Qwen3-VL has no FastVID fork; ``configs/model_method/{,tiny_}qwen3_vl_fastvid.yaml`` run the Qwen2.5-VL fork
  (same temporal patches of merged tokens, same per-patch mean as the global feature) with its thresholds.
- Fewer frames than ``c`` (upstream: ``topk`` raises): every transition is cut (the shared segmentation's guard).
- Tie-breaking noise from a ``torch.Generator`` seeded with ``seed`` (upstream: the global RNG), drawn once with the
  reference's shape, so a run is deterministic.
- ``budget == 1`` returns the input unchanged.
- The merge assigns each pool token by ``argmax`` of its dot product with the normalised anchors (upstream also
  normalises the pool token, a positive per-row factor that cannot change the argmax except at rounding-level ties).
- Distances come from one Gram matrix (:func:`gram_dist`) instead of ``torch.cdist``: last-bit differences (and an
  exact zero self-distance where upstream's is cancellation noise) could reorder an exact density near-tie; on the
  parity fixtures and the 32 x 196 x 3584 benchmark the kept indices are identical. They are scaled by
  ``sqrt(3/4) / sqrt(D)`` for the shared DPC (same density ranking as upstream's self-inclusive mean). Merges run
  over gathered pools as upstream, in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection
from tango.methods.dpc import dpc_knn
from tango.methods.tango_ops import fastvid_segments

K_DENSITY = 4  # FastVID's neighbourhood, hard-coded upstream, the point itself included
FORKS = ("ov", "video", "qwen")


def anchor_schedule(sizes: list[int], context: int, p: int) -> list[int]:
    """Anchors per frame: in a segment of n frames, ``(context * n) // ceil(n / p)`` on the last frame and every
    ``p``-th before it, 0 elsewhere; a single-frame segment gets ``context``."""
    out: list[int] = []
    for n in sizes:
        cur = (context * n) // math.ceil(n / p)
        out += [cur if (n - 1 - i) % p == 0 else 0 for i in range(n)]
    return out


def gram_dist(p: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``[B, M, M]`` of ``p [B, M, D]`` from one Gram matrix (``|a|^2 + |b|^2 - 2 a.b``,
    zero diagonal), avoiding the padded copies of ``torch.cdist``'s matmul path; off-diagonal values agree with it to
    ~4e-7 relative (upstream's diagonal is cancellation noise, here exactly 0). A plain ``bmm`` then the norms: on
    CPU ``baddbmm`` with the norms as its input took 70 ms against 44 ms on 32 x 184 x 3584."""
    sq = torch.linalg.vector_norm(p, dim=-1).square()
    g = (sq[:, :, None] + sq[:, None, :]).add_(torch.bmm(p, p.transpose(1, 2)), alpha=-2)
    g.diagonal(dim1=1, dim2=2).zero_()
    return g.clamp_min_(0).sqrt_()


def merge_into_anchors(pool: Tensor, anchors: Tensor, beta: float) -> Tensor:
    """FastVID's DTM merge, batched: ``pool [B, P, D]``, ``anchors [B, A, D]`` (rows of the pool) -> merged anchors.

    Each pool token joins the anchor of highest cosine (first on ties); an anchor with ``n`` members becomes
    ``w * anchor + (1 - w) * mean(members)``, ``w = max(1 / (n + 1), beta)``."""
    an = anchors / anchors.norm(dim=-1, keepdim=True)
    # A pool token's own norm scales all its cosines alike, so the argmax needs only the anchors normalised.
    assign = torch.bmm(pool, an.transpose(1, 2)).argmax(dim=2)  # [B, P]
    onehot = torch.zeros(*assign.shape, anchors.shape[1], dtype=pool.dtype, device=pool.device)
    onehot.scatter_(2, assign.unsqueeze(-1), 1)
    n = onehot.sum(dim=1).unsqueeze(-1)  # [B, A, 1]
    w = (1 / (n + 1)).clamp(min=beta)
    mean = torch.bmm(onehot.transpose(1, 2), pool) / n.clamp(min=1)
    return w * anchors + (1 - w) * mean


def spread(total: int, slots: int) -> list[int]:
    """``total`` over ``slots`` as evenly as possible, the first ``total % slots`` one more (the Video fork's rule)."""
    return [total // slots + (1 if i < total % slots else 0) for i in range(slots)]


def video_schedule(n: int, per_frame: int, context_ratio: float, p: int) -> tuple[list[int], list[int]]:
    """The LLaVA-Video fork's ``(salient, context)`` per frame of an n-frame segment: ``R n`` tokens, ``int(R n d)``
    of them anchors over ``ceil(n / p)`` slots on frames ``i % p == 0``, the list then reversed (the last frame is an
    anchor frame)."""
    seg = per_frame * n
    context = int(seg * context_ratio)
    if n == 1:
        return [seg - context], [context]
    slots = iter(spread(context, (n + p - 1) // p))
    ctx = [next(slots) if i % p == 0 else 0 for i in range(n)]
    return spread(seg - context, n), ctx[::-1]


def qwen_schedule(n: int, per_frame: int, context_ratio: float, p: int, l: int, sub_sizes: list[int]
                  ) -> tuple[list[int], list[int]]:
    """The Qwen2.5-VL fork's ``(salient, context)`` per frame of an n-frame segment split into sub-segments
    ``sub_sizes``: ``R n`` tokens, ``max(int(R n d), 1)`` anchors; salient and anchors spread over the sub-segments
    as the Video fork spreads them over frames (anchors capped at ``L // 2``, salient at ``L - anchors``), and only
    the last frame of each sub-segment keeps tokens."""
    seg = per_frame * n
    context = max(int(seg * context_ratio), 1)
    if n == 1:
        return [seg - context], [context]
    v = len(sub_sizes)
    slots = iter(spread(context, (v + p - 1) // p))
    ctx_v = [min(next(slots), l // 2) if i % p == 0 else 0 for i in range(v)][::-1]
    sal, ctx = [], []
    for size, s_v, c_v in zip(sub_sizes, spread(seg - context, v), ctx_v):
        c = min(c_v, l // 2)
        sal += [0] * (size - 1) + [min(s_v, l - c)]
        ctx += [0] * (size - 1) + [c]
    return sal, ctx


@dataclass
class FastVID(PruningMethod):
    """FastVID: DySeg + salient top-k + density anchors with temporal merging, one ``fork`` per model family."""

    name: str = "fastvid"
    #: c: DySeg makes the c - 1 least similar transitions cuts (``fastvid_DySeg_c``).
    segments: int = 8
    #: tau: every transition whose global cosine is below it is a cut too (``fastvid_DySeg_tau``).
    tau: float = 0.9
    #: d: share of a frame's budget given to density anchors (``fastvid_STPrune_d``).
    context_ratio: float = 0.4
    #: p: anchor-frame stride inside a segment (``fastvid_DTM_p``).
    anchor_stride: int = 4
    #: minimum anchor weight in the merge (``fastvid_DTM_beta``).
    beta: float = 0.6
    #: seed of the density tie-breaking noise.
    seed: int = 0
    dpc_noise: float = 1e-6
    #: which fork's algorithm: "ov" (LLaVA-OV, parallel), "video" (LLaVA-Video) or "qwen" (Qwen2.5-VL); module doc.
    fork: str = "ov"
    #: Qwen fork: inside a segment, a sub-segment ends where the global cosine drops below this (DySeg_ignore).
    sub_segment_threshold: float = 0.95

    needs_attention = True
    attention_source = "pooling_head"
    display_name = "FastVID"
    color = "#F0E442"  # Okabe-Ito yellow
    families = ("llava_ov", "llava_video", "qwen2_5_vl", "qwen3_vl")  # fork per family: configs/model_method

    def __post_init__(self) -> None:
        if self.segments < 1:
            raise ValueError(f"segments={self.segments!r} must be >= 1 (c: DySeg cuts c - 1 transitions)")
        if not 0.0 <= self.context_ratio < 1.0:
            raise ValueError(f"context_ratio={self.context_ratio!r} must be in [0, 1)")
        if self.anchor_stride < 1:
            raise ValueError(f"anchor_stride={self.anchor_stride!r} must be >= 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta!r} must be in [0, 1]")
        if self.fork not in FORKS:
            raise ValueError(f"fastvid: fork={self.fork!r} is invalid; valid: {list(FORKS)}")

    def split(self, tokens_per_frame: int, budget: float) -> tuple[int, int]:
        """``(salient, context)`` per frame: ``R = int(L r)``, ``context = int(R d)``, ``salient = R - context``."""
        r = int(tokens_per_frame * budget)
        context = int(r * self.context_ratio)
        return r - context, context

    def prune(self, x: Tensor, *, budget: float, attn: Tensor | None = None, timestamps=None, grid=None,
              metric: Tensor | None = None) -> Selection:
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, l, d = x.shape
        if attn is None or attn.shape != (n, l):
            raise ValueError(f"fastvid needs attn [N, L] = {[n, l]} (the SigLIP pooling head's attention), got "
                             f"{None if attn is None else tuple(attn.shape)}")
        if metric is None or metric.dim() != 2 or metric.shape[0] != n:
            raise ValueError(f"fastvid needs metric [N, Dg] with N={n}: the frame-global feature (the SigLIP pooling "
                             f"head's output), got {None if metric is None else tuple(metric.shape)}")
        if self.fork in ("video", "qwen"):
            return self._prune_per_segment(x, attn, metric, budget)
        salient, context = self.split(l, budget)
        if salient < 1 or (context > 0 and l - salient < context):
            raise ValueError(f"budget={budget} gives salient={salient}, context={context} of L={l} tokens per frame")
        g = metric.float() / metric.float().norm(dim=1, keepdim=True)
        sizes = fastvid_segments((g[:-1] * g[1:]).sum(dim=1), self.segments - 1, self.tau) if n > 1 else [1]
        per_frame = torch.tensor(anchor_schedule(sizes, context, self.anchor_stride), device=x.device)

        xf = x.float()
        sal = attn.topk(salient, dim=1).indices  # [N, salient]
        is_sal = torch.zeros(n, l, dtype=torch.bool, device=x.device).scatter_(1, sal, True)
        rest = (~is_sal).nonzero()[:, 1].view(n, l - salient)  # non-salient positions, ascending
        frame = torch.arange(n, device=x.device)[:, None]
        pool = xf[frame, rest]  # [N, l - salient, D]; row indexing, not an element-wise gather
        base = frame * l
        tokens, indices = [xf[frame, sal].flatten(0, 1)], [(base + sal).flatten()]
        n_anchor = int(per_frame.max()) if context > 0 else 0
        if n_anchor > 0:
            dist = gram_dist(pool) * (math.sqrt((K_DENSITY - 1) / K_DENSITY) / d**0.5)
            gen = torch.Generator().manual_seed(self.seed)
            # One call over every frame: one noise draw [N, L - salient]; scores sorted descending, so the top-k of a
            # frame is the first k of this list whatever k that frame gets.
            ranked = dpc_knn(pool, min(n_anchor, l - salient), K_DENSITY - 1, generator=gen, noise=self.dpc_noise,
                             dist=dist)  # [N, n_anchor] into the pool
            single = (per_frame == context).nonzero().flatten()  # frames of single-frame segments
            if single.numel():
                a = ranked[single, :context]
                own = pool if single.numel() == n else pool[single]  # every frame its own segment: no copy
                anchors = own[torch.arange(own.shape[0], device=x.device)[:, None], a]
                tokens.append(merge_into_anchors(own, anchors, self.beta).flatten(0, 1))
                indices.append((base[single] + rest[single].gather(1, a)).flatten())
            start = 0
            for size in sizes:  # multi-frame segments: each anchor frame merges the whole segment's pool
                frames = torch.arange(start, start + size, device=x.device)
                start += size
                if size == 1:
                    continue
                f = frames[per_frame[frames] > context]
                cur = int(per_frame[f[0]])
                a = ranked[f, :cur]
                anchors = pool[f[:, None], a]
                seg_pool = pool[frames].reshape(1, -1, d).expand(f.numel(), -1, -1)
                tokens.append(merge_into_anchors(seg_pool, anchors, self.beta).flatten(0, 1))
                indices.append((base[f] + rest[f].gather(1, a)).flatten())
        idx = torch.cat(indices)
        order = idx.argsort()
        out = torch.cat(tokens)[order].to(x.dtype)
        stats = {"tokens_in": n * l, "tokens_out": int(idx.numel()), "segments": len(sizes),
                 "salient_per_frame": salient, "context_per_frame": context,
                 "budget_rule": f"int(L*r)={salient + context} per frame"}
        return Selection(tokens=out, indices=idx[order], stats=stats)

    def _prune_per_segment(self, x: Tensor, attn: Tensor, metric: Tensor, budget: float) -> Selection:
        """The LLaVA-Video and Qwen2.5-VL forks (module doc): per-segment budget, per-anchor-frame density and merge
        pool; the Qwen fork's budget goes to the last frame of each sub-segment."""
        n, l, d = x.shape
        per_frame = int(l * budget)
        if per_frame < 1:
            raise ValueError(f"budget={budget} gives int(L*r)={per_frame} tokens per frame of L={l}")
        g = metric / metric.norm(dim=1, keepdim=True)  # in the feature dtype, as this fork
        sizes = fastvid_segments((g[:-1] * g[1:]).sum(dim=1), self.segments - 1, self.tau) if n > 1 else [1]
        gen = torch.Generator().manual_seed(self.seed)
        out_idx, out_tok = [], []
        start = 0
        for size in sizes:  # each segment has its own budget split, anchor frames and merge pools
            xs, a_s = x[start:start + size], attn[start:start + size]
            flat = xs.reshape(size * l, d)
            if self.fork == "video":
                sal_n, ctx_n = video_schedule(size, per_frame, self.context_ratio, self.anchor_stride)
            else:
                gs = g[start:start + size]
                cuts = ((gs[:-1] * gs[1:]).sum(dim=1) < self.sub_segment_threshold).nonzero().flatten()
                ends = torch.cat([cuts.new_tensor([-1]), cuts, cuts.new_tensor([size - 1])])
                sal_n, ctx_n = qwen_schedule(size, per_frame, self.context_ratio, self.anchor_stride, l,
                                             ends.diff().tolist())
            # salient: each frame's top sal_n[f] (top-k at the segment's largest count, trimmed per frame)
            top = a_s.topk(max(sal_n), dim=1).indices  # [size, max salient]
            take = torch.arange(top.shape[1], device=x.device)[None] < torch.tensor(sal_n, device=x.device)[:, None]
            is_sal = torch.zeros(size, l, dtype=torch.bool, device=x.device)
            is_sal[torch.arange(size, device=x.device)[:, None].expand_as(top)[take], top[take]] = True
            sal_flat = (torch.arange(size, device=x.device)[:, None] * l + top)[take]  # frame-major, top-k order
            unit = flat / flat.norm(dim=-1, keepdim=True)
            seg_idx, seg_tok = [sal_flat], [flat[sal_flat]]
            not_salient = torch.ones(size * l, dtype=torch.bool, device=x.device)
            not_salient[sal_flat] = False
            for f in (i for i, k in enumerate(ctx_n) if k > 0):  # anchor frames: one noise draw each, in order
                rest = (~is_sal[f]).nonzero().flatten()
                pool = xs[f, rest].float()[None]
                dist = torch.cdist(pool, pool) / (d ** 0.5)
                ranked = dpc_knn(None, ctx_n[f], K_DENSITY, generator=gen, noise=self.dpc_noise, dist=dist,
                                 include_self=True)
                anchors = f * l + rest[ranked[0].sort().values]
                members = not_salient.clone()
                members[anchors] = False  # other anchor frames' anchors stay in this frame's pool
                merge = members.nonzero().flatten()
                assign = torch.mm(unit[merge], unit[anchors].T).argmax(dim=1)
                onehot = torch.zeros(merge.numel(), anchors.numel(), dtype=x.dtype, device=x.device)
                onehot.scatter_(1, assign[:, None], 1)
                w = (1 / (onehot.sum(dim=0).unsqueeze(-1) + 1)).clamp(min=self.beta)
                mean = torch.mm(onehot.T, flat[merge]) / onehot.sum(dim=0).clamp(min=1).unsqueeze(-1)
                seg_idx.append(anchors)
                seg_tok.append(w * flat[anchors] + (1 - w) * mean)
            out_idx.append(torch.cat(seg_idx) + start * l)
            out_tok.append(torch.cat(seg_tok))
            start += size
        idx = torch.cat(out_idx)
        order = idx.argsort()
        return Selection(tokens=torch.cat(out_tok)[order].to(x.dtype), indices=idx[order],
                         stats={"tokens_in": n * l, "tokens_out": int(idx.numel()), "segments": len(sizes),
                                "budget_rule": f"int(L*r)={per_frame} per frame, summed per segment ({self.fork} "
                                               f"fork)"})
