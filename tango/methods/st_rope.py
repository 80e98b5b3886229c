"""Spatio-temporal rotary position embedding (ST-RoPE) of Tango, applied to unit-norm token features.

Reproduces ``llava/model/st_rope.py::SpatioTemporalRoPE`` of github.com/xjtupanda/Tango@cc815b6 as a pure function:
the feature channels are cut into three contiguous sections ``(d_t, d_h, d_w)``; inside section ``s`` channel ``m``
is rotated with channel ``m + d_s/2`` (GPT-NeoX "rotate_half" pairing) by angle ``p_s * base_s**(-2m/d_s)``, with
``p_t`` the frame time in seconds and ``(p_h, p_w)`` the row / column in the pooled grid. Rotations preserve the norm,
and dot products of rotated vectors depend only on the position offset, so clustering distances get a
spatio-temporal locality prior.
"""

from __future__ import annotations

import torch
from torch import Tensor


def strope_sections(dim: int) -> list[int]:
    """Default ``(d_t, d_h, d_w)`` for hidden size ``dim``.

    ``d_h = d_w = 2 * (dim // 6)`` (the largest even size not above ``dim / 3``) and ``d_t = dim - 2 * d_h``, which
    gives upstream's hard-coded ``[1196, 1194, 1194]`` for ``dim = 3584`` and ``[24, 20, 20]`` for ``dim = 64``. Time
    gets the remainder, so it never has fewer channels than a spatial axis.
    """
    if dim < 6 or dim % 2:
        raise ValueError(f"ST-RoPE needs an even hidden size >= 6 (three even sections), got dim={dim}")
    d_space = 2 * (dim // 6)
    return [dim - 2 * d_space, d_space, d_space]


def check_sections(sections: list[int], dim: int) -> list[int]:
    """Return ``sections`` as ints, or raise if they are not three positive even sizes summing to ``dim``."""
    sections = [int(s) for s in sections]
    if len(sections) != 3 or any(s <= 0 or s % 2 for s in sections) or sum(sections) != dim:
        raise ValueError(
            f"strope_sections={sections} must be three positive even sizes (t, h, w) summing to the hidden size {dim}"
        )
    return sections


def _inv_freq(base: float, size: int) -> Tensor:
    # Same float32 expression as upstream, so rotated features match it bit for bit.
    return 1.0 / (base ** (torch.arange(0, size, 2, dtype=torch.float) / size))


def st_rope(
    x: Tensor,
    timestamps: Tensor,
    grid: tuple[int, int],
    sections: list[int],
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    inplace: bool = False,
) -> Tensor:
    """Rotate ``x [N, L, D]`` (``L = H * W`` raster-ordered tokens of N frames) by their (t, h, w) positions.

    Args:
        x: ``[N, L, D]`` features, usually L2-normalised; computed in float32.
        timestamps: ``[N]`` frame times in seconds (the temporal position).
        grid: ``(H, W)`` of the pooled token grid, ``H * W == L``.
        sections: ``[d_t, d_h, d_w]`` channel sections, each even, summing to D.
        base_time: RoPE base of the time section (larger = slower decay with time offset).
        base_space: RoPE base of the two spatial sections.
        inplace: rotate a contiguous float32 ``x`` in its own storage (no full-size temporaries; the same values).

    Returns:
        ``[N, L, D]`` float32 rotated features (``x`` itself when ``inplace``).
    """
    n, l, d = x.shape
    h, w = int(grid[0]), int(grid[1])
    if h * w != l:
        raise ValueError(f"grid {(h, w)} does not match L={l} tokens per frame")
    sections = check_sections(sections, d)
    if inplace and (x.dtype != torch.float32 or not x.is_contiguous()):
        raise ValueError(f"st_rope(inplace=True) needs a contiguous float32 x, got {x.dtype}, "
                         f"contiguous={x.is_contiguous()}")
    dev = x.device
    out = x
    x = x.float().reshape(n, h, w, d)
    positions = (
        timestamps.to(device=dev, dtype=torch.float32)[:, None, None, None],  # [N, 1, 1, 1]
        torch.arange(h, device=dev, dtype=torch.float32)[None, :, None, None],  # [1, H, 1, 1]
        torch.arange(w, device=dev, dtype=torch.float32)[None, None, :, None],  # [1, 1, W, 1]
    )
    parts, start = [], 0
    for pos, base, size in zip(positions, (base_time, base_space, base_space), sections):
        # cos/sin on the small per-axis half table, broadcast over the other axes. Written per half instead of
        # upstream's x * cos + rotate_half(x) * sin: the same float operations on every element (a + (-b) == a - b),
        # without the full-size rotated copy and angle tensors.
        angle = pos * _inv_freq(base, size).to(dev)
        cos, sin = angle.cos(), angle.sin()
        half = size // 2
        x1, x2 = x[..., start : start + half], x[..., start + half : start + size]
        if inplace:  # half-section temporaries only; each element still gets fl(fl(a * c) -/+ fl(b * s))
            x2_sin, x1_sin = x2 * sin, x1 * sin
            x1.mul_(cos).sub_(x2_sin)
            x2.mul_(cos).add_(x1_sin)
        else:
            parts += [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
        start += size
    return out if inplace else torch.cat(parts, dim=-1).reshape(n, l, d)
