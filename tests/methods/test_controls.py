"""The controls: seeded random dropping and uniform spatial pooling (counts, determinism, exact pooled values)."""

from __future__ import annotations

import pytest
import torch

from tango.methods.controls import RandomDrop, UniformPool, cell_centres, pooled_grid

pytestmark = pytest.mark.unit


def video(n=6, h=5, w=7, d=8, seed=0):
    return torch.randn(n, h * w, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["per_frame", "global"])
def test_random_counts_determinism_and_copies(mode):
    x = video()
    n, l, d = x.shape
    sel = RandomDrop(mode=mode).prune(x, budget=0.3)
    k = round(l * 0.3) if mode == "per_frame" else round(n * l * 0.3)
    assert sel.stats["tokens_out"] == (n * k if mode == "per_frame" else k)
    assert torch.equal(sel.indices, sel.indices.sort().values) and sel.indices.unique().numel() == sel.indices.numel()
    assert torch.equal(sel.tokens, x.reshape(-1, d)[sel.indices])
    if mode == "per_frame":
        assert torch.equal(torch.bincount(sel.indices // l, minlength=n), torch.full((n,), k))
    again = RandomDrop(mode=mode).prune(x, budget=0.3)
    other = RandomDrop(mode=mode, seed=1).prune(x, budget=0.3)
    assert torch.equal(again.indices, sel.indices) and not torch.equal(other.indices, sel.indices)
    assert torch.equal(RandomDrop(mode=mode).prune(x, budget=1.0).tokens, x.reshape(-1, d))
    assert RandomDrop(mode=mode).prune(x, budget=0.001).stats["tokens_out"] >= 1


def test_random_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=r"mode='frame'.*per_frame.*global"):
        RandomDrop(mode="frame")


@pytest.mark.parametrize("budget,expected", [(0.1, (4, 5)), (0.15, (5, 6)), (0.2, (6, 7)), (0.25, (7, 7)),
                                             (0.5, (10, 10)), (0.01, (1, 2))])
def test_pooled_grid_on_14x14(budget, expected):
    assert pooled_grid(14, 14, budget) == expected


def test_uniform_pool_averages_each_cell_and_takes_its_centre_position():
    x = video()
    n, l, d = x.shape
    h, w = 5, 7
    sel = UniformPool().prune(x, budget=0.3, grid=(h, w))
    ph, pw = pooled_grid(h, w, 0.3)
    assert sel.stats["tokens_out"] == n * ph * pw and sel.stats["pooled_grid"] == f"{ph}x{pw}"
    grid = x.reshape(n, h, w, d)
    out = sel.tokens.reshape(n, ph, pw, d)
    for i in range(ph):  # adaptive-pooling cell bounds, written out
        r0, r1 = (i * h) // ph, -(-((i + 1) * h) // ph)
        for j in range(pw):
            c0, c1 = (j * w) // pw, -(-((j + 1) * w) // pw)
            torch.testing.assert_close(out[:, i, j], grid[:, r0:r1, c0:c1].mean(dim=(1, 2)))
            centre = ((r0 + r1 - 1) // 2) * w + (c0 + c1 - 1) // 2
            assert sel.indices.reshape(n, ph, pw)[:, i, j].tolist() == [f * l + centre for f in range(n)]
    assert cell_centres(14, 5).tolist() == [1, 3, 6, 9, 12]


def test_uniform_pool_needs_a_grid_that_fits():
    x = video()
    with pytest.raises(ValueError, match="not a square grid"):
        UniformPool().prune(x, budget=0.3)
    with pytest.raises(ValueError, match=r"grid \(6, 6\) does not match L=35"):
        UniformPool().prune(x, budget=0.3, grid=(6, 6))
    assert torch.equal(UniformPool().prune(x, budget=1.0).tokens, x.reshape(-1, 8))
