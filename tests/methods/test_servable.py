"""Servable methods (``PruningMethod.servable``): ``prune`` returns exactly ``count(N, L, budget, grid)`` tokens on
every input of that shape, whatever the video, so a serving engine can size the prompt before the vision encoder
runs. Property test over shapes, budgets and contents (random, static, two-scene and duplicated-token videos)."""

import pytest
import torch

from tango.methods import METHODS, build_method

pytestmark = pytest.mark.unit

#: variant -> (method, settings): every registered method at its defaults, plus the settings that make one servable
VARIANTS = {name: (name, {}) for name in METHODS} | {"vidcom2_vllm": ("vidcom2", {"count_rule": "vllm"}),
                                                     "dycoke_ttm_only": ("dycoke", {"kv_pruning": False}),
                                                     "random_global": ("random", {"mode": "global"})}
SERVABLE = {"none", "visionzip", "evs", "random", "uniform_pool", "vidcom2_vllm", "dycoke_ttm_only", "random_global"}
SHAPES = [(1, 16, (4, 4)), (2, 20, (4, 5)), (5, 16, (4, 4)), (8, 49, (7, 7)), (9, 36, (6, 6)), (16, 196, (14, 14))]
BUDGETS = [0.05, 0.1, 0.2, 0.25, 0.3, 0.37, 0.5, 0.7, 0.99, 1.0]


def _method(variant: str):
    name, settings = VARIANTS[variant]
    return build_method(name, **settings)


def _videos(n: int, l: int, d: int = 8):
    g = torch.Generator().manual_seed(n * 1000 + l)
    noise = torch.randn(n, l, d, generator=g)
    static = noise[:1].expand(n, l, d).clone()
    scenes = torch.cat([noise[:1].expand((n + 1) // 2, l, d), noise[1:2].expand(n // 2, l, d)]) if n > 1 else noise
    flat = torch.ones(n, l, d)  # every token equal: ties everywhere
    return {"random": noise, "static": static, "scenes": scenes.clone(), "flat": flat}


def test_the_servable_methods_are_these():
    """A method stops being servable (or starts) only on purpose: then this list changes."""
    assert {v for v in VARIANTS if _method(v).servable} == SERVABLE


@pytest.mark.parametrize("variant", sorted(SERVABLE))
def test_prune_returns_exactly_count_tokens(variant):
    method = _method(variant)
    for n, l, grid in SHAPES:
        if variant.startswith("dycoke") and n < 2:
            continue  # TTM pairs frames (check_feasible refuses one frame)
        for name, x in _videos(n, l).items():
            attn = torch.softmax(x.sum(-1), dim=-1)
            for budget in BUDGETS:
                sel = method.prune(x, budget=budget, attn=attn, metric=x, grid=grid,
                                   timestamps=torch.arange(n, dtype=torch.float32))
                expected = method.count(n, l, budget, grid)
                assert sel.tokens.shape[0] == sel.indices.numel() == expected, (variant, n, l, name, budget)
                assert sel.stats["tokens_out"] == expected


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - SERVABLE))
def test_the_others_refuse_to_promise_a_count(variant):
    with pytest.raises(NotImplementedError, match="depends on the video"):
        _method(variant).count(8, 16, 0.25, (4, 4))


def test_a_data_dependent_count_really_varies():
    """Why Tango and VidCom2's authors' rule are not servable: the same shape and budget, different counts."""
    for variant in ("tango", "vidcom2"):
        method = _method(variant)
        counts = set()
        for x in _videos(8, 16).values():
            sel = method.prune(x, budget=0.25, attn=torch.softmax(x.sum(-1), dim=-1), grid=(4, 4),
                               timestamps=torch.arange(8, dtype=torch.float32))
            counts.add(sel.tokens.shape[0])
        assert len(counts) > 1, (variant, counts)
