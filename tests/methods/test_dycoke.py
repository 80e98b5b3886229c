"""DyCoke: parity of TTM and of the decode-time KV selection with KD-TAO/DyCoke, plus the budget regimes.

``tests/fixtures/dycoke/reference.json`` holds only numbers from running the reference ``dycole_ttm`` and
``PrunableDynamicCache.dycoke_pruning`` on the inputs of :func:`make_video` / :func:`make_decode_attention`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods import METHODS
from tango.methods.dycoke import DyCoke, kv_select, ttm_indices, ttm_schedule

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dycoke" / "reference.json"


def make_video(seed: int, n: int, length: int, d: int) -> torch.Tensor:
    """Seeded ``[n, length, d]`` frames: a static region (first quarter of the positions), a repeated frame pair
    (frame 3 ~ frame 2), a scene cut half-way, everything else drifting; noise keeps every row distinct."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(2, length, d, generator=g)
    frames = scenes[(torch.arange(n) >= n // 2).long()].clone()
    drift = torch.randn(n, length, d, generator=g).cumsum(0) * 0.4
    frames += drift
    static = length // 4
    frames[:, :static] = scenes[0, :static] + 0.05 * torch.randn(n, static, d, generator=g)
    if n > 3:
        frames[3] = frames[2] + 0.05 * torch.randn(length, d, generator=g)
    return frames + 0.05 * torch.randn(n, length, d, generator=g)


def repeated_video(seed: int, n: int, length: int, d: int) -> torch.Tensor:
    """``make_video`` with exact duplicates and near-duplicates: frame 1 = frame 0, frame 2 = frame 0 (so pass 2's raw
    cosine ties too), frame 5 = frame 4, frame 7 = frame 6 + 1e-7 noise: similarities tie to the last bit, and only the
    reference's own arithmetic orders them as it does."""
    x = make_video(seed, n, length, d)
    g = torch.Generator().manual_seed(seed + 100)
    x[1] = x[0]
    x[2] = x[0]
    if n > 5:
        x[5] = x[4]
    if n > 7:
        x[7] = x[6] + 1e-7 * torch.randn(length, d, generator=g)
    return x


def make_decode_attention(seed: int, steps: int, heads: int, seq: int) -> list[torch.Tensor]:
    """Seeded decode-step attention maps ``[1, heads, 1, seq]``: odd steps repeat the previous map with small
    noise (stable attention, no pruning), even steps are fresh (shifting attention)."""
    g = torch.Generator().manual_seed(seed)
    out, logits = [], None
    for t in range(steps):
        if t % 2 == 0:
            logits = 3.0 * torch.randn(1, heads, 1, seq, generator=g)
        else:
            logits = logits + 0.05 * torch.randn(1, heads, 1, seq, generator=g)
        out.append(logits.softmax(-1))
    return out


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"ttm": [], "kv": [], "counts": []}


@pytest.mark.unit
def test_fixture_is_present():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["commit"].startswith("dd74634") and len(fixture["ttm"]) >= 5 and len(fixture["kv"]) >= 1


@pytest.mark.unit
@pytest.mark.parametrize("case", _fixture()["ttm"], ids=lambda c: c["id"])
def test_ttm_parity(case):
    x = make_video(case["seed"], case["n"], case["length"], case["d"])
    sel = DyCoke(merging_ratio=case["k"]).prune(x, budget=0.5, attn=None)
    # The reference's top-k is sorted (ascending similarity), so its output order is compared exactly.
    assert sel.indices.tolist() == case["indices"]
    assert torch.equal(sel.tokens, x.reshape(-1, case["d"])[sel.indices])
    assert sel.stats["regime"] == "ttm_k" and sel.stats["tokens_out"] == len(case["indices"])


REPEATED = Path(__file__).resolve().parents[1] / "fixtures" / "dycoke" / "repeated_frames.json"


@pytest.mark.unit
@pytest.mark.parametrize("case", json.loads(REPEATED.read_text())["ttm"] if REPEATED.exists() else [],
                         ids=lambda c: c["id"])
def test_ttm_parity_on_repeated_frames(case):
    """Duplicated frames tie every similarity to the last bit; the kept tokens and their order are the reference's."""
    x = repeated_video(case["seed"], case["n"], case["length"], case["d"])
    sel = DyCoke(merging_ratio=case["k"]).prune(x, budget=0.5, attn=None)
    assert sel.indices.tolist() == case["indices"]


@pytest.mark.unit
@pytest.mark.parametrize("case", _fixture()["counts"], ids=lambda c: f"k{c['k']}")
def test_ttm_counts_32_frames(case):
    plan = DyCoke(merging_ratio=case["k"]).plan(32, 196, 0.5)
    assert plan["tokens_out"] == case["tokens_out"]


@pytest.mark.unit
@pytest.mark.parametrize("case", _fixture()["kv"], ids=lambda c: c["id"])
def test_kv_selection_parity(case):
    maps = make_decode_attention(case["seed"], case["steps"], case["heads"], case["seq"])
    prev = None
    for attn, ref in zip(maps, case["per_step"]):
        visual = torch.arange(case["image_start"], case["image_start"] + case["image_len"])
        step = kv_select(attn[0, :, -1, :], prev, visual=visual, prune_ratio=case["prune_ratio"])
        assert step.similarity == pytest.approx(ref["similarity"], abs=1e-6)
        if ref["keep"] is None:
            assert step.keep is None
        else:
            # Unsorted top-k upstream: compare as sets; ours is sorted and unique.
            assert set(step.keep.tolist()) == set(ref["keep"]) and len(ref["keep"]) == step.keep.numel()
            assert torch.equal(step.keep, step.keep.sort().values)
        prev = step.image_attn


@pytest.mark.unit
def test_schedule_matches_documented_anchors():
    kind, _ = ttm_schedule(32)
    assert (kind == 0).nonzero().flatten().tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    assert ttm_schedule(9)[0].numel() == 8 and ttm_schedule(9, drop_odd_last_frame=False)[0].numel() == 9
    with pytest.raises(ValueError, match="num_frames=1"):
        ttm_schedule(1)


@pytest.mark.unit
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.99])
def test_budget_regimes_and_counts(budget):
    n, length = 16, 20
    x = make_video(7, n, length, 6)
    sel = DyCoke().prune(x, budget=budget)
    anchors, pruned, floor = 5, 11, 5 * length  # anchors 0,4,8,12,14 at 16 frames
    assert sel.stats["anchor_frames"] == anchors and sel.stats["ttm_floor"] == pytest.approx(floor / (n * length))
    if budget * n * length >= floor:
        keep = min(length, round((budget * n * length - floor) / pruned))
        assert sel.stats["regime"] == "ttm" and sel.stats["tokens_out"] == floor + pruned * keep
    else:
        keep = max(1, round(budget * length))
        assert sel.stats["regime"] == "ttm_cap" and sel.stats["tokens_out"] == n * keep
    assert sel.stats["keep_per_frame"] == keep
    assert sel.indices.numel() == sel.stats["tokens_out"] == sel.tokens.shape[0]
    assert sel.indices.unique().numel() == sel.indices.numel()
    assert 0 <= int(sel.indices.min()) and int(sel.indices.max()) < n * length
    assert torch.equal(sel.indices // length, (sel.indices // length).sort().values)  # frame-major
    assert torch.equal(sel.tokens, x.reshape(-1, 6)[sel.indices])


@pytest.mark.unit
def test_cap_variant_keeps_least_similar_anchor_tokens():
    x = make_video(8, 8, 16, 6)
    idx = ttm_indices(x, keep=3, anchor_keep=3)
    assert idx.numel() == 8 * 3
    # anchor 4 keeps the tokens least similar to frame 3
    sim = torch.nn.functional.cosine_similarity(x[4], x[3], dim=-1)
    assert set((idx[4 * 3 : 5 * 3] - 4 * 16).tolist()) == set(sim.topk(3, largest=False).indices.tolist())


@pytest.mark.unit
def test_identity_short_and_odd_videos():
    x = make_video(9, 5, 16, 6)
    sel = DyCoke().prune(x, budget=1.0)
    assert torch.equal(sel.tokens, x.reshape(-1, 6)) and sel.stats["regime"] == "identity"
    short = DyCoke().prune(make_video(9, 4, 16, 6), budget=0.6)  # the reference crashes at N <= 4
    assert short.stats["anchor_frames"] == 2 and short.stats["regime"] == "ttm"
    odd = DyCoke(merging_ratio=0.5).prune(x, budget=0.5)
    assert odd.stats["dropped_frames"] == 1 and int(odd.indices.max()) < 4 * 16
    kept = DyCoke(merging_ratio=0.5, drop_odd_last_frame=False).prune(x, budget=0.5)
    assert kept.stats["dropped_frames"] == 0 and kept.indices[-16:].tolist() == list(range(64, 80))
    a, b = DyCoke().prune(x, budget=0.3), DyCoke().prune(x.clone(), budget=0.3)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.tokens, b.tokens)
    assert METHODS["dycoke"] is DyCoke


