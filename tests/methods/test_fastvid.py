"""FastVID (LLaVA-OV parallel implementation): parity with the authors' pruning block, counts, and properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_tango import make_video

from tango.methods import METHODS
from tango.methods.fastvid import FastVID, anchor_schedule
from tango.methods.tango_ops import fastvid_segments

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fastvid" / "reference.json"


def planted(video: dict) -> dict:
    """``make_video(**video)`` plus ``global [N, D]``: each frame's mean token (a frame-global feature that is close
    within a scene and far across scenes, so DySeg finds both multi-frame segments and cuts)."""
    v = make_video(**video)
    v["global"] = v["x"].mean(dim=1)
    return v


def _cases():
    return json.loads(FIXTURE.read_text())["cases"] if FIXTURE.exists() else []


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_parity_with_upstream(case):
    v = planted(case["video"])
    m = FastVID(segments=case["segments"], tau=case["tau"], seed=case["seed"])
    sel = m.prune(v["x"], budget=case["budget"], attn=v["attn"], metric=v["global"])
    assert sel.indices.tolist() == case["indices"]
    torch.testing.assert_close(sel.tokens, torch.tensor(case["tokens"]), rtol=1e-5, atol=1e-5)


def test_fixture_has_multi_frame_segments_and_cuts():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["commit"].startswith("a40a109") and len(fixture["cases"]) >= 5
    for case in fixture["cases"]:
        v = planted(case["video"])
        sizes = FastVID(segments=case["segments"], tau=case["tau"]).prune(
            v["x"], budget=case["budget"], attn=v["attn"], metric=v["global"]).stats["segments"]
        assert 1 < sizes <= v["x"].shape[0]
    # the long-segment cases exercise segments with several anchor frames (n > p = 4)
    long = next(c for c in fixture["cases"] if c["name"] == "long_segments_b020")
    g = planted(long["video"])["global"]
    g = g / g.norm(dim=1, keepdim=True)
    sizes = fastvid_segments((g[:-1] * g[1:]).sum(dim=1), long["segments"] - 1, long["tau"])
    assert max(sizes) > 4 and sum(n > 0 for n in anchor_schedule([max(sizes)], 1, 4)) >= 2


def test_anchor_schedule_is_the_reference_rule():
    # n = 9, p = 4: anchor frames 8, 4, 0 (the last and every 4th before it), (c * 9) // ceil(9 / 4) = 3c each
    assert anchor_schedule([9], 2, 4) == [6, 0, 0, 0, 6, 0, 0, 0, 6]
    assert anchor_schedule([1, 2], 3, 4) == [3, 0, 6]


@pytest.mark.parametrize("budget,per_frame", [(0.10, 19), (0.15, 29), (0.20, 39), (0.25, 49)])
def test_count_is_int_l_r_per_frame_at_most(budget, per_frame):
    """int(196 r) per frame (19/29/39/49 at the published ratios), fewer where (c n) // ceil(n / p) floors."""
    v = planted({"seed": 1, "n": 16, "h": 14, "w": 14, "d": 32, "scenes": (6, 6, 4)})
    sel = FastVID().prune(v["x"], budget=budget, attn=v["attn"], metric=v["global"])
    assert sel.stats["salient_per_frame"] + sel.stats["context_per_frame"] == per_frame
    assert 16 * sel.stats["salient_per_frame"] < sel.stats["tokens_out"] <= 16 * per_frame
    assert sel.indices.unique().numel() == sel.indices.numel() and bool((sel.indices.diff() > 0).all())


def test_salient_tokens_are_copies_and_bad_inputs_are_named():
    assert METHODS["fastvid"] is FastVID and FastVID.attention_source == "pooling_head"
    v = planted({"seed": 2})
    sel = FastVID().prune(v["x"], budget=0.25, attn=v["attn"], metric=v["global"])
    copies = (sel.tokens == v["x"].flatten(0, 1)[sel.indices]).all(dim=1)
    assert int(copies.sum()) >= v["x"].shape[0] * sel.stats["salient_per_frame"]
    assert torch.equal(FastVID().prune(v["x"], budget=1.0, attn=v["attn"], metric=v["global"]).tokens,
                       v["x"].flatten(0, 1))
    with pytest.raises(ValueError, match="metric \\[N, Dg\\]"):
        FastVID().prune(v["x"], budget=0.25, attn=v["attn"])
    with pytest.raises(ValueError, match="context_ratio=1.5"):
        FastVID(context_ratio=1.5)


# --- the LLaVA-Video fork (fork="video") --------------------------------------------------------------------------
VIDEO_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fastvid" / "video.json"
# (id, seed, budget, shots, store_tokens): 64 frames x 13 x 13 tokens, as the fork hard-codes
VIDEO_CASES = [("shots_10pct", 0, 0.1, 10, True), ("shots_25pct", 1, 0.25, 11, False),
               ("long_shots_15pct", 2, 0.15, 4, False)]


def video_fork_input(seed: int, shots: int, d: int = 6):
    """64 frames in ``shots`` shots (base + 0.5x noise), per-frame normalised attention, frame-global features
    following the shots (so DySeg cuts at shot changes besides its c - 1 forced cuts)."""
    g = torch.Generator().manual_seed(seed)
    shot = torch.arange(64) * shots // 64
    x = torch.randn(shots, 169, d, generator=g)[shot] + 0.5 * torch.randn(64, 169, d, generator=g)
    attn = torch.rand(64, 169, generator=g)
    glob = torch.randn(shots, 12, generator=g)[shot] + 0.2 * torch.randn(64, 12, generator=g)
    return x, attn / attn.sum(1, keepdim=True), glob


