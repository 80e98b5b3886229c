"""DPC-KNN (density-peaks clustering with a k-nearest-neighbour density), batched; shared by token-merging methods.

Follows ``tango/utils.py::dpc_knn`` of github.com/xjtupanda/Tango@cc815b6 (Euclidean distances, no ``/sqrt(D)``
scaling, density ``exp(-mean squared kNN distance)``, tie-breaking noise ``U(0, noise)``), with the noise drawn from
an explicit ``torch.Generator`` so that results are reproducible. HoliTom / FastVID variants divide the distances by
``sqrt(D)`` first: pass ``x / D**0.25`` to get that.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_dist(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Euclidean distances ``[B, M, P]`` between ``x [B, M, D]`` and ``y [B, P, D]`` (``y = x`` if None), in float32.

    Uses ``torch.cdist`` (matrix-multiplication path for more than 25 points), the same kernel as upstream, so that
    near-ties resolve identically.
    """
    x = x.float()
    return torch.cdist(x, x if y is None else y.float())


def dpc_knn(
    x: Tensor,
    n_clusters: int,
    k: int = 7,
    *,
    generator: torch.Generator | None = None,
    noise: float = 1e-6,
    dist: Tensor | None = None,
) -> Tensor:
    """Pick ``n_clusters`` density-peak centres in each of B point sets.

    Args:
        x: ``[B, M, D]`` points (Tango: ST-RoPE'd unit-norm features).
        n_clusters: C, number of centres per set, ``1 <= C <= M``.
        k: neighbours in the density estimate (the point itself excluded).
        generator: source of the tie-breaking noise (CPU generator; None uses the global RNG).
        noise: amplitude of the uniform noise added to the density.
        dist: optional precomputed ``[B, M, M]`` distance matrix of ``x``.

    Returns:
        ``[B, C]`` long indices into M, in decreasing order of the score ``rho * delta`` (upstream's order).
    """
    b, m, _ = x.shape
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {m}] (number of points)")
    d = pairwise_dist(x) if dist is None else dist
    # k+1 smallest includes the point itself at distance 0.
    knn = d.topk(min(k + 1, m), dim=-1, largest=False).values[..., 1:]
    rho = (-(knn**2).mean(dim=-1)).exp()
    rho = rho + torch.rand(rho.shape, generator=generator, dtype=rho.dtype).to(rho.device) * noise
    # delta_i = distance to the nearest denser point; the densest point gets the largest distance of its set.
    d_max = d.amax(dim=(1, 2), keepdim=True)
    not_denser = rho[:, None, :] <= rho[:, :, None]
    if b == 1 and dist is None:
        # The big case (one segment-wide pool, M up to N*L): fill our own matrix in place, saving one [M, M]
        # float buffer at the peak.
        delta = d.masked_fill_(not_denser, d_max.item()).amin(dim=-1)
    else:
        delta = torch.where(not_denser, d_max, d).amin(dim=-1)
    return (rho * delta).topk(n_clusters, dim=-1).indices


def assign_nearest(x: Tensor, centres: Tensor) -> Tensor:
    """Index ``[B, M]`` of the nearest of ``centres [B, C, D]`` for each point of ``x [B, M, D]`` (first on ties)."""
    return pairwise_dist(x, centres).argmin(dim=-1)
