"""DPC-KNN (density-peaks clustering with a k-nearest-neighbour density), batched; shared by token-merging methods.

Follows ``tango/utils.py::dpc_knn`` of github.com/xjtupanda/Tango@cc815b6 (Euclidean distances, no ``/sqrt(D)``
scaling, density ``exp(-mean squared kNN distance)``, tie-breaking noise ``U(0, noise)``), with the noise drawn from
an explicit ``torch.Generator`` so that results are reproducible. HoliTom / FastVID variants (distances ``/ sqrt(D)``,
the point itself among its k nearest) are this function with ``k - 1`` neighbours on distances scaled by
``sqrt((k - 1) / k) / sqrt(D)`` (pass them as ``dist``): same density ranking (``tango/methods/holitom.py``).

Memory: a segment-wide pool can hold the whole video (M = frames x tokens per frame, 50k at 256 frames), whose
``[M, M]`` distance matrix alone would be 10 GB. When ``B*M*M`` exceeds ``max_block`` elements the distances are
computed in row blocks of at most ``max_block`` elements, twice (pass 1: kNN density and the global maximum; pass 2:
distance to the nearest denser point), so peak memory grows as ``M * block`` instead of ``M**2``, for twice the
distance FLOPs. Below the threshold (every parity fixture) the single-matrix path of the reference is used.
Deviation: in the blocked path a distance computed by a row-block ``cdist`` may differ from the full-matrix one in
the last bit, so an exact near-tie (below fp32 resolution) can resolve differently than in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest distance block materialised at once (elements; 2**26 fp32 = 256 MiB). The reference's single [M, M]
# matrix is used while B*M*M stays below it: up to ~8k tokens, i.e. a whole 32-frame LLaVA-OV video.
MAX_BLOCK = 2**26
# Rows of the masked distance copy made at once in the nearest-denser-point step (elements; 16 MiB fp32).
DELTA_BLOCK = 2**22


def _row_blocks(b: int, m: int, cols: int, max_block: int) -> range:
    """Start rows of blocks of ``rows`` such that ``b * rows * cols <= max_block`` (at least one row)."""
    return range(0, m, max(1, max_block // max(b * cols, 1)))


def pairwise_dist(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Euclidean distances ``[B, M, P]`` between ``x [B, M, D]`` and ``y [B, P, D]`` (``y = x`` if None), in float32.

    Uses ``torch.cdist`` (matrix-multiplication path for more than 25 points), the same kernel as upstream, so that
    near-ties resolve identically.
    """
    x = x.float()
    return torch.cdist(x, x if y is None else y.float())


def gathered_cdist(x: Tensor, rows: Tensor) -> Tensor:
    """``torch.cdist(g, g)`` for ``g = x.gather(1, rows)`` (``x [B, M, D]``, ``rows [B, P]``), bit for bit, without the
    gathered copy and the two concatenated copies ``torch.cdist`` makes.

    For more than 25 points ``torch.cdist`` computes ``[-2g, |g|^2, 1] @ [g, 1, |g|^2]^T`` (clamped at 0, square
    root); this builds those two operands in place, with one norm computation for both. At most 25 points it uses
    another kernel, so that case calls ``torch.cdist``. ``tests/methods/test_tango.py`` checks the equality.

    Returns:
        ``[B, P, P]`` float32 distances.
    """
    b, p = rows.shape
    d = x.shape[-1]
    idx = rows[..., None].expand(b, p, d)
    if p <= 25:
        g = x.float().gather(1, idx)
        return torch.cdist(g, g)
    right = torch.empty(b, p, d + 2, dtype=torch.float32, device=x.device)  # [g, 1, |g|^2]
    torch.gather(x.float(), 1, idx, out=right[..., :d])
    norm = right[..., :d].pow(2).sum(dim=-1)
    left = torch.empty_like(right)  # [-2g, |g|^2, 1]
    torch.mul(right[..., :d], -2, out=left[..., :d])
    left[..., d], left[..., d + 1] = norm, 1.0
    right[..., d], right[..., d + 1] = 1.0, norm
    return left.matmul(right.mT).clamp_min_(0).sqrt_()


def columns_argmin(dist: Tensor, cols: Tensor) -> Tensor:
    """Index ``[B, M]`` into ``cols [B, C]`` of the nearest column for each row of ``dist [B, M, M]`` (first on ties):
    the nearest-centre assignment read from a distance matrix that already holds the centres' distances."""
    return dist.gather(2, cols[:, None, :].expand(-1, dist.shape[1], -1)).argmin(dim=-1)


