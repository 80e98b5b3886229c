"""FlashVID: parity with the authors' ``flashvid_compression`` on planted inputs; budgets, segments, properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods.flashvid import FlashVID, flashvid_budgets, flashvid_segments

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flashvid" / "reference.json"

# (id, seed, N, L, D, budget, structure, config): config holds FlashVidConfig fields (scripts: expansion 1.25)
CASES = [
    ("shots_v2", 0, 16, 36, 16, 0.25, "shots", {}),
    ("shots_10pct", 1, 12, 49, 16, 0.1, "shots", {}),
    ("few_frames_single_segments", 2, 6, 36, 16, 0.25, "shots", {}),
    ("attn_div_min4", 3, 16, 36, 16, 0.25, "shots", {"token_selection_method": "attn_div", "min_segment_num": 4}),
    ("high_budget_duplicates", 4, 10, 25, 16, 0.5, "shots", {}),
    ("repeated_frames", 5, 12, 25, 16, 0.2, "repeated", {}),
    ("static_video_one_shot", 6, 12, 36, 16, 0.15, "static", {}),
]


def flashvid_video(seed: int, n: int, l: int, d: int, structure: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``shots``: 4 shots, each a base frame + 0.3x noise; ``repeated``: shots with frames 3, 4, 8 copying their
    predecessors (cosine 1: complementary cuts can repeat, leaving empty segments); ``static``: one base frame +
    0.05x noise (every token links to the previous frame). ``attn`` is normalised per frame."""
    g = torch.Generator().manual_seed(seed)
    shots = 1 if structure == "static" else 4
    base = torch.randn(shots, l, d, generator=g)
    noise = 0.05 if structure == "static" else 0.3
    x = base[torch.arange(n) * shots // n] + noise * torch.randn(n, l, d, generator=g)
    if structure == "repeated":
        for f in (3, 4, 8):
            x[f] = x[f - 1]
    a = torch.rand(n, l, generator=g)
    return x, a / a.sum(1, keepdim=True)


def method_for(config: dict, **kw) -> FlashVID:
    return FlashVID(selection=config.get("token_selection_method", "attn_div_v2"),
                    min_segment_num=config.get("min_segment_num", 8), expansion=1.25, **kw)


def canonical(indices: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Rows ordered by (flat index, row sum): duplicates of one index compare as a multiset (upstream's final
    argsort is not stable)."""
    order = sorted(range(len(indices)), key=lambda i: (int(indices[i]), float(tokens[i].sum())))
    return tokens[order]


def test_matches_flashvid_compression():
    """Kept indices equal the authors' (run unmodified by tests/fixtures/flashvid/make_reference.py after
    torch.manual_seed(0)); merged features to 1e-5 relative."""
    fixture = json.loads(FIXTURE.read_text())
    assert [c["id"] for c in fixture["cases"]] == [c[0] for c in CASES]
    for (name, seed, n, l, d, budget, structure, config), ref in zip(CASES, fixture["cases"]):
        x, attn = flashvid_video(seed, n, l, d, structure)
        before = x.clone()
        sel = method_for(config).prune(x, budget=budget, attn=attn)
        assert sel.indices.tolist() == ref["indices"], name
        want = canonical(torch.tensor(ref["indices"]), torch.tensor(ref["tokens"]))
        torch.testing.assert_close(canonical(sel.indices, sel.tokens), want, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(x, before)  # upstream writes into its input; the harness does not
        assert sel.stats["segments"] + sel.stats["empty_segments"] == len(ref["segments"])


def test_budgets_follow_the_scripts_float_expressions():
    assert [flashvid_budgets(196, r, 1.25, 0.7) for r in (0.1, 0.15, 0.2, 0.25)] == [(18, 7), (26, 11), (35, 14),
                                                                                     (44, 18)]
    assert [sum(flashvid_budgets(169, r, 1.25, 0.7)) for r in (0.1, 0.15, 0.2, 0.25)] == [22, 32, 43, 53]
    assert sum(flashvid_budgets(224, 0.1, 1.25, 0.7)) == 29  # 224 * 0.1 * 1.25 = 28.000000000000004


def test_repeated_frames_can_leave_an_empty_segment_and_few_frames_split_fully():
    x, _ = flashvid_video(5, 12, 25, 16, "repeated")
    assert sum(flashvid_segments(x, 0.9, 8, True)) == 12
    x, _ = flashvid_video(2, 6, 36, 16, "shots")
    segs = flashvid_segments(x, 0.9, 8, True)  # N < min_segment_num: every frame its own segment, and the
    assert [s for s in segs if s] == [1] * 6 and segs.count(0) == 2  # exhausted topk re-draws cuts (empty ones)


def test_tree_merge_counts_direct_children_like_upstream_or_the_subtree():
    """A chain of 4 identical tokens over 4 frames: upstream's root is sum / (1 + direct children) = 4x / 2 = 2x;
    merge_count="intended" gives the mean x. Tokens 1-3 change direction between frames 0 and 1, so frame 0 keeps
    all four roots."""
    from tango.methods.flashvid import tstm

    x = torch.eye(4, 8)[None].repeat(4, 1, 1)  # [F=4, L=4, D=8]: token l is e_l in every frame
    x[1:, 1:] = torch.eye(8)[4:7][None] * torch.arange(1, 4)[:, None, None]  # tokens 1-3: new directions
    free = torch.ones(4, 4, dtype=torch.bool)
    for intended, scale in ((False, 2.0), (True, 1.0)):
        roots = tstm(x, free, 0, 1, 0.8, intended)
        assert roots[0][0].tolist() == [0, 1, 2, 3] and all(0 not in r.tolist() for r, _ in roots[1:])
        torch.testing.assert_close(roots[0][1][0], scale * torch.eye(8)[0])


def test_errors_name_the_values():
    x, attn = flashvid_video(6, 12, 36, 16, "static")
    with pytest.raises(ValueError, match=r"selection='topk'.*attn_div_v2"):
        FlashVID(selection="topk")
    with pytest.raises(ValueError, match="needs attn"):
        FlashVID().prune(x, budget=0.2)
    assert FlashVID(inner_llm=True).stage == "both" and FlashVID().stage == "pre_llm"
