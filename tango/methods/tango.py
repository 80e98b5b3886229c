"""Tango: Taming Visual Signals for Efficient Video Large Language Models (arXiv 2604.09547).

Reproduced: github.com/xjtupanda/Tango at commit ``cc815b6e6762f6cf54ae20fafefd4d5bc02f2aef``:
``tango/pruner.py::tango_pruner``, ``tango/utils.py`` (``holitom_segmentation``, ``fastvid_segmentation``,
``dpc_knn``, ``tango_token_merger``, ``tango_compressor``, ``perform_cluster_merging``),
``llava/model/st_rope.py::SpatioTemporalRoPE`` and, for LLaVA-Video, the inner-LLM stage of
``VLMEvalKit/.../intra_llm_pruning/fastv_tango.py`` (https://github.com/xjtupanda/Tango).

Pipeline on ``x [N, L, D]`` (projected, pooled tokens) with saliency ``attn [N, L]`` (vision-encoder attention):

1. zero the saliency at the model's attention-sink positions (``sink_indices``, per model);
2. ``xr = ST-RoPE(normalize(x), t seconds, (h, w))`` (:mod:`tango.methods.st_rope`), used only for clustering;
3. temporal segmentation: HoliTom dynamic program over per-token consecutive-frame cosines (``segment_type=
   "holitom"``) or FastVID cuts on per-frame global features (``"fastvid"``);
4. per segment: single frame -> :func:`~tango.methods.tango_ops.compress`; several frames -> positions static over
   the whole segment (cos > ``static_threshold``) are averaged over frames, compressed once at the rescaled ratio
   ``r'`` and placed at the segment's first frame; the dynamic positions get per-frame Salient Token Selection
   (top ``alpha * k_s`` candidates, DPC-KNN, best attention per cluster) and one segment-wide Spatio-Temporal
   Merging (DPC-KNN anchors, nearest-anchor assignment, ``max(1/n, beta)``-weighted merge);
5. kept tokens in original raster (frame-major, row-major) order.

LLaVA-Video (``inner_llm=True``) adds a FastV-style prune + merge at decoder layer ``inner_layer``
(:func:`~tango.methods.tango_ops.inner_llm_merge`, attached by :meth:`Tango.decoder_hooks`); the pre-LLM ratio is then
``28 r / 23`` (:func:`~tango.methods.tango_ops.pre_llm_ratio`, printed to 6 significant digits like the run
script's ``awk``: 0.121739 at r = 0.1), so ``budget`` is the 28-layer average.

Parity with the upstream functions is tested against frozen outputs in ``tests/fixtures/tango/`` (exact indices,
features to rtol 1e-5; on those inputs they match bit for bit).

Defaults follow the reference *code* (the run scripts for the hyperparameters). Intentional deviations:

- ``budget = 1`` (or a pre-LLM ratio capped at 1) returns the input unchanged; upstream still collapses static
  tokens at ratio 1.
- In-segment static threshold: the code never forwards ``similarity_threshold`` to ``tango_token_merger``, so it is
  always 0.8 (``static_threshold``, configurable), while segmentation uses 0.65 at r = 0.1 and 0.8 otherwise
  (``segment_threshold=None`` applies that rule to the requested budget: 0.65 for budget <= 0.1, inferred for
  budgets below 0.1; set a number to override). The paper may describe a single tau.
- Merged-feature defect: upstream writes the merged context features, computed in ascending anchor order, onto the
  anchors in DPC-KNN score order. Reproduced by default (``fix_merge_order=False``); ``True`` gives each anchor the
  merge of its own cluster. The kept index set is the same either way.
- Tie-breaking noise ``U(0, dpc_noise)`` comes from a ``torch.Generator`` seeded with ``seed`` (upstream: the global
  RNG, unseeded), so runs are deterministic; kept sets do not depend on the noise except for exact density ties.
- Edge case: when identical clustering features (all-zero tokens, or flat frames without ST-RoPE) make one token
  the pick of two salient clusters, upstream keeps it twice; here the repeat is replaced by the best-ranked unpicked
  candidate, so indices stay unique and the count is unchanged.
- Inputs are not mutated (upstream zeroes the caller's saliency in place and writes merged features into the
  caller's feature tensor).
- Work is batched: all single-frame segments are compressed in one batch, cluster-wise maxima are computed with
  masks, and the HoliTom removable-count table is built from run lengths in O(N L + N^2) memory; the segmentation
  DP is a loop over frames with one vector op per frame (upstream: loops over frames x windows). Multi-frame
  segments are still processed one after the other (each has its own static mask and budget). The DPC-KNN distance
  matrices hold upstream's ``torch.cdist`` values bit for bit (needed for identical selections), built in place
  from the unique tokens (:func:`~tango.methods.dpc.gathered_cdist`); the nearest-anchor assignment reads the
  anchors' columns of that matrix instead of a second cdist (the same values), and the nearest-denser-point step
  masks it in row blocks. ST-RoPE rotates the normalised features in place. The random-number consumption order
  differs from upstream's (single-frame segments first), which only matters for exact density ties.
- ST-RoPE sections for another hidden size than 3584 (upstream hard-codes ``[1196, 1194, 1194]``):
  ``d_h = d_w = 2 * (D // 6)``, ``d_t = D - 2 d_h`` (:func:`~tango.methods.st_rope.strope_sections`); identical
  for D = 3584, ``[24, 20, 20]`` for the tiny D = 64. Override with ``strope_sections``.
- FastVID segmentation takes the per-frame global feature from ``metric`` (``[N, Dg]``, e.g. SigLIP's MAP-head
  output for LLaVA; a ``[N, L, Dm]`` metric is averaged over L), required; the Qwen2.5-VL adapter passes the
  per-frame mean of ``x`` (what upstream's Qwen2.5-VL copy does).
- ``count_rule="exact"`` (a variant, recorded as regime ``exact_count``; the default ``"authors"`` is the reference):
  the output is reconciled to ``round(r N L)`` tokens (``r`` the pre-LLM ratio) by the saliency (sinks zeroed):
  the lowest-saliency outputs are dropped, or the highest-saliency tokens no output represents are added with their
  own features (:func:`~tango.methods.base.reconcile`), so the count is known from the shape and the method is
  servable (``integrations/vllm``).
- Ablation switches not in upstream: ``use_st_rope=False`` (plain normalised features), ``salient_mode="topk"``
  (top-k_s by saliency), ``merge_context=False`` (context anchors keep their own features). ``context_ratio=0``
  gives all budget to salient tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods import tango_ops
from tango.methods.base import ExactCount, PruningMethod, Selection, check_budget, identity_selection
from tango.methods.st_rope import check_sections, st_rope, strope_sections
from tango.methods.tango_ops import (
    budget_split,
    compress,
    consecutive_cosine,
    fastvid_segments,
    holitom_segments,
    inner_llm_merge,
    pre_llm_ratio,
    rescaled_ratio,
    select_salient,
    unselected,
)

UPSTREAM = "github.com/xjtupanda/Tango@cc815b6e6762f6cf54ae20fafefd4d5bc02f2aef"


def _check(ok: bool, what: str, value, valid: str) -> None:
    if not ok:
        raise ValueError(f"Tango: {what}={value!r} is invalid; valid: {valid}")


@dataclass
class Tango(ExactCount, PruningMethod):
    name: str = "tango"
    #: attention-sink positions on the pooled grid, zeroed in the saliency (per model; see configs/model_method).
    sink_indices: List[int] = field(default_factory=list)
    #: "holitom" (dynamic program, used by all released scripts) or "fastvid" (cuts on global-feature similarity).
    segment_type: str = "holitom"
    #: segmentation threshold; None = run-script rule: 0.65 if budget <= 0.1 else 0.8.
    segment_threshold: Optional[float] = None
    #: in-segment static-position threshold (upstream: function default 0.8, never forwarded).
    static_threshold: float = 0.8
    #: longest HoliTom segment, in frames.
    max_window: int = 1024
    #: FastVID's c: number of segments from the least-similar cuts (c - 1 cuts).
    fastvid_c: int = 8
    #: share of each budget given to merged context tokens (salient share is 1 - context_ratio).
    context_ratio: float = 0.4
    #: candidate expansion: top int(alpha * k_s) tokens by saliency enter the salient clustering.
    alpha: float = 1.5
    #: minimum weight of the anchor in a merged context token.
    beta: float = 0.6
    #: DPC-KNN neighbours (the point itself excluded).
    num_neighbors: int = 7
    #: ST-RoPE base of the time axis (seconds).
    base_time: float = 10000.0
    #: ST-RoPE base of the two spatial axes (pooled-grid units).
    base_space: float = 1000.0
    #: ST-RoPE channel sections [t, h, w]; None = derived from D (1196/1194/1194 for D = 3584).
    strope_sections: Optional[List[int]] = None
    #: ablation: False clusters on plain normalised features.
    use_st_rope: bool = True
    #: "diverse" (candidates + DPC-KNN + best per cluster) or "topk" (ablation: plain top-k by saliency).
    salient_mode: str = "diverse"
    #: ablation: False keeps the context anchors' own features instead of merging their clusters into them.
    merge_context: bool = True
    #: True = each anchor gets the merge of its own cluster (corrected); False = upstream's permuted write-back.
    fix_merge_order: bool = False
    #: amplitude of the DPC-KNN tie-breaking density noise.
    dpc_noise: float = 1e-6
    #: seed of the tie-breaking noise generator.
    seed: int = 0
    #: LLaVA-Video: prune + merge inside the LLM at layer inner_layer (pre-LLM ratio raised to keep the average).
    inner_llm: bool = False
    #: decoder layer index K whose input is pruned (attention from layer K-1).
    inner_layer: int = 18
    #: fraction of the visual span kept at layer K.
    inner_keep: float = 0.5
    #: weight of the kept token in the inner merge.
    inner_merge_weight: float = 0.6
    #: decoder layers the budget is averaged over (Qwen2-7B: 28).
    num_layers: int = 28
    #: "authors" (the count the pipeline yields) or "exact" (reconciled to round(r N L) by saliency: servable).
    count_rule: str = "authors"

    stage = "pre_llm"
    display_name = "Tango"
    color = "#D55E00"  # Okabe-Ito
    needs_attention = True

    def __post_init__(self) -> None:
        _check(self.segment_type in ("holitom", "fastvid"), "segment_type", self.segment_type, "'holitom' | 'fastvid'")
        _check(
            self.segment_threshold is None or -1.0 <= self.segment_threshold <= 1.0,
            "segment_threshold",
            self.segment_threshold,
            "None or a cosine in [-1, 1]",
        )
        _check(-1.0 <= self.static_threshold <= 1.0, "static_threshold", self.static_threshold, "a cosine in [-1, 1]")
        _check(self.max_window >= 1, "max_window", self.max_window, "an int >= 1")
        _check(self.fastvid_c >= 1, "fastvid_c", self.fastvid_c, "an int >= 1")
        _check(0.0 <= self.context_ratio <= 1.0, "context_ratio", self.context_ratio, "[0, 1]")
        _check(self.alpha >= 1.0, "alpha", self.alpha, ">= 1 (candidate pool = int(alpha * k_s))")
        _check(0.0 <= self.beta <= 1.0, "beta", self.beta, "[0, 1]")
        _check(self.num_neighbors >= 1, "num_neighbors", self.num_neighbors, "an int >= 1")
        _check(self.base_time > 0, "base_time", self.base_time, "> 0")
        _check(self.base_space > 0, "base_space", self.base_space, "> 0")
        _check(
            self.strope_sections is None
            or (len(self.strope_sections) == 3 and all(int(s) > 0 and int(s) % 2 == 0 for s in self.strope_sections)),
            "strope_sections",
            self.strope_sections,
            "None or three positive even ints [t, h, w] summing to D",
        )
        _check(self.salient_mode in ("diverse", "topk"), "salient_mode", self.salient_mode, "'diverse' | 'topk'")
        _check(self.dpc_noise >= 0.0, "dpc_noise", self.dpc_noise, ">= 0")
        _check(all(int(i) >= 0 for i in self.sink_indices), "sink_indices", self.sink_indices, "non-negative ints")
        _check(self.num_layers >= 1, "num_layers", self.num_layers, "an int >= 1")
        _check(
            1 <= self.inner_layer < self.num_layers,
            "inner_layer",
            self.inner_layer,
            f"an int in [1, num_layers - 1 = {self.num_layers - 1}]",
        )
        _check(0.0 < self.inner_keep <= 1.0, "inner_keep", self.inner_keep, "(0, 1]")
        _check(0.0 <= self.inner_merge_weight <= 1.0, "inner_merge_weight", self.inner_merge_weight, "[0, 1]")
        self.check_count_rule()
        # Instance-level override of the ClassVar: the LLaVA-Video config also acts inside the LLM.
        self.stage = "both" if self.inner_llm else "pre_llm"

    # ---------------------------------------------------------------------------------------------------- budget
    def pre_llm_budget(self, budget: float) -> float:
        """Ratio applied before the LLM: ``budget``, or ``28 budget / 23`` (capped at 1) with the inner stage."""
        budget = check_budget(budget)
        if not self.inner_llm:
            return budget
        return pre_llm_ratio(budget, self.inner_layer, self.inner_keep, self.num_layers)

    def pre_llm_fraction(self, budget: float) -> float:
        """The pre-LLM ratio capped at 1 (``count_rule="exact"`` keeps ``round`` of it times ``N L``)."""
        return min(self.pre_llm_budget(budget), 1.0)

    def segment_tau(self, budget: float) -> float:
        """Segmentation threshold for the *requested* budget (run scripts: 0.65 at r = 0.1, else 0.8)."""
        if self.segment_threshold is not None:
            return float(self.segment_threshold)
        return 0.65 if budget <= 0.1 + 1e-9 else 0.8

    def inner_llm_active(self, budget: float) -> bool:
        """Whether the inner-LLM stage runs (never at budget 1, which means no pruning at all)."""
        return self.inner_llm and check_budget(budget) < 1.0

    def inner_llm_select(self, hidden: Tensor, attn: Tensor) -> tuple[Tensor, Tensor]:
        """Inner-LLM prune + merge with this config; see :func:`tango.methods.tango_ops.inner_llm_merge`."""
        return inner_llm_merge(hidden, attn, keep=self.inner_keep, weight=self.inner_merge_weight)

    def decoder_hooks(self, decoder, budget: float):
        """LLaVA-Video (``inner_llm``): at layer ``inner_layer``, prune the visual span by layer ``K-1``'s head-mean
        last-token attention and merge the dropped tokens into the kept ones (:meth:`inner_llm_select`)."""
        from contextlib import nullcontext

        from tango.hooks import drop_tokens_after, keep_positions

        if not self.inner_llm_active(budget):
            return nullcontext({})
        decoder.require_layers(self.num_layers, self.name)

        def transform(h, row):
            visual = decoder.visual_positions.to(h.device)
            local, merged = self.inner_llm_select(h[:, visual], row.mean(0)[visual])
            keep = keep_positions(h.shape[1], visual, visual[local])
            h = h.clone()
            h[:, visual[local]] = merged.to(h.dtype)
            return keep, h[:, keep]
        return drop_tokens_after(decoder.layers, self.inner_layer, transform=transform,
                                 attention_row=decoder.attention_row)

    def tokens_layer_avg(self, n_visual: int) -> float:
        """Visual tokens averaged over decoder layers when ``n_visual`` span tokens enter the LLM."""
        if not self.inner_llm:
            return float(n_visual)
        k, n_layers = self.inner_layer, self.num_layers
        return (k * n_visual + (n_layers - k) * round(n_visual * self.inner_keep)) / n_layers

    # ---------------------------------------------------------------------------------------------------- prune
    def prune(
        self,
        x: Tensor,
        *,
        budget: float,
        attn: Tensor | None = None,
        timestamps: Tensor | None = None,
        grid: tuple[int, int] | None = None,
        metric: Tensor | None = None,
    ) -> Selection:
        """Tango before the LLM.

        Args:
            x: ``[N, L, D]`` projected, pooled visual tokens.
            budget: fraction of visual tokens the LLM sees (layer average when ``inner_llm``).
            attn: ``[N, L]`` vision-encoder saliency (required).
            timestamps: ``[N]`` frame times in seconds (default: 0, 1, 2, ...).
            grid: ``(H, W)`` pooled grid (default: square ``isqrt(L)``).
            metric: optional per-frame global feature ``[N, Dg]`` (or ``[N, L, Dm]``) for ``segment_type="fastvid"``.

        Returns:
            ``Selection`` with tokens ``[M, D]`` in raster order (static tokens at their segment's first frame),
            source indices ``[M]`` and stats: ``tokens_in``, ``tokens_out``, ``budget_pre_llm`` (ratio applied
            here), ``num_segments``, ``single_frame_segments``, ``static_positions`` (summed over multi-frame
            segments), ``static_kept``, ``salient_kept`` and ``context_kept`` (the last two include single frames).
        """
        n, l, d = x.shape
        ratio = self.pre_llm_budget(budget)
        if ratio >= 1.0:
            sel = identity_selection(x)
            sel.stats.update(budget_pre_llm=ratio, num_segments=0)
            return sel
        if attn is None or tuple(attn.shape) != (n, l):
            raise ValueError(f"Tango needs attn of shape {(n, l)}, got {None if attn is None else tuple(attn.shape)}")
        if grid is None:
            side = math.isqrt(l)
            if side * side != l:
                raise ValueError(f"L={l} is not a square grid: pass grid=(H, W)")
            grid = (side, side)
        if timestamps is None and self.use_st_rope:  # 1 fps would be a guess: on a long clip it moves many tokens
            raise ValueError(f"Tango needs timestamps [N={n}] (frame times in seconds) for ST-RoPE: pass the clip's "
                             f"(the adapters pass Clip.timestamps), or use_st_rope=False")
        if any(int(i) >= l for i in self.sink_indices):
            raise ValueError(f"sink_indices={self.sink_indices} has positions outside the {l} tokens per frame")

        score = attn.clone()  # never mutate the caller's saliency
        if self.sink_indices:
            score[:, torch.as_tensor(self.sink_indices, device=score.device, dtype=torch.long)] = 0
        # One normalisation serves the segmentation, the static masks and the clustering features (as upstream,
        # all of them use cosines / distances of normalize(x.float())).
        xn = F.normalize(x.float(), p=2, dim=-1)
        sim = (xn[:-1] * xn[1:]).sum(dim=-1)  # [N-1, L] consecutive-frame cosines
        xr = xn
        if self.use_st_rope:
            sections = check_sections(self.strope_sections, d) if self.strope_sections else strope_sections(d)
            # In place: xn is not needed after the cosines above (saves full-size temporaries).
            xr = st_rope(xn, timestamps, grid, sections, self.base_time, self.base_space, inplace=True)

        sizes = self._segment_sizes(x, sim, budget, metric)
        gen = torch.Generator().manual_seed(int(self.seed))
        kw = dict(k_neighbors=self.num_neighbors, generator=gen, noise=self.dpc_noise)
        ckw = dict(
            context_ratio=self.context_ratio,
            alpha=self.alpha,
            beta=self.beta,
            diverse=self.salient_mode == "diverse",
            merge=self.merge_context,
            fix_order=self.fix_merge_order,
            **kw,
        )
        out_idx, out_feat = [], []
        counts = dict(static_positions=0, static_kept=0, salient_kept=0, context_kept=0)

        starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
        single = starts[torch.tensor(sizes) == 1].to(x.device)
        if single.numel():
            # Every single-frame segment has L tokens: one batched compression for all of them.
            every = single.numel() == n  # all frames single: no copies of the video
            idx, feat, n_sal, n_ctx = compress(*((x, xr, score) if every else (x[single], xr[single], score[single])),
                                               ratio, **ckw)
            out_idx.append((single[:, None] * l + idx).flatten())
            out_feat.append(feat.reshape(-1, d))
            counts["salient_kept"] += n_sal * single.numel()
            counts["context_kept"] += n_ctx * single.numel()

        for n0, size in zip(starts.tolist(), sizes):
            if size == 1:
                continue
            xs, xrs, ss = x[n0 : n0 + size], xr[n0 : n0 + size], score[n0 : n0 + size]
            static = (sim[n0 : n0 + size - 1] > self.static_threshold).all(dim=0)  # [L]
            n_static = int(static.sum())
            seg_ratio = rescaled_ratio(ratio, size, l, n_static)
            counts["static_positions"] += n_static
            if n_static:
                pos = static.nonzero().flatten()
                idx, feat, _, _ = compress(
                    xs[:, pos].mean(0)[None], xrs[0, pos][None], ss[:, pos].mean(0)[None], seg_ratio, **ckw
                )
                out_idx.append(n0 * l + pos[idx[0]])
                out_feat.append(feat[0])
                counts["static_kept"] += idx.shape[1]
            if n_static == l:
                continue
            dyn = (~static).nonzero().flatten()
            l_dyn = dyn.numel()
            xrd, sd = xrs[:, dyn], ss[:, dyn]
            frame_base = (n0 + torch.arange(size, device=x.device))[:, None] * l  # [size, 1]
            n_sal, n_ctx = budget_split(l_dyn, seg_ratio, self.context_ratio, at_least_one=False)
            sal = x.new_zeros(size, 0, dtype=torch.long)
            if n_sal > 0:
                sal = select_salient(xrd, sd, n_sal, alpha=self.alpha, diverse=self.salient_mode == "diverse", **kw)
                sal_global = (frame_base + dyn[sal]).flatten()
                out_idx.append(sal_global)
                out_feat.append(x.reshape(n * l, d)[sal_global])
                counts["salient_kept"] += sal.numel()
            if n_ctx > 0:
                # The context pool spans all frames of the segment, frame-major.
                rest = unselected(l_dyn, sal)  # [size, P_f]
                pool_global = (frame_base + dyn[rest]).flatten()
                n_anchor = n_ctx * size
                if pool_global.numel() <= n_anchor:
                    out_idx.append(pool_global)
                    out_feat.append(x.reshape(n * l, d)[pool_global])
                    counts["context_kept"] += pool_global.numel()
                else:
                    # The pool read in place from this segment's frames (rows local to the segment).
                    anchors, merged = tango_ops.merge_context(
                        xs.reshape(1, size * l, d),
                        xrs.reshape(1, size * l, -1),
                        n_anchor,
                        rows=(pool_global - n0 * l)[None],
                        beta=self.beta,
                        merge=self.merge_context,
                        fix_order=self.fix_merge_order,
                        **kw,
                    )
                    out_idx.append(pool_global[anchors[0]])
                    out_feat.append(merged[0])
                    counts["context_kept"] += n_anchor

        indices = torch.cat(out_idx)
        order = indices.argsort()
        indices = indices[order]
        tokens = torch.cat(out_feat).to(x.dtype)[order]
        stats = dict(
            tokens_in=n * l,
            tokens_out=int(indices.numel()),
            budget_pre_llm=ratio,
            budget_rule="ceil(L*r') per frame (pre-LLM ratio r, rescaled to r' for static positions)",
            # the segmentation threshold used: segment_threshold, or the run scripts' rule on the requested budget
            segment_tau=self.segment_tau(budget),
            num_segments=len(sizes),
            single_frame_segments=int(single.numel()),
            **counts,
        )
        sel = Selection(tokens=tokens, indices=indices, stats=stats)
        return self.exact_sorted(sel, x, score, budget) if self.count_rule == "exact" else sel

    def segments(self, x: Tensor, budget: float, metric: Tensor | None = None) -> list[int]:
        """Segment sizes (frames) of the video ``x [N, L, D]`` for the requested ``budget``."""
        return self._segment_sizes(x, consecutive_cosine(x) if self.segment_type == "holitom" else None, budget, metric)

    def _segment_sizes(self, x: Tensor, sim: Tensor | None, budget: float, metric: Tensor | None) -> list[int]:
        tau = self.segment_tau(budget)
        if self.segment_type == "holitom":
            return holitom_segments(sim, tau, self.max_window)
        if metric is None:
            raise ValueError("segment_type='fastvid' needs metric, the per-frame global feature [N, Dg] (LLaVA: "
                             "SigLIP's MAP-head output; the Qwen2.5-VL reference: the per-frame mean of x)")
        glob = metric.mean(dim=1) if metric.dim() == 3 else metric
        return fastvid_segments(consecutive_cosine(glob), self.fastvid_c - 1, tau)