def dpc_knn(
    x: Tensor | None,
    n_clusters: int,
    k: int = 7,
    *,
    generator: torch.Generator | None = None,
    noise: float = 1e-6,
    dist: Tensor | None = None,
    max_block: int | None = None,
    include_self: bool = False,
) -> Tensor:
    """Pick ``n_clusters`` density-peak centres in each of B point sets.

    Args:
        x: ``[B, M, D]`` points (Tango: ST-RoPE'd unit-norm features); may be None when ``dist`` is given.
        n_clusters: C, number of centres per set, ``1 <= C <= M``.
        k: neighbours in the density estimate (the point itself excluded); 0 = constant density.
        include_self: the k nearest include the point itself at distance 0 (FlashVID's variant: ``k = 1`` gives a
            constant density); not with the blocked path.
        generator: source of the tie-breaking noise (CPU generator; None uses the global RNG).
        noise: amplitude of the uniform noise added to the density.
        dist: optional precomputed ``[B, M, M]`` distance matrix of ``x``; read, never written.
        max_block: largest distance block (elements) computed at once (None: ``MAX_BLOCK``); above it, two
            blocked passes.

    Returns:
        ``[B, C]`` long indices into M, in decreasing order of the score ``rho * delta`` (upstream's order).
    """
    b, m = (x if dist is None else dist).shape[:2]
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {m}] (number of points)")
    max_block = MAX_BLOCK if max_block is None else max_block
    if dist is None and b * m * m > max_block:
        if include_self:
            raise ValueError(f"dpc_knn(include_self=True) has no blocked path: pass dist or keep B*M*M <= {max_block}")
        return _dpc_knn_blocked(x, n_clusters, k, generator, noise, max_block)
    d = pairwise_dist(x) if dist is None else dist
    if k == 0:  # no neighbours: a constant density, the centres decided by delta and the noise (HoliTom's c = 1)
        rho = torch.ones(b, m, dtype=d.dtype, device=d.device)
    elif include_self:  # the k smallest, the point itself (distance 0) among them
        rho = (-(d.topk(min(k, m), dim=-1, largest=False).values ** 2).mean(dim=-1)).exp()
    else:
        # k+1 smallest includes the point itself at distance 0.
        knn = d.topk(min(k + 1, m), dim=-1, largest=False).values[..., 1:]
        rho = (-(knn**2).mean(dim=-1)).exp()
    rho = rho + torch.rand(rho.shape, generator=generator, dtype=rho.dtype).to(rho.device) * noise
    # delta_i = distance to the nearest denser point; the densest point gets the largest distance of its set.
    # Row blocks of at most DELTA_BLOCK elements: the masked copy never holds the whole [M, M] matrix, and ``d``
    # stays intact for the caller (cluster assignment reads its columns).
    d_max = d.amax(dim=(1, 2), keepdim=True)
    delta = torch.empty_like(rho)
    step = max(1, DELTA_BLOCK // (b * m))
    for s in range(0, m, step):
        not_denser = rho[:, None, :] <= rho[:, s : s + step, None]
        delta[:, s : s + step] = torch.where(not_denser, d_max, d[:, s : s + step]).amin(dim=-1)
    return (rho * delta).topk(n_clusters, dim=-1).indices


def _dpc_knn_blocked(x: Tensor, n_clusters: int, k: int, generator, noise: float, max_block: int) -> Tensor:
    """``dpc_knn`` with the distances recomputed in row blocks (see the module docstring); same outputs."""
    b, m, _ = x.shape
    x = x.float()
    starts = _row_blocks(b, m, m, max_block)
    step = starts.step
    knn, d_max = [], None
    for s in starts:
        d = torch.cdist(x[:, s:s + step], x)  # [B, rows, M]
        knn.append(d.topk(min(k + 1, m), dim=-1, largest=False).values[..., 1:])
        blk_max = d.amax(dim=(1, 2))
        d_max = blk_max if d_max is None else torch.maximum(d_max, blk_max)
    rho = (-(torch.cat(knn, dim=1) ** 2).mean(dim=-1)).exp()
    rho = rho + torch.rand(rho.shape, generator=generator, dtype=rho.dtype).to(rho.device) * noise
    delta = torch.empty_like(rho)
    for s in starts:
        d = torch.cdist(x[:, s:s + step], x)
        not_denser = rho[:, None, :] <= rho[:, s:s + step, None]
        delta[:, s:s + step] = torch.where(not_denser, d_max[:, None, None], d).amin(dim=-1)
    return (rho * delta).topk(n_clusters, dim=-1).indices


def assign_nearest(x: Tensor, centres: Tensor, max_block: int | None = None) -> Tensor:
    """Index ``[B, M]`` of the nearest of ``centres [B, C, D]`` for each point of ``x [B, M, D]`` (first on ties),
    in row blocks of at most ``max_block`` (None: ``MAX_BLOCK``) distances."""
    b, m, _ = x.shape
    starts = _row_blocks(b, m, centres.shape[1], MAX_BLOCK if max_block is None else max_block)
    if len(starts) == 1:
        return pairwise_dist(x, centres).argmin(dim=-1)
    return torch.cat([pairwise_dist(x[:, s:s + starts.step], centres).argmin(dim=-1) for s in starts], dim=1)