def test_video_fork_matches_its_block():
    """Kept indices equal the LLaVA-Video fork's block (run unmodified by tests/fixtures/fastvid/make_video.py on
    the grid span with newlines, seed 0); features to 1e-5 where stored."""
    fixture = json.loads(VIDEO_FIXTURE.read_text())
    assert [c["id"] for c in fixture["cases"]] == [c[0] for c in VIDEO_CASES]
    for (name, seed, budget, shots, _), ref in zip(VIDEO_CASES, fixture["cases"]):
        x, attn, glob = video_fork_input(seed, shots)
        sel = FastVID(fork="video").prune(x, budget=budget, attn=attn, metric=glob)
        assert sel.indices.tolist() == ref["indices"], name
        assert sel.stats["tokens_out"] == 64 * int(169 * budget)  # the fork's exact per-segment total
        if "tokens" in ref:
            torch.testing.assert_close(sel.tokens, torch.tensor(ref["tokens"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 9])
def test_video_fork_schedule_spends_the_segment_budget(n):
    from tango.methods.fastvid import video_schedule

    sal, ctx = video_schedule(n, 16, 0.4, 4)
    assert sum(sal) + sum(ctx) == 16 * n and sum(ctx) == int(16 * n * 0.4)
    assert max(sal) - min(sal) <= 1 and (n == 1 or ctx[-1] > 0)  # the last frame is an anchor frame
    assert [i for i, c in enumerate(ctx) if c] == [n - 1 - 4 * j for j in range((n + 3) // 4)][::-1]
    with pytest.raises(ValueError, match=r"fork='qwen3'.*'ov', 'video', 'qwen'"):
        FastVID(fork="qwen3")


# --- the Qwen2.5-VL fork (fork="qwen") ----------------------------------------------------------------------------
QWEN_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fastvid" / "qwen.json"
# (id, seed, budget, T temporal patches, shots, global-feature noise): grid 6 x 8 merged tokens, the script's tau 0.84
QWEN_CASES = [("shots_27pct", 0, 0.27, 16, 3, 0.15), ("sub_segments_25pct", 4, 0.25, 32, 2, 0.35),
              ("sub_segments_10pct", 5, 0.1, 32, 2, 0.35), ("one_shot_20pct", 3, 0.2, 16, 1, 0.15)]


def qwen_fork_input(seed: int, t: int, shots: int, noise: float, d: int = 8):
    """``t`` temporal patches of 6 x 8 merged tokens in ``shots`` shots; global features follow the shots with
    ``noise`` (0.35: consecutive cosines ~0.9, between tau 0.84 and DySeg_ignore 0.95, so segments split into
    sub-segments)."""
    g = torch.Generator().manual_seed(seed)
    shot = torch.arange(t) * shots // t
    x = torch.randn(shots, 48, d, generator=g)[shot] + 0.5 * torch.randn(t, 48, d, generator=g)
    attn = torch.rand(t, 48, generator=g)
    glob = torch.randn(shots, 10, generator=g)[shot] + noise * torch.randn(t, 10, generator=g)
    return x, attn / attn.sum(1, keepdim=True), glob


def test_qwen_fork_matches_its_block():
    """Kept indices and rows equal the Qwen2.5-VL fork's block (run unmodified by tests/fixtures/fastvid/make_qwen.py,
    seed 0), including its shortfall below N int(L r) when a segment has few sub-segments."""
    fixture = json.loads(QWEN_FIXTURE.read_text())
    assert [c["id"] for c in fixture["cases"]] == [c[0] for c in QWEN_CASES]
    shortfall = False
    for (name, seed, budget, t, shots, noise), ref in zip(QWEN_CASES, fixture["cases"]):
        x, attn, glob = qwen_fork_input(seed, t, shots, noise)
        sel = FastVID(fork="qwen", tau=0.84).prune(x, budget=budget, attn=attn, metric=glob)
        assert sel.indices.tolist() == ref["indices"], name
        torch.testing.assert_close(sel.tokens, torch.tensor(ref["tokens"]), rtol=1e-5, atol=1e-6)
        shortfall |= sel.stats["tokens_out"] < t * int(48 * budget)
    assert shortfall


def test_qwen_schedule_keeps_only_sub_segment_ends():
    from tango.methods.fastvid import qwen_schedule

    sal, ctx = qwen_schedule(6, 10, 0.4, 4, 48, [2, 3, 1])
    assert [i for i, (a, b) in enumerate(zip(sal, ctx)) if a + b] == [1, 4, 5]  # last frame of each sub-segment
    assert sum(ctx) == int(60 * 0.4) and sum(sal) + sum(ctx) == 60
    sal, ctx = qwen_schedule(4, 30, 0.4, 4, 48, [4])  # one sub-segment: one frame, capped at L // 2 + the rest
    assert (sal, ctx) == ([0, 0, 0, 24], [0, 0, 0, 24])  # 120 asked, 48 kept: the fork's shortfall
