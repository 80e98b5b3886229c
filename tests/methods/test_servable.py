"""Servable methods (``PruningMethod.servable``): ``prune`` returns exactly ``count(N, L, budget, grid)`` tokens on
every input of that shape, whatever the video, so a serving engine can size the prompt before the vision encoder
runs. Property test over shapes, budgets and contents (random, static, two-scene and duplicated-token videos)."""

import pytest
import torch

from tango.methods import METHODS, build_method

pytestmark = pytest.mark.unit

#: the methods whose authors' count depends on the video, with a servable count_rule="exact" variant
EXACT = ("tango", "holitom", "flashvid")

#: variant -> (method, settings): every registered method at its defaults, plus the settings that make one servable
VARIANTS = {name: (name, {}) for name in METHODS} | {"vidcom2_vllm": ("vidcom2", {"count_rule": "vllm"}),
                                                     "dycoke_ttm_only": ("dycoke", {"kv_pruning": False}),
                                                     "random_global": ("random", {"mode": "global"})} \
    | {f"{m}_exact": (m, {"count_rule": "exact"}) for m in EXACT}
SERVABLE = {"none", "visionzip", "evs", "random", "uniform_pool", "vidcom2_vllm", "dycoke_ttm_only", "random_global",
            *(f"{m}_exact" for m in EXACT)}
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
    # the exact variants run their authors' whole pipeline first (slow on the larger shapes; the reconcile step is not)
    for n, l, grid in SHAPES[:4] if variant.endswith("_exact") else SHAPES:
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


@pytest.mark.parametrize("name", EXACT)
def test_the_exact_variant_only_reconciles_the_authors_output(name):
    """count_rule=exact changes nothing but the reconcile step: above the count it keeps a subset of the authors'
    outputs (the lowest-saliency ones dropped), below it a superset (the highest-saliency unrepresented tokens
    added, with their own features); the regime and the moved count are recorded."""
    authors, exact = build_method(name), build_method(name, count_rule="exact")
    assert exact.nonstandard_regimes == {"exact_count": exact.nonstandard_regimes["exact_count"]}
    moved = set()
    for n, l, grid in SHAPES[1:5]:
        for video, x in _videos(n, l, d=64).items():
            attn = torch.softmax(torch.randn(n, l, generator=torch.Generator().manual_seed(l)), dim=-1)
            for budget in (0.1, 0.25, 0.5):
                kw = dict(budget=budget, attn=attn, metric=x, grid=grid,
                          timestamps=torch.arange(n, dtype=torch.float32))
                a, e = authors.prune(x, **kw), exact.prune(x, **kw)
                assert e.stats["regime"] == "exact_count" and "regime" not in a.stats
                assert e.stats["reconciled"] == e.stats["count_target"] - a.indices.numel()
                pairs_a = {(int(i), tuple(t.tolist())) for i, t in zip(a.indices, a.tokens)}
                pairs_e = {(int(i), tuple(t.tolist())) for i, t in zip(e.indices, e.tokens)}
                if e.stats["reconciled"] <= 0:
                    assert pairs_e <= pairs_a, (name, n, l, video, budget)
                    dropped = set(a.indices.tolist()) - set(e.indices.tolist())
                    if dropped:  # every dropped output scored at most as high as every kept one
                        score = attn.flatten() if name != "tango" else _tango_score(exact, attn, l)
                        assert max(score[sorted(dropped)]) <= min(score[e.indices]), (name, n, l, video, budget)
                else:
                    assert pairs_a <= pairs_e
                    added = sorted(set(e.indices.tolist()) - set(a.indices.tolist()))
                    flat = x.reshape(n * l, -1)
                    assert all((i, tuple(flat[i].tolist())) in pairs_e for i in added)  # with their own features
                    score = attn.flatten() if name != "tango" else _tango_score(exact, attn, l)
                    left = sorted(set(range(n * l)) - set(e.indices.tolist()))
                    assert not left or min(score[added]) >= max(score[left]), (name, n, l, video, budget)
                if e.stats["reconciled"]:
                    moved.add("added" if e.stats["reconciled"] > 0 else "dropped")
    # the step really ran, both ways where the authors' count can fall short (FlashVID's per-frame ceil never does)
    assert moved == ({"dropped"} if name == "flashvid" else {"added", "dropped"}), (name, moved)


def _tango_score(method, attn, l):
    """Tango's saliency: ``attn`` with the sink positions zeroed, flat."""
    score = attn.clone()
    score[:, method.sink_indices] = 0
    return score.flatten()
