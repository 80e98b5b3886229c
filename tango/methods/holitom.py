"""HoliTom: holistic token merging for video LLMs (NeurIPS'25): the pre-LLM ("outer") stage and the inner-LLM merge.

Reproduced: ``cokeshao/HoliTom@e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0``, ``holitom/llava_arch.py``:
``LlavaMetaForCausalLM_holitom.prepare_inputs_labels_for_multimodal`` (the driver) with ``select_static_windows``,
``get_static_dynamic_features``, ``holitom``, ``merge_tokens_by_attention_density``, ``merge_tokens_by_density``,
``merge_tokens_by_clustering`` and ``cluster_dpc_knn``. Parity is tested against those functions, called unmodified on
seeded inputs (``tests/fixtures/holitom/``: exact kept indices, features to rtol 1e-5). Spec:
``/work/shared/docs/methods-holitom-fastvid.md`` §1.

On ``x [N, L, D]`` (projected, pooled tokens) with ``attn [N, L]`` = attention **received** in the last layer of the
vision tower, pooled like the features (the harness's ``last_layer`` source, VisionZip's; its metric is unused):

1. ``sim = cosine(normalize(x)[:-1], normalize(x)[1:])`` ``[N-1, L]``, only ever compared with ``tau``
   (:func:`threshold_cosine`: fast, with upstream's exact call near ``tau``, so every decision is upstream's);
2. windows from HoliTom's dynamic program over static-token gains (:func:`tango_ops.holitom_segments`, the DP Tango
   uses), ``total_reduced = sum over windows of (W-1) * #static positions``;
3. one global ratio ``r' = min(budget / ((N L - total_reduced) / (N L)), 1)``;
4. per window: a single frame keeps its top ``ceil(L r')`` tokens by ``attn``; a window of W > 1 frames splits its
   positions into static (``sim > tau`` across the whole window) and dynamic; each frame keeps its top
   ``ceil(L_dyn r')`` dynamic tokens, and the time-averaged static positions become ``round(L_s r')`` DPC-KNN centres
   (``k = min(K, c)``, HoliTom's variant: distances ``/ sqrt(D)``, the point itself among its k nearest), every other
   static position merged into its nearest centre as ``beta * centre + (1 - beta) * mean(members)``;
5. LLM order (LLaVA-OV ``one_token``): windows in time order; inside a window its static tokens first (ascending
   position), then frame by frame its dynamic tokens (ascending position). ``indices`` give each token's
   representative (``frame * L + l``; a static token: the window's first frame). LLaVA-Video's ``grid`` layout is
   this order sorted by index with a newline after each row that keeps a token, which is what the LLaVA-Video
   adapter does with any selection.

Kept count: ``sum ceil(L_dyn r')`` over frames + ``sum round(L_s r')`` over windows: slightly above ``budget * N L``
(per-frame ceil), below it when ``r'`` is capped at 1. ``stats`` records the windows, ``r'``, ``tau`` and the count.

Hyperparameters follow the authors' run scripts (``scripts/eval_ov-7b_holitom.sh``): ``tau`` 0.65 at budget 0.10 and
0.80 otherwise on LLaVA-OV-7B (``tau=None`` applies that rule and records the value; set a number to override),
``beta`` 0.6, ``k`` 7, ``max_window`` 1024, dynamic-merge share ``D = 0`` (any ``D > 0`` crashes upstream, so it is
not offered).

Intentional deviations:

- Inner-LLM merge (``inner_llm=True``; the authors' scripts set ``HOLITOM_k=18 HOLITOM_r=0.5`` on LLaVA-OV-7B and
  LLaVA-Video-7B, ``configs/model_method/{llava_ov,llava_video}_holitom.yaml``; off = HoliTom "w/o M", which
  HoliTom's own table also reports): at the prefill of decoder layer ``inner_layer``, the visual span is ranked by
  layer ``inner_layer - 1``'s head-mean attention of the last prompt token, the top ``round(n (1 - inner_prune))``
  are kept, and each dropped token is folded into its most cosine-similar kept token in ascending position order,
  ``h = (h + m) / 2`` (:func:`holitom_inner_merge`, closed form ``h / 2^n + sum_j m_j / 2^(n-j+1)``); kept tokens
  keep their original positions (:func:`tango.hooks.drop_tokens_after`). ``budget`` then follows the scripts: it is
  the outer ratio, and the realised layer average is lower (visible as ``budget_gap``). Differences: the attention
  row is the last token's causal row recomputed with SDPA kept (upstream runs layer K-1 eager without a mask at
  prefill, which leaves that row unchanged); LLaVA-OV's trailing newline is not in the prunable span (upstream
  counts it in ``image_tokens``: ``round`` may differ by one token); the fold is the closed form in float32
  (upstream: sequential in the model dtype).
- Qwen2.5-VL and Qwen3-VL: upstream has LLaVA-NeXT code only (spec §1.8), so on the Qwen families HoliTom is the
  harness's port, not parity-tested there: the outer stage is model-agnostic on ``x [N, L, D]`` (temporal patches
  as frames; its grid is never used, so non-square Qwen grids are fine) with the adapter's ``last_layer`` source
  (the last full-attention ViT block), kept tokens keep their original M-RoPE positions, and the optional inner
  merge runs on the Qwen decoders through the same hooks. No script sets ``tau`` for Qwen: the LLaVA-OV rule applies.
- ``count_rule="exact"`` (a variant, recorded as regime ``exact_count``; the default ``"authors"`` is the reference):
  the output is reconciled to ``round(budget N L)`` tokens by ``attn``: the outputs whose representative has the
  lowest attention are dropped, or the tokens of highest attention no output represents are added with their own
  features as dynamic tokens of their frame (:func:`~tango.methods.base.reconcile`), so the method is servable.
- Similarities, distances and merges are computed in float32 (upstream: the model dtype, fp16 in its scripts).
- Tie-breaking noise ``U(0, dpc_noise)`` comes from a ``torch.Generator`` seeded with ``seed`` (upstream: the global
  RNG, unseeded), drawn in upstream's order (one draw per window with static centres, in time order), so a run is
  deterministic. Windows with 1 or 2 static centres are decided by that noise (upstream behaviour, spec §1.4).
- The DPC-KNN is the shared :func:`tango.methods.dpc.dpc_knn` on HoliTom's distances rescaled by ``sqrt((k-1)/k)``
  (same density ranking; ``k = 1`` gives the constant density upstream's self-only neighbourhood gives). Dynamic
  tokens are chosen per frame by a stable descending sort over the dynamic positions (upstream: ``topk`` over the
  gathered dynamic tokens): equal for distinct attention values.
- ``budget == 1`` returns the input unchanged (upstream still averages static tokens at ratio 1).
- Member means are sums by ``index_add`` divided by counts (upstream: ``mean`` per cluster): last-bit differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tango.methods.base import ExactCount, PruningMethod, Selection, check_budget, identity_selection
from tango.methods.dpc import dpc_knn
from tango.methods.tango_ops import holitom_segments

#: the authors' LLaVA-OV-7B scripts: T = 0.65 at RETAIN_RATIO 0.10, 0.80 at 0.15 / 0.20 / 0.25.
SCRIPT_TAU = {0.1: 0.65}
DEFAULT_TAU = 0.8


def threshold_cosine(x: Tensor, tau: float, margin: float = 1e-4) -> Tensor:
    """HoliTom's ``cosine(normalize(x)[:-1], normalize(x)[1:])`` ``[N-1, L]`` for comparisons with ``tau``.

    Computed as ``dot / (|a| |b|)`` with one batched matmul (8x faster than upstream's normalise-then-cosine on 32 x
    196 x 3584), then recomputed with upstream's exact call wherever it lies within ``margin`` of ``tau`` (the two
    differ by ~1e-8 in float32), so every ``> tau`` decision is upstream's. Values away from ``tau`` may differ in
    the last bits; nothing else reads them."""
    n, l, d = x.shape
    xf = x.float()
    norm = torch.linalg.vector_norm(xf, dim=-1)
    dot = torch.bmm(xf[:-1].reshape(-1, 1, d), xf[1:].reshape(-1, d, 1)).view(n - 1, l)
    sim = dot / (norm[:-1] * norm[1:]).clamp_min(1e-12)
    near = ((sim - tau).abs() < margin).nonzero()
    if near.numel():
        f, p = near[:, 0], near[:, 1]
        a, b = F.normalize(xf[f, p], p=2, dim=-1), F.normalize(xf[f + 1, p], p=2, dim=-1)
        sim[f, p] = F.cosine_similarity(a, b, dim=-1)
    return sim


def holitom_dpc_centres(x: Tensor, n_centres: int, k: int, generator: torch.Generator, noise: float
                        ) -> tuple[Tensor, Tensor]:
    """HoliTom's ``cluster_dpc_knn`` on one point set.

    Args:
        x: ``[M, D]`` points.
        n_centres: c, ``1 <= c <= M``.
        k: HoliTom's K before capping; the neighbourhood is ``min(k, c)`` points including the point itself.

    Returns:
        ``centres [c]`` long, ascending, and HoliTom's distance matrix ``[M, M]`` (``cdist / sqrt(D)``, float32).
    """
    m, d = x.shape
    dist = torch.cdist(x[None].float(), x[None].float()) / (d**0.5)  # [1, M, M]
    kk = min(k, n_centres)
    # The shared DPC excludes the point itself and averages k-1 neighbours; HoliTom's mean over k points includes a
    # zero: the same density after scaling distances by sqrt((k-1)/k) (a constant factor on delta keeps the ranking).
    scaled = dist * math.sqrt((kk - 1) / kk) if kk > 1 else dist  # k = 1: constant density, delta unscaled
    centres = dpc_knn(x[None], n_centres, kk - 1, generator=generator, noise=noise, dist=scaled)[0]
    return centres.sort().values, dist[0]


def merge_static(static: Tensor, n_centres: int, k: int, beta: float, generator: torch.Generator, noise: float
                 ) -> tuple[Tensor, Tensor]:
    """HoliTom's static merge: ``static [L_s, D]`` (time means) -> ``(tokens [c, D], positions [c])`` into ``static``.

    Each non-centre joins the centre at the smallest HoliTom distance (first on ties); a centre with members becomes
    ``beta * centre + (1 - beta) * mean(members)``, one without stays itself."""
    centres, dist = holitom_dpc_centres(static, n_centres, k, generator, noise)
    m = static.shape[0]
    is_centre = torch.zeros(m, dtype=torch.bool, device=static.device)
    is_centre[centres] = True
    others = (~is_centre).nonzero().flatten()
    owner = dist[others][:, centres].argmin(dim=-1)  # [M - c] index into centres
    sums = torch.zeros(n_centres, static.shape[1], dtype=torch.float32, device=static.device)
    sums.index_add_(0, owner, static[others].float())
    counts = torch.bincount(owner, minlength=n_centres)
    base = static[centres].float()
    mean = sums / counts.clamp(min=1)[:, None]
    merged = torch.where(counts[:, None] > 0, beta * base + (1 - beta) * mean, base)
    return merged.to(static.dtype), centres


def holitom_inner_merge(hidden: Tensor, attn: Tensor, prune: float) -> tuple[Tensor, Tensor]:
    """HoliTom's inner-LLM prune + merge over the visual span at the prefill of layer K.

    Args:
        hidden: ``[B, Lv, D]`` hidden states of the visual span entering layer K.
        attn: ``[Lv]`` head-mean attention of the last prompt token at layer K-1, sliced to the span.
        prune: fraction pruned; ``round(Lv (1 - prune))`` (Python rounding) are kept, the top by ``attn``.

    Returns:
        ``(keep [K] ascending local indices, merged [B, K, D] in that order)``: every dropped token joins the kept
        token of highest cosine (``torch.max``, similarities computed once before any update) and the members fold
        in ascending position order, ``h = (h + m) / 2``, i.e. ``h / 2^n + sum_j m_j / 2^(n - j + 1)``."""
    b, lv, d = hidden.shape
    top = attn.topk(round(lv * (1 - prune))).indices  # top-k order, as upstream
    dropped = torch.ones(lv, dtype=torch.bool, device=hidden.device)
    dropped[top] = False
    kept_h, drop_h = hidden[:, top].float(), hidden[:, dropped].float()  # dropped: ascending positions
    dot = torch.bmm(drop_h, kept_h.transpose(1, 2))
    sim = dot / (drop_h.norm(dim=-1, keepdim=True) * kept_h.norm(dim=-1, keepdim=True).transpose(1, 2))
    target = sim.max(dim=-1).indices  # [B, n_dropped] into top-k order
    onehot = F.one_hot(target, top.numel())  # [B, n_dropped, K]
    n = onehot.sum(dim=1)  # [B, K] members per kept token
    rank = onehot.cumsum(dim=1).gather(2, target[..., None])[..., 0]  # j: 1-based rank of each member in its group
    w = torch.pow(2.0, -(n.gather(1, target) - rank + 1).float())  # member j of n: 2^-(n - j + 1)
    merged = kept_h * torch.pow(2.0, -n.float())[..., None]
    merged = merged.scatter_add(1, target[..., None].expand(-1, -1, d), drop_h * w[..., None])
    order = top.argsort()
    return top[order], merged[:, order].to(hidden.dtype)


@dataclass
class HoliTom(ExactCount, PruningMethod):
    """HoliTom: global temporal windows, static merging, per-frame dynamic top-k before the LLM, and optionally the
    inner-LLM merge at ``inner_layer`` (see module doc)."""

    name: str = "holitom"
    #: static threshold T (segmentation and static mask); None = the authors' script rule (0.65 at budget 0.10,
    #: 0.80 otherwise), recorded in ``stats['tau']``.
    tau: Optional[float] = None
    #: weight of the centre in a merged static token (``BETA``).
    beta: float = 0.6
    #: DPC-KNN neighbourhood K, capped by the number of centres (``K``).
    k: int = 7
    #: longest window in frames (``MAX_WINDOW_SIZE``).
    max_window: int = 1024
    #: seed of the DPC-KNN tie-breaking noise.
    seed: int = 0
    dpc_noise: float = 1e-6
    #: the inner-LLM merge (HOLITOM_k / HOLITOM_r); off = HoliTom "w/o M".
    inner_llm: bool = False
    #: decoder layer K of the inner merge (``HOLITOM_k``; scripts: 18 of 28).
    inner_layer: int = 18
    #: fraction of the visual span pruned at layer K (``HOLITOM_r``; scripts: 0.5).
    inner_prune: float = 0.5
    #: "authors" (per-frame ceil, rescaled for static windows) or "exact" (reconciled to round(budget N L): servable).
    count_rule: str = "authors"

    needs_attention = True
    attention_source = "last_layer"  # attention received in the tower's last layer (VisionZip's source)
    display_name = "HoliTom"
    color = "#CC79A7"  # Okabe-Ito reddish purple

    def __post_init__(self) -> None:
        if self.tau is not None and not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau={self.tau!r} must be a cosine threshold in [-1, 1] (or null: the script rule)")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta!r} must be in [0, 1]")
        if self.k < 1:
            raise ValueError(f"k={self.k!r} must be >= 1")
        if self.max_window < 1:
            raise ValueError(f"max_window={self.max_window!r} must be >= 1")
        if self.inner_layer < 1:
            raise ValueError(f"inner_layer={self.inner_layer!r} must be >= 1")
        if not 0.0 <= self.inner_prune < 1.0:
            raise ValueError(f"inner_prune={self.inner_prune!r} must be in [0, 1)")
        self.check_count_rule()
        self.stage = "both" if self.inner_llm else "pre_llm"

    def decoder_hooks(self, decoder, budget: float):
        """``inner_llm``: at layer ``inner_layer``, keep the top of the visual span by layer K-1's last-token
        attention and fold the dropped tokens into the kept ones (:func:`holitom_inner_merge`)."""
        from contextlib import nullcontext

        from tango.hooks import drop_tokens_after, keep_positions

        if not self.inner_llm or check_budget(budget) == 1.0:
            return nullcontext({})
        if self.inner_layer >= decoder.num_layers:
            raise ValueError(f"inner_layer={self.inner_layer} but this decoder has {decoder.num_layers} layers; set "
                             f"it in configs/model_method/<model>_holitom.yaml")

        def transform(h, row):
            visual = decoder.visual_positions.to(h.device)
            local, merged = holitom_inner_merge(h[:, visual], row.mean(0)[visual], self.inner_prune)
            keep = keep_positions(h.shape[1], visual, visual[local])
            h = h.clone()
            h[:, visual[local]] = merged.to(h.dtype)
            return keep, h[:, keep]
        return drop_tokens_after(decoder.layers, self.inner_layer, transform=transform,
                                 attention_row=decoder.attention_row)

    def pre_llm_fraction(self, budget: float) -> float:
        """The outer ratio is the budget (the inner merge, when on, lowers the layer average)."""
        return budget

    def threshold(self, budget: float) -> float:
        """``tau``, or the authors' script value at ``budget``."""
        return self.tau if self.tau is not None else SCRIPT_TAU.get(round(budget, 6), DEFAULT_TAU)

    def prune(self, x: Tensor, *, budget: float, attn: Tensor | None = None, timestamps=None, grid=None,
              metric=None) -> Selection:
        budget = check_budget(budget)
        if budget == 1.0:
            return identity_selection(x)
        if attn is None:
            raise ValueError("holitom needs attn [N, L]: the attention received in the vision tower's last layer "
                             "(attention_source='last_layer')")
        n, l, d = x.shape
        if attn.shape != (n, l):
            raise ValueError(f"attn has shape {tuple(attn.shape)}; expected [N, L] = {[n, l]}")
        tau = self.threshold(budget)
        sim = threshold_cosine(x, tau) if n > 1 else x.new_zeros(0, l)  # [N-1, L], upstream's decisions at tau
        sizes = holitom_segments(sim, tau, self.max_window) if n > 1 else [1]
        starts = [0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()]

        # Static positions of each window, and the removable count of the DP (its optimum).
        static = torch.zeros(n, l, dtype=torch.bool, device=x.device)  # [frame, l]: static in the frame's window
        for s, w in zip(starts, sizes):
            if w > 1:
                static[s:s + w] = (sim[s:s + w - 1] > tau).all(dim=0)
        n_static = static.sum(dim=1)  # per frame; equal within a window
        total_reduced = sum((w - 1) * int(n_static[s]) for s, w in zip(starts, sizes))
        total = n * l
        ratio = min(budget / ((total - total_reduced) / total), 1.0)

        # Dynamic tokens, every frame at once: the top ceil(L_dyn * r') of each frame's dynamic positions.
        n_dyn = (l - n_static).tolist()
        k_dyn = torch.tensor([math.ceil(c * ratio) for c in n_dyn], device=x.device)
        score = attn.float().masked_fill(static, float("-inf"))
        order = score.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(l, device=x.device).expand(n, l))
        keep_dyn = rank < k_dyn[:, None]  # [N, L], never a static position (k_dyn <= L_dyn)

        # LLM order by one sort key: window, then its static tokens (centre order), then its dynamic tokens by flat
        # index (frame-major, ascending position).
        window = torch.repeat_interleave(torch.arange(len(sizes), device=x.device),
                                         torch.tensor(sizes, device=x.device))
        dyn_idx = keep_dyn.flatten().nonzero().flatten()
        parts_tok, parts_idx = [x.reshape(n * l, d)[dyn_idx]], [dyn_idx]
        parts_key = [window[dyn_idx // l] * 2 * total + total + dyn_idx]
        gen = torch.Generator().manual_seed(self.seed)
        kept_static = 0
        for wi, (s, w) in enumerate(zip(starts, sizes)):  # windows with static positions only; noise in time order
            if w == 1 or int(n_static[s]) == 0:
                continue
            pos = static[s].nonzero().flatten()
            c = round(len(pos) * ratio)
            if c == 0:
                continue
            means = x[s:s + w, pos].float().mean(dim=0)  # [L_s, D] time average of each static position
            tok, centres = merge_static(means.to(x.dtype), c, self.k, self.beta, gen, self.dpc_noise)
            parts_tok.append(tok)
            parts_idx.append(s * l + pos[centres])
            parts_key.append(wi * 2 * total + torch.arange(c, device=x.device))
            kept_static += c
        stats = {}
        if self.count_rule == "exact":  # added tokens enter as dynamic tokens of their frame
            keep, added = self.exact_plan(torch.cat(parts_idx), attn, budget, stats)
            parts_tok = [torch.cat(parts_tok)[keep], x.reshape(n * l, d)[added]]
            parts_key = [torch.cat(parts_key)[keep], window[added // l] * 2 * total + total + added]
            parts_idx = [torch.cat(parts_idx)[keep], added]
        order = torch.cat(parts_key).argsort()
        tokens, indices = torch.cat(parts_tok)[order], torch.cat(parts_idx)[order]
        stats |= {"tokens_in": total, "tokens_out": int(indices.numel()), "windows": len(sizes),
                 "multi_frame_windows": sum(w > 1 for w in sizes), "static_tokens": kept_static,
                 "total_reduced": total_reduced, "ratio_rescaled": ratio, "tau": tau, "inner_llm": self.inner_llm,
                 "budget_rule": stats.get("budget_rule",
                                          "ceil(L*r') per frame (RETAIN_RATIO r, rescaled to r' for static windows)")}
        return Selection(tokens=tokens.to(x.dtype), indices=indices, stats=stats)
