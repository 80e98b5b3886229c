"""FlashVID (Fan et al., ICLR 2026, arXiv 2602.08024): attention-and-diversity token selection (ADTS), tree-based
spatio-temporal token merging (TSTM), then FastV-style pruning inside the LLM.

Reproduced: ``flashvid/utils.py`` (``flashvid_compression``, ``segment``, ``additional_segment``,
``segment_compression``, ``spatiotemporal_compression``, ``dpc_knn``, ``fastv_prune``) and
``flashvid/token_selection.py`` of github.com/Fanziyang-v/FlashVID at commit
``1d37422c5afcaa15ee46b5355f5ba798fa93290a``; settings of ``scripts/{llava_ov,llava_vid,qwen2_5_vl}.sh``.

On ``x [N, L, D]`` with ``attn [N, L]`` (the harness's ``last_layer`` source, as upstream: LLaVA, the attention each
patch receives in the last SigLIP layer, pooled like ``x``; Qwen2.5-VL, the attention each patch receives within its
temporal patch in the last vision block, mean over heads and queries, averaged over each 2x2 merge unit), budget r
(Qwen: N temporal grids of two frames each):

1. budgets per frame in Python floats, in upstream's order: ``B = ceil(L r expansion)``, ``A = ceil(B alpha)`` ADTS
   tokens, ``S = B - A`` merged tokens;
2. segmentation on frame means: cut where the consecutive cosine is below ``segment_threshold``; with fewer than
   ``min_segment_num`` segments, existing cuts are set to 1.0 and the lowest remaining similarities become cuts
   (``topk``, so a near-duplicate frame can re-draw a cut and leave a zero-length segment, as upstream);
3. per segment of F frames: ADTS (``selection="attn_div_v2"``: greedy max-min over ``1 - cos`` scaled per column by
   ``attn * 1e6`` and the event relevance ``mean_c <x_j, mean(frame c)>``, first pick the best second-nearest, no
   guard against re-picks; ``"attn_div"``: attention scaling only, picked columns excluded); then, for F > 1, TSTM:
   every non-ADTS token of frame f links to its most similar non-ADTS token of frame f-1 when the cosine exceeds
   ``temporal_threshold`` (lowered so that at least ``(A + S) F`` tokens stay roots), trees are accumulated from the
   last frame to the first, and a root becomes ``subtree sum / (1 + direct children)`` (upstream's count;
   ``merge_count="intended"`` divides by the subtree size); then per frame ``ceil(n rho)`` DPC-KNN clusters
   (``rho = S F / roots``; FlashVID's density: the k nearest *including* the point, ``k = min(c, 7)``, distances
   ``/ sqrt(D)``, noise ``U(0, 1e-6)``), each the mean of its members at its centre's index. A single-frame segment
   clusters all L tokens with ``rho = S / L``, ADTS tokens included, so a flat index can appear twice (upstream too);
4. output sorted by flat index; kept rows are ADTS copies and merged means.

Inside the LLM (``inner_llm``; LLaVA-7B configs): at decoder layer ``pruning_layer`` (20 of 28) the visual span
keeps its ``ceil(M * llm_retention_ratio)`` tokens most attended by the last prompt token at layer K-1 (head mean),
original positions kept. With ``expansion = 1.25`` the layer average is ``1.25 r (20 + 8 * 0.3) / 28 = r``, so
``budget`` is the layer-averaged fraction. Without the inner stage (the tiny models' configs) ``expansion`` is 1.

Intentional deviations:

- The caller's ``x`` is not modified (upstream accumulates TSTM trees in place into the caller's features).
- The noise comes from a ``torch.Generator`` seeded with ``seed`` (upstream: the global RNG), drawn in upstream's
  order (one ``[1, n]`` draw per clustered frame, segment then frame order): with ``torch.manual_seed(seed)`` before
  upstream's call the draws are the same numbers.
- Duplicate flat indices (single-frame segments) keep the ADTS copy first; upstream's final ``argsort`` is not
  stable, so their relative order is undefined there.
- ADTS keeps a running minimum over the picked rows instead of recomputing it from all picked rows at every step
  (the same values; O(A L) instead of O(A^2 L) per frame). TSTM walks the frames of a segment from last to first
  (each frame's accumulation needs the next frame's), as upstream; everything else is batched over frames.
- ``count_rule="exact"`` (a variant, recorded as regime ``exact_count``; the default ``"authors"`` is the reference):
  the output is reconciled to ``round(r expansion N L)`` tokens by ``attn``: the outputs whose representative has
  the lowest attention are dropped, or the tokens of highest attention no output represents are added with their own
  features (:func:`~tango.methods.base.reconcile`), so the method is servable.
- When ``(A + S) F >= F L`` (budgets near 1) upstream's lower-bound ``topk`` fails; here nothing is merged.
- The in-LLM stage needs the decoder layers to exist: ``pruning_layer`` must be below the model's layer count.
- LLaVA-Video: the authors' script uses ``mm_newline_position=frame`` (a newline after each frame's kept tokens,
  inside the in-LLM span); the harness's LLaVA-Video adapter lays out newlines by its own convention for every
  pre-LLM method.
- Qwen2.5-VL: the vision attention is computed in fp32 (upstream: the model dtype) by the adapter's hook, not by a
  patched FlashAttention-2 block; the Qwen script's settings (``selection="attn_div"``, ``min_segment_num=4``) are
  in ``configs/model_method/{,tiny_}qwen2_5_vl_flashvid.yaml``. Kept tokens keep their original M-RoPE positions,
  as upstream gathers them.
- Qwen3-VL (``scripts/qwen3_vl.sh``, ``configs/model_method/{,tiny_}qwen3_vl_flashvid.yaml``): as Qwen2.5-VL
  with the in-LLM stage at layer 28 of 36 keeping ``ceil(0.1 M)``; DeepStack maps are gathered at the
  representatives (the adapter's rule, upstream's too); the last ViT block's attention, no window order.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods.base import ExactCount, PruningMethod, Selection, check_budget, identity_selection
from tango.methods.dpc import columns_argmin, dpc_knn

UPSTREAM = "github.com/Fanziyang-v/FlashVID@1d37422c5afcaa15ee46b5355f5ba798fa93290a"
SELECTIONS = ("attn_div_v2", "attn_div")
MERGE_COUNTS = ("reference", "intended")


def flashvid_budgets(l: int, budget: float, expansion: float, alpha: float) -> tuple[int, int]:
    """``(A, S)`` per frame: ``B = ceil(L r expansion)`` (upstream's float expression), ``A = ceil(B alpha)``."""
    b = math.ceil(l * budget * expansion)
    a = math.ceil(b * alpha)
    return a, b - a


def flashvid_segments(x: Tensor, threshold: float, min_segments: int, complementary: bool) -> list[int]:
    """Segment lengths (zero-length possible) from the frame means of ``x [N, L, D]``, in ``x``'s dtype."""
    n = x.shape[0]
    f = x.mean(1)
    f = f / f.norm(p=2, dim=-1, keepdim=True)
    sim = (f[:-1] * f[1:]).sum(dim=-1)
    cuts = torch.where(sim < threshold)[0]
    if cuts.numel() + 1 < min_segments and complementary:
        sim = sim.clone()
        sim[sim < threshold] = 1.0
        extra = torch.topk(sim, k=min(min_segments - cuts.numel() - 1, sim.shape[0]), largest=False).indices
        cuts = torch.cat([cuts, extra]).sort().values
    ends = torch.cat([cuts.new_tensor([-1]), cuts, cuts.new_tensor([n - 1])])
    return ends.diff().tolist()


def adts(x: Tensor, attn: Tensor, k: int, selection: str) -> Tensor:
    """ADTS on one segment: ``x [F, L, D]``, ``attn [F, L]`` -> ``[F, k]`` sorted local indices (repeats possible
    with ``attn_div_v2``, as upstream)."""
    f = x.float()
    fn = f / f.norm(p=2, dim=-1, keepdim=True)
    dist = 1.0 - torch.bmm(fn, fn.transpose(-1, -2))
    dist = dist * (attn.float() * 1e6)[:, None, :]
    if selection == "attn_div_v2":
        relevance = torch.einsum("b n d, c d -> b c n", f, f.mean(1)).mean(1)  # event relevance [F, L]
        dist = dist * relevance[:, None, :]
    picks = torch.zeros(x.shape[0], k, dtype=torch.long, device=x.device)
    picks[:, 0] = torch.topk(dist, k=2, dim=1, largest=False).values[:, 1, :].argmax(dim=-1)
    running = dist.gather(1, picks[:, :1, None].expand(-1, -1, dist.shape[-1]))[:, 0]  # min over picked rows
    for i in range(1, k):  # greedy: each pick depends on the previous ones
        score = running
        if selection == "attn_div":
            score = running.scatter(1, picks[:, :i], -1.0)
        picks[:, i] = score.argmax(dim=-1)
        running = torch.minimum(running, dist.gather(1, picks[:, i, None, None].expand(-1, 1, dist.shape[-1]))[:, 0])
    return picks.sort(dim=1).values


def tstm(x: Tensor, free: Tensor, a: int, s: int, threshold: float, intended: bool) -> list[tuple[Tensor, Tensor]]:
    """Tree merging of one segment ``x [F, L, D]`` (F > 1) over the non-ADTS tokens ``free [F, L]``.

    Returns:
        Per frame ``(roots [R_f] ascending local indices, values [R_f, D])``.
    """
    nf, l, d = x.shape
    fn = x / x.norm(p=2, dim=-1, keepdim=True)
    sim = torch.einsum("b n d, b m d -> b n m", fn[1:], fn[:-1])
    sim[~free[1:].unsqueeze(-1).expand(-1, -1, l)] = -1.0
    sim[~free[:-1].unsqueeze(1).expand(-1, l, -1)] = -1.0
    best, parent = sim.max(dim=-1)
    best = F.pad(best, (0, 0, 1, 0), value=-1)
    parent = F.pad(parent, (0, 0, 1, 0), value=-1)
    edge = best > threshold
    lower = (a + s) * nf
    if int((~edge).sum()) < lower and lower < nf * l:
        soft = max(best.view(-1).topk(k=nf * l - lower).values[-1], -1.0 + 1e-6)
        edge = best > soft
    acc = x.clone()
    count = torch.ones(nf, l, dtype=x.dtype, device=x.device)
    size = torch.ones(nf, l, dtype=x.dtype, device=x.device)  # subtree sizes, for merge_count="intended"
    for f in range(nf - 1, -1, -1):  # frame f-1 accumulates frame f's trees
        root = ~edge[f]
        acc[f, root] = acc[f, root] / (size if intended else count)[f, root].unsqueeze(-1)
        if f > 0 and bool(edge[f].any()):
            p = parent[f, edge[f]]
            acc[f - 1].index_add_(0, p, acc[f, edge[f]])
            count[f - 1].index_add_(0, p, torch.ones_like(p, dtype=x.dtype))
            size[f - 1].index_add_(0, p, size[f, edge[f]])
    keep = ~edge & free
    return [(keep[f].nonzero().flatten(), acc[f, keep[f]]) for f in range(nf)]


def cluster_means(tokens: Tensor, c: int, gen: torch.Generator, noise: float) -> tuple[Tensor, Tensor]:
    """FlashVID's spatial merge of one frame's ``tokens [n, D]`` into ``c`` clusters: ``(centres [c] in score order,
    means [c, D])``; each centre belongs to its own cluster."""
    n, d = tokens.shape
    dist = torch.cdist(tokens[None].float(), tokens[None].float()) / math.sqrt(d)
    centres = dpc_knn(None, c, min(c, 7), generator=gen, noise=noise, dist=dist, include_self=True)
    assign = columns_argmin(dist, centres)
    assign.scatter_(1, centres, torch.arange(c, device=tokens.device)[None])
    onehot = F.one_hot(assign[0], num_classes=c).to(tokens.dtype)
    means = torch.einsum("n c, n d -> c d", onehot, tokens) / onehot.sum(dim=0).unsqueeze(-1)
    return centres[0], means


@dataclass
class FlashVID(ExactCount, PruningMethod):
    """FlashVID: ADTS + tree merging before the LLM, FastV-style pruning inside it (see module doc)."""

    name: str = "flashvid"
    #: share of each frame's budget B given to ADTS.
    alpha: float = 0.7
    #: "attn_div_v2" (LLaVA scripts) or "attn_div" (Qwen scripts).
    selection: str = "attn_div_v2"
    #: TSTM edge threshold (cosine to the previous frame's token).
    temporal_threshold: float = 0.8
    #: cut between frames whose frame-mean cosine is below this.
    segment_threshold: float = 0.9
    #: at least this many segments (LLaVA scripts 8, Qwen 4).
    min_segment_num: int = 8
    #: add the least similar transitions as cuts until min_segment_num.
    complementary_segment: bool = True
    #: pre-LLM budget multiplier (1.25 with the inner stage; 1 without it).
    expansion: float = 1.0
    #: FastV-style pruning at decoder layer pruning_layer (LLaVA-7B configs).
    inner_llm: bool = False
    #: decoder layer K whose input is pruned (attention of layer K-1).
    pruning_layer: int = 20
    #: fraction of the visual span kept from layer K on (ceil).
    llm_retention_ratio: float = 0.3
    #: "reference": roots divided by 1 + direct children (upstream); "intended": by the subtree size.
    merge_count: str = "reference"
    #: seed of the DPC-KNN tie-breaking noise.
    seed: int = 0
    #: amplitude of that noise.
    dpc_noise: float = 1e-6
    #: "authors" (ceil(L r expansion) per frame, merged clusters) or "exact" (reconciled to round(r expansion N L)).
    count_rule: str = "authors"

    stage = "pre_llm"
    display_name = "FlashVID"
    color = "#882255"
    needs_attention = True
    attention_source = "last_layer"
    families = ("llava_ov", "llava_video", "qwen2_5_vl", "qwen3_vl")

    def __post_init__(self) -> None:
        checks = [(self.selection in SELECTIONS, "selection", list(SELECTIONS)),
                  (self.merge_count in MERGE_COUNTS, "merge_count", list(MERGE_COUNTS)),
                  (0.0 <= self.alpha <= 1.0, "alpha", "[0, 1]"),
                  (self.expansion > 0, "expansion", "> 0"),
                  (self.min_segment_num >= 1, "min_segment_num", ">= 1"),
                  (self.pruning_layer >= 1, "pruning_layer", ">= 1"),
                  (0.0 < self.llm_retention_ratio <= 1.0, "llm_retention_ratio", "(0, 1]")]
        for ok, field_name, valid in checks:
            if not ok:
                raise ValueError(f"flashvid: {field_name}={getattr(self, field_name)!r} is invalid; valid: {valid}")
        self.check_count_rule()
        self.stage = "both" if self.inner_llm else "pre_llm"

    def decoder_hooks(self, decoder, budget: float):
        """``inner_llm``: from layer ``pruning_layer`` keep ``ceil(M * llm_retention_ratio)`` visual tokens, the most
        attended by the last prompt token at layer K-1 (head mean)."""
        from tango.hooks import drop_tokens_after, keep_positions

        if not self.inner_llm or check_budget(budget) == 1.0:
            return nullcontext({})
        if self.pruning_layer >= decoder.num_layers:
            raise ValueError(f"pruning_layer={self.pruning_layer} but this decoder has {decoder.num_layers} layers; "
                             f"set it in configs/model_method/<model>_flashvid.yaml")

        def select(row):
            visual = decoder.visual_positions.to(row.device)
            keep = math.ceil(visual.numel() * self.llm_retention_ratio)
            top = visual[row.mean(0)[visual].topk(keep).indices]
            return keep_positions(row.shape[1], visual, top)
        return drop_tokens_after(decoder.layers, self.pruning_layer, select, attention_row=decoder.attention_row)

    def pre_llm_fraction(self, budget: float) -> float:
        """``budget * expansion``, capped at 1."""
        return min(budget * self.expansion, 1.0)

    def prune(self, x: Tensor, *, budget: float, attn: Tensor | None = None, timestamps=None, grid=None,
              metric=None) -> Selection:
        """FlashVID before the LLM on ``x [N, L, D]``; tokens sorted by flat index (duplicates possible)."""
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        n, l, d = x.shape
        if attn is None or tuple(attn.shape) != (n, l):
            raise ValueError(f"flashvid needs attn [N, L] = {[n, l]} (attention received in the last vision layer, "
                             f"attention_source='last_layer'), got {None if attn is None else tuple(attn.shape)}")
        a, s = flashvid_budgets(l, budget, self.expansion, self.alpha)
        if a > l or s < 0:
            raise ValueError(f"flashvid: budget={budget} with expansion={self.expansion} asks for A={a} ADTS tokens "
                             f"of L={l} per frame")
        lengths = flashvid_segments(x, self.segment_threshold, self.min_segment_num, self.complementary_segment)
        gen = torch.Generator().manual_seed(int(self.seed))
        out_idx, out_tok = [], []
        start = 0
        for size in lengths:  # segments differ in length and in their merge ratio
            if size == 0:
                continue
            xs, base = x[start:start + size], start * l
            start += size
            picked = adts(xs, attn[start - size:start], a, self.selection) if a > 0 else xs.new_zeros(size, 0).long()
            frame_base = base + torch.arange(size, device=x.device)[:, None] * l
            out_idx.append((frame_base + picked).flatten())
            out_tok.append(xs.gather(1, picked[..., None].expand(-1, -1, d)).reshape(-1, d))
            if s * size == 0 or self.temporal_threshold >= 1.0:
                continue
            if size > 1:
                free = torch.ones(size, l, dtype=torch.bool, device=x.device).scatter_(1, picked, False)
                roots = tstm(xs, free, a, s, self.temporal_threshold, self.merge_count == "intended")
            else:
                roots = [(torch.arange(l, device=x.device), xs[0])]
            ratio = s * size / sum(int(r.numel()) for r, _ in roots)
            for f, (local, values) in enumerate(roots):
                c = math.ceil(local.numel() * ratio)
                if c > 0 and ratio < 1.0:
                    centres, values = cluster_means(values, c, gen, self.dpc_noise)
                    local = local[centres]
                out_idx.append(base + f * l + local)
                out_tok.append(values)
        idx = torch.cat(out_idx)
        order = idx.argsort(stable=True)
        idx = idx[order]
        sel = Selection(tokens=torch.cat(out_tok)[order].to(x.dtype), indices=idx,
                        stats={"tokens_in": n * l, "tokens_out": int(idx.numel()), "adts_per_frame": a,
                               "merged_per_frame": s, "segments": sum(1 for z in lengths if z > 0),
                               "empty_segments": sum(1 for z in lengths if z == 0),
                               "duplicate_indices": int(idx.numel() - idx.unique().numel()),
                               "budget_rule": f"ceil(L*r*{self.expansion:g})={a + s} per frame, {a} by ADTS"})
        return self.exact_sorted(sel, x, attn, budget) if self.count_rule == "exact" else sel