@pytest.mark.unit
def test_kv_plan_and_span():
    m = DyCoke(merging_ratio=0.7, kv_prune_ratio=0.7)
    sel = m.prune(make_video(10, 8, 16, 6), budget=0.5)
    visual = m.kv_positions(torch.arange(14, 14 + sel.stats["tokens_out"]))
    image_len = visual.numel()
    assert visual.tolist() == list(range(14, 14 + sel.stats["tokens_out"] - 1))  # the reference's TTM length - 1
    assert sel.stats["kv_tokens_pruned_step"] == 1 + int(image_len * 0.3)
    attn = torch.rand(3, 14 + sel.stats["tokens_out"] + 20)
    step = m.kv_select(attn, None, visual=visual)
    assert step.keep.numel() == attn.shape[1] - image_len + int(image_len * 0.3) and step.similarity == 0.0
    assert m.kv_select(attn, step.image_attn, visual=visual).keep is None


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, match",
    [({"merging_ratio": 1.5}, "merging_ratio=1.5"), ({"kv_layer": 0}, "kv_layer=0"),
     ({"kv_prune_ratio": 1.0}, "kv_prune_ratio=1.0"), ({"kv_threshold": -0.1}, "kv_threshold=-0.1")],
)
def test_bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DyCoke(**kwargs)


@pytest.mark.unit
def test_bad_budget_raises():
    with pytest.raises(ValueError, match="budget=1.5"):
        DyCoke().prune(make_video(0, 4, 4, 2), budget=1.5)


@pytest.mark.unit
def test_bf16_agrees_with_fp32():
    x = make_video(11, 12, 25, 16)
    hi, lo = DyCoke().prune(x, budget=0.5), DyCoke().prune(x.bfloat16(), budget=0.5)
    assert hi.stats["tokens_out"] == lo.stats["tokens_out"]
    # bf16 similarities can tie or swap near the cut: most kept tokens agree, none leave their frame.
    overlap = len(set(hi.indices.tolist()) & set(lo.indices.tolist())) / hi.indices.numel()
    assert overlap > 0.9
    assert torch.equal(hi.indices // 25, lo.indices // 25)
