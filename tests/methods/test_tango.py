"""Tango: parity with the reference code (frozen fixtures) and properties of the reimplementation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tango.methods import METHODS
from tango.methods.dpc import dpc_knn
from tango.methods.st_rope import st_rope, strope_sections
from tango.methods.tango import Tango
from tango.methods.tango_ops import (
    fastvid_segments,
    holitom_segments,
    inner_llm_merge,
    pre_llm_ratio,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tango"


def _secs(x: torch.Tensor) -> torch.Tensor:
    """Frame times of ``x [N, L, D]`` at 1 frame per second (Tango takes them explicitly)."""
    return torch.arange(x.shape[0], dtype=torch.float32)


def make_video(
    seed: int,
    n: int = 8,
    h: int = 7,
    w: int = 7,
    d: int = 48,
    scenes: tuple[int, ...] = (3, 3, 2),
    static_rows: int = 2,
    drift: float = 0.6,
    n_clusters: int = 5,
) -> dict:
    """Synthetic video with planted structure, from a seed (fixtures store only outputs).

    Scenes of repeated content; inside a scene the top ``static_rows`` rows are near-identical across frames
    (static positions), the rest drifts by ``drift`` per frame; token content is drawn around ``n_clusters``
    centres assigned by spatial blocks (clustered features). Saliency has a few peaks; timestamps are 2 s apart.
    """
    g = torch.Generator().manual_seed(seed)
    l = h * w
    assert sum(scenes) == n
    centres = torch.randn(n_clusters, d, generator=g) * 2.0
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    frames = []
    for s_len in scenes:
        label = ((rows // 2) * 3 + cols // 3 + torch.randint(0, n_clusters, (1,), generator=g)) % n_clusters
        base = centres[label.flatten()] + 0.8 * torch.randn(l, d, generator=g)
        cur = base.clone()
        for _ in range(s_len):
            frames.append(cur.clone())
            step = drift * torch.randn(l, d, generator=g)
            step[: static_rows * w] *= 0.02
            cur = cur + step
    x = torch.stack(frames)
    attn = torch.rand(n, l, generator=g)
    peaks = torch.randint(0, l, (n, 3), generator=g)
    attn.scatter_add_(1, peaks, torch.full((n, 3), 2.0))
    attn = attn / attn.sum(dim=1, keepdim=True)
    return {"x": x, "attn": attn, "timestamps": torch.arange(n, dtype=torch.float32) * 2.0, "grid": (h, w)}


def make_holitom_sims() -> list[tuple[torch.Tensor, float, int]]:
    """``(sim [N-1, L], tau, max_window)`` cases: blocky similarities with random scene cuts."""
    g = torch.Generator().manual_seed(11)
    cases = []
    for n, l, taus, max_window in [(12, 30, [0.5, 0.8], 1024), (20, 16, [0.3, 0.7], 1024), (16, 25, [0.5], 4)]:
        sim = torch.rand(n - 1, l, generator=g) * 0.5 + 0.5
        drops = torch.rand(n - 1, 1, generator=g) < 0.25
        sim = torch.where(drops, sim - 0.5, sim)
        cases += [(sim, tau, max_window) for tau in taus]
    return cases


def make_fastvid_sims() -> list[tuple[torch.Tensor, int, float]]:
    """``(sim [N-1], c, tau)`` cases."""
    g = torch.Generator().manual_seed(12)
    return [
        (torch.rand(n - 1, generator=g), c, tau)
        for n, c, tau in [(16, 8, 0.9), (16, 8, 0.5), (5, 8, 0.9), (30, 4, 0.2)]
    ]


def make_points() -> list[tuple[torch.Tensor, int, int]]:
    """``(x [B, M, D] unit norm, n_clusters, k)``: well-separated Gaussian blobs."""
    g = torch.Generator().manual_seed(21)
    cases = []
    for b, m, d, c, k in [(2, 30, 16, 4, 7), (1, 60, 24, 10, 7), (3, 12, 8, 3, 4)]:
        centres = torch.randn(b, c, d, generator=g) * 3
        lab = torch.randint(0, c, (b, m), generator=g)
        x = centres.gather(1, lab[..., None].expand(-1, -1, d)) + torch.randn(b, m, d, generator=g)
        cases.append((torch.nn.functional.normalize(x, dim=-1), c, k))
    return cases


def make_rope_inputs() -> list[dict]:
    """ST-RoPE inputs: a non-square grid with explicit sections, and D = 64 with derived sections."""
    g = torch.Generator().manual_seed(31)
    out = []
    for n, h, w, d, sections, t in [(2, 2, 3, 20, [8, 6, 6], [0.0, 3.5]), (3, 2, 2, 64, None, [0.0, 1.0, 116.1])]:
        out.append(
            dict(x=torch.randn(n, h * w, d, generator=g), grid=(h, w), sections=sections, timestamps=torch.tensor(t))
        )
    return out


def make_inner_inputs() -> list[dict]:
    """Inner-LLM stage inputs: a sequence's hidden states and head-wise attention, with a visual span."""
    g = torch.Generator().manual_seed(41)
    out = []
    for seq, start, length, heads, d, keep in [(40, 5, 27, 4, 16, 0.5), (30, 3, 21, 2, 8, 0.5)]:
        hidden = torch.randn(1, seq, d, generator=g)
        attn = torch.softmax(torch.randn(1, heads, seq, seq, generator=g), dim=-1)
        out.append(dict(hidden=hidden, attn=attn, start=start, length=length, keep=keep))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Parity with the reference code (fixtures from tests/fixtures/tango/*.json, produced by the upstream functions)
# ----------------------------------------------------------------------------------------------------------------------

UPSTREAM_COMMIT = "cc815b6e6762f6cf54ae20fafefd4d5bc02f2aef"


def _load(name: str) -> dict:
    data = json.loads((FIXTURES / name).read_text())
    assert data["commit"] == UPSTREAM_COMMIT
    return data


PIPELINE = _load("pipeline.json")
FUNCTIONS = _load("functions.json")


def _case_video(case: dict) -> dict:
    v = make_video(case["seed"], **case["video"])
    if case.get("long_ts"):  # 1-hour video, frames ~116 s apart (docs §7)
        v["timestamps"] = torch.linspace(0, 107999, v["x"].shape[0], dtype=torch.int64) / 30
    return v


def _case_method(case: dict, **kw) -> Tango:
    return Tango(
        sink_indices=case["sinks"],
        segment_type=case.get("segment_type", "holitom"),
        segment_threshold=case["tau"],
        **kw,
    )


@pytest.mark.unit
@pytest.mark.parametrize("case", PIPELINE["cases"], ids=[c["name"] for c in PIPELINE["cases"]])
def test_pipeline_matches_reference(case):
    v = _case_video(case)
    x0, a0 = v["x"].clone(), v["attn"].clone()
    method = _case_method(case)
    # fastvid cases: the reference's per-frame global feature is the per-frame mean of x (its Qwen2.5-VL copy)
    glob = v["x"].mean(dim=1)
    sel = method.prune(v["x"], budget=case["budget"], attn=v["attn"], timestamps=v["timestamps"], grid=v["grid"],
                       metric=glob)
    assert method.segments(v["x"], case["budget"], metric=glob) == case["segments"]
    assert sel.indices.tolist() == case["indices"]
    torch.testing.assert_close(sel.tokens, torch.tensor(case["tokens"]), rtol=1e-5, atol=1e-6)
    assert sel.stats["tokens_out"] == len(case["indices"]) and sel.stats["num_segments"] == len(case["segments"])
    # Unlike upstream, the inputs are left untouched.
    assert torch.equal(v["x"], x0) and torch.equal(v["attn"], a0)


@pytest.mark.unit
def test_fix_merge_order_keeps_the_set_and_changes_merged_rows():
    changed = 0
    for case in PIPELINE["cases"]:
        v = _case_video(case)
        sel = _case_method(case, fix_merge_order=True).prune(
            v["x"], budget=case["budget"], attn=v["attn"], timestamps=v["timestamps"], grid=v["grid"],
            metric=v["x"].mean(dim=1))
        assert sel.indices.tolist() == case["indices"]
        changed += int(not torch.allclose(sel.tokens, torch.tensor(case["tokens"]), rtol=1e-5, atol=1e-6))
    assert changed > 0  # the fixtures exercise the upstream write-back defect


@pytest.mark.unit
def test_holitom_segmentation_matches_reference():
    for (sim, tau, max_window), ref in zip(make_holitom_sims(), FUNCTIONS["holitom"], strict=True):
        assert holitom_segments(sim, tau, max_window) == ref["sizes"]


@pytest.mark.unit
def test_fastvid_segmentation_matches_reference():
    for (sim, c, tau), ref in zip(make_fastvid_sims(), FUNCTIONS["fastvid"], strict=True):
        assert fastvid_segments(sim, c - 1, tau) == ref["sizes"]


@pytest.mark.unit
def test_dpc_knn_matches_reference():
    for (x, c, k), ref in zip(make_points(), FUNCTIONS["dpc_knn"], strict=True):
        assert ref["seed_invariant"]
        got = dpc_knn(x, c, k, generator=torch.Generator().manual_seed(0))
        assert got.tolist() == ref["centres"]  # same centres in the same (score) order


@pytest.mark.unit
def test_st_rope_matches_reference():
    for inp, ref in zip(make_rope_inputs(), FUNCTIONS["st_rope"], strict=True):
        sections = inp["sections"] or strope_sections(inp["x"].shape[-1])
        assert sections == ref["sections"]
        y = st_rope(inp["x"], inp["timestamps"], inp["grid"], sections)
        torch.testing.assert_close(y, torch.tensor(ref["y"]), rtol=1e-5, atol=1e-6)


@pytest.mark.unit
def test_inner_llm_merge_matches_reference():
    for inp, ref in zip(make_inner_inputs(), FUNCTIONS["inner_llm"], strict=True):
        s, n = inp["start"], inp["length"]
        row = inp["attn"].mean(dim=1)[0, -1, s : s + n]  # last token's head-averaged attention to the span
        keep_idx, merged = inner_llm_merge(inp["hidden"][:, s : s + n], row, keep=inp["keep"])
        assert keep_idx.tolist() == ref["keep_idx"]
        assert len(ref["keep_idx"]) == round(n * inp["keep"])
        torch.testing.assert_close(merged, torch.tensor(ref["merged"]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------------------


def _expected_count(x: torch.Tensor, sizes: list[int], r: float, cr: float = 0.4, tau_static: float = 0.8) -> int:
    """Kept-token count from the budget rule, recomputed independently of the implementation."""
    l = x.shape[1]

    def keep(m: int, ratio: float, at_least_one: bool) -> tuple[int, int]:
        n = math.ceil(m * ratio)
        n = max(1, n) if (at_least_one and m > 0) else n
        s = int(n * (1 - cr))
        return s, n - s

    total, n0 = 0, 0
    for size in sizes:
        seg = x[n0 : n0 + size]
        n0 += size
        if size == 1:
            s, c = keep(l, r, True)
            total += s + min(c, l - s)
            continue
        xn = torch.nn.functional.normalize(seg, dim=-1)
        n_static = int(((xn[:-1] * xn[1:]).sum(-1) > tau_static).all(0).sum())
        r2 = min(r / ((size * l - (size - 1) * n_static) / (size * l)), 1.0)
        if n_static:
            s, c = keep(n_static, r2, True)
            total += s + min(c, n_static - s)
        s, c = keep(l - n_static, r2, False)
        total += size * s + (min(c * size, size * (l - n_static - s)) if c > 0 else 0)
    return total


@pytest.mark.unit
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.2, 0.35, 0.6])
@pytest.mark.parametrize("seed", [7, 8])
def test_kept_count_follows_the_budget_rule(seed, budget):
    v = make_video(seed, n=8, scenes=(4, 1, 3), static_rows=3)
    method = Tango()
    sel = method.prune(v["x"], budget=budget, attn=v["attn"], timestamps=v["timestamps"])
    sizes = method.segments(v["x"], budget)
    assert sel.stats["tokens_out"] == _expected_count(v["x"], sizes, budget) == sel.tokens.shape[0]
    assert sel.stats["static_kept"] + sel.stats["salient_kept"] + sel.stats["context_kept"] == sel.tokens.shape[0]
    idx = sel.indices
    assert idx.unique().numel() == idx.numel() and idx.min() >= 0 and idx.max() < v["x"].shape[0] * v["x"].shape[1]
    assert torch.equal(idx, idx.sort().values)  # raster order


@pytest.mark.unit
def test_worked_budget_llava_ov_without_static_tokens():
    # Docs §2.9: 32 frames x 196 tokens, r = 0.1, nothing static -> 20 per frame (12 salient + 8 context) = 640.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 196, 16, generator=g)
    sel = Tango(segment_threshold=1.0).prune(x, budget=0.1, attn=torch.rand(32, 196, generator=g),
                                             timestamps=_secs(x))
    assert sel.stats["num_segments"] == 32 and sel.stats["tokens_out"] == 640
    assert sel.stats["salient_kept"] == 32 * 12 and sel.stats["context_kept"] == 32 * 8


@pytest.mark.unit
def test_budget_one_is_identity():
    v = make_video(1)
    for method in (Tango(), Tango(inner_llm=True)):
        sel = method.prune(v["x"], budget=1.0, attn=v["attn"])
        assert torch.equal(sel.tokens, v["x"].reshape(-1, v["x"].shape[-1]))
        assert torch.equal(sel.indices, torch.arange(v["x"].shape[0] * v["x"].shape[1]))
        assert sel.stats["tokens_in"] == sel.stats["tokens_out"]
    assert not Tango(inner_llm=True).inner_llm_active(1.0) and Tango(inner_llm=True).inner_llm_active(0.1)


@pytest.mark.unit
def test_deterministic():
    v = make_video(2)
    a = Tango(seed=3).prune(v["x"], budget=0.15, attn=v["attn"], timestamps=v["timestamps"])
    b = Tango(seed=3).prune(v["x"], budget=0.15, attn=v["attn"], timestamps=v["timestamps"])
    assert torch.equal(a.indices, b.indices) and torch.equal(a.tokens, b.tokens) and a.stats == b.stats


@pytest.mark.unit
def test_strope_sections():
    assert strope_sections(3584) == [1196, 1194, 1194]
    assert strope_sections(64) == [24, 20, 20]
    for d in (6, 64, 896, 3584):
        s = strope_sections(d)
        assert sum(s) == d and all(v % 2 == 0 and v > 0 for v in s)
    with pytest.raises(ValueError, match="even hidden size"):
        strope_sections(63)


@pytest.mark.unit
def test_st_rope_preserves_norm_and_depends_on_relative_position():
    g = torch.Generator().manual_seed(5)
    n, h, w, d = 3, 3, 4, 24
    x = torch.nn.functional.normalize(torch.randn(n, h * w, d, generator=g), dim=-1)
    t = torch.tensor([0.0, 1.5, 7.0])
    y = st_rope(x, t, (h, w), strope_sections(d))
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(n, h * w), rtol=1e-5, atol=1e-5)
    # A time shift leaves every dot product unchanged.
    y_shift = st_rope(x, t + 11.0, (h, w), strope_sections(d))
    gram = y.reshape(-1, d) @ y.reshape(-1, d).T
    torch.testing.assert_close(y_shift.reshape(-1, d) @ y_shift.reshape(-1, d).T, gram, rtol=1e-4, atol=1e-5)
    # Same content everywhere: similarity depends on the (dt, dh, dw) offset only.
    v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0).expand(n, h * w, d)
    yv = st_rope(v, t, (h, w), strope_sections(d)).reshape(n, h, w, d)
    torch.testing.assert_close(
        (yv[0, 0, 0] * yv[1, 1, 2]).sum(), (yv[0, 1, 1] * yv[1, 2, 3]).sum(), rtol=1e-5, atol=1e-6
    )
    assert (yv[0, 0, 0] * yv[2, 0, 0]).sum() < (yv[0, 0, 0] * yv[1, 0, 0]).sum() < 1.0  # decays with time offset


@pytest.mark.unit
def test_dpc_knn_recovers_separated_clusters():
    g = torch.Generator().manual_seed(9)
    centres = torch.eye(16)[:4] * 10
    labels = torch.arange(40) % 4
    x = (centres[labels] + 0.1 * torch.randn(40, 16, generator=g))[None]
    got = dpc_knn(x, 4, 7, generator=torch.Generator().manual_seed(0))[0]
    assert sorted(labels[got].tolist()) == [0, 1, 2, 3]


@pytest.mark.unit
@pytest.mark.parametrize("max_block", [97, 1000, 12_345])
def test_blocked_dpc_knn_and_assignment_equal_the_single_matrix(max_block):
    from tango.methods.dpc import assign_nearest

    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(2, 300, 24, generator=g), dim=-1)  # B*M*M = 180k > max_block
    full = dpc_knn(x, 17, 7, generator=torch.Generator().manual_seed(1))
    blocked = dpc_knn(x, 17, 7, generator=torch.Generator().manual_seed(1), max_block=max_block)
    assert torch.equal(full, blocked)
    centres = x[:, :40]
    assert torch.equal(assign_nearest(x, centres), assign_nearest(x, centres, max_block=max_block))


@pytest.mark.unit
def test_no_distance_block_grows_with_the_square_of_the_video(monkeypatch):
    # The worst case: one segment (consecutive-frame cosines ~0.74, above the 0.65 segmentation threshold of
    # budget 0.1) with no static position (not all above 0.8), so the context pool is the whole video minus the
    # salient tokens and the reference builds its [M, M] distance matrix. With MAX_BLOCK below M**2 every cdist must
    # stay within the block, and the selection must not change.
    import tango.methods.dpc as dpc

    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 36, 256, generator=g).repeat(24, 1, 1) + 0.6 * torch.randn(24, 36, 256, generator=g)
    attn = torch.rand(24, 36, generator=g)
    ref = Tango().prune(x, budget=0.1, attn=attn, timestamps=_secs(x))
    assert ref.stats["num_segments"] == 1 and ref.stats["static_positions"] == 0
    pool = 24 * 36 - ref.stats["salient_kept"]  # 816 tokens clustered at once
    sizes, cdist = [], torch.cdist

    def spy(a, b, *args, **kw):
        out = cdist(a, b, *args, **kw)
        sizes.append(out.shape)
        return out

    monkeypatch.setattr(dpc, "MAX_BLOCK", 20_000)  # < 816**2 = 666k
    monkeypatch.setattr(torch, "cdist", spy)
    got = Tango().prune(x, budget=0.1, attn=attn, timestamps=_secs(x))
    assert max(s.numel() for s in sizes) <= 20_000
    assert any(s[-1] == pool and s[-2] < pool for s in sizes)  # the segment-wide pool went through the blocks
    assert torch.equal(got.indices, ref.indices) and torch.equal(got.tokens, ref.tokens)


@pytest.mark.unit
def test_sinks_are_masked_without_touching_the_input():
    v = make_video(4)
    attn = v["attn"].clone()
    attn[:, 10] = 100.0  # a planted sink dominates the saliency
    sel_plain = Tango(context_ratio=0.0).prune(v["x"], budget=0.1, attn=attn, timestamps=_secs(v["x"]))
    sel_sink = Tango(context_ratio=0.0, sink_indices=[10]).prune(v["x"], budget=0.1, attn=attn,
                                                                 timestamps=_secs(v["x"]))
    l = v["x"].shape[1]
    assert (sel_plain.indices % l == 10).any() and not (sel_sink.indices % l == 10).any()
    assert attn[0, 10] == 100.0
    with pytest.raises(ValueError, match="sink_indices"):
        Tango(sink_indices=[l]).prune(v["x"], budget=0.1, attn=attn, timestamps=_secs(v["x"]))


@pytest.mark.unit
def test_ablation_switches():
    v = make_video(5)
    kw = dict(budget=0.2, attn=v["attn"], timestamps=v["timestamps"])
    ref = Tango().prune(v["x"], **kw)
    for m in (Tango(use_st_rope=False), Tango(salient_mode="topk"), Tango(merge_context=False)):
        assert m.prune(v["x"], **kw).stats["tokens_out"] == ref.stats["tokens_out"]
    # Single-frame segments only (threshold 1: nothing is ever static). Without merging, kept rows are input rows.
    single = make_video(5, n=4, scenes=(1, 1, 1, 1))
    sel = Tango(merge_context=False, segment_threshold=1.0).prune(single["x"], budget=0.2, attn=single["attn"],
                                                                  timestamps=_secs(single["x"]))
    assert sel.stats["num_segments"] == 4
    torch.testing.assert_close(sel.tokens, single["x"].reshape(-1, single["x"].shape[-1])[sel.indices])
    # Plain top-k keeps the highest-saliency tokens of each frame.
    sel = Tango(salient_mode="topk", context_ratio=0.0, segment_threshold=1.0).prune(
        single["x"], budget=0.2, attn=single["attn"], timestamps=_secs(single["x"])
    )
    k = math.ceil(49 * 0.2)
    expect = (single["attn"].topk(k, dim=1).indices + torch.arange(4)[:, None] * 49).flatten().sort().values
    assert torch.equal(sel.indices, expect)


@pytest.mark.unit
def test_llava_video_inner_stage_budget():
    m = Tango(inner_llm=True)
    assert m.stage == "both" and Tango().stage == "pre_llm" and Tango.needs_attention
    assert m.pre_llm_budget(0.1) == 0.121739 and m.pre_llm_budget(0.15) == 0.182609
    assert m.pre_llm_budget(0.2) == 0.243478 and pre_llm_ratio(0.9, 18, 0.5, 28) == 1.0
    assert m.tokens_layer_avg(100) == pytest.approx((18 * 100 + 10 * 50) / 28)
    v = make_video(6)
    sel = m.prune(v["x"], budget=0.1, attn=v["attn"], timestamps=_secs(v["x"]))
    assert sel.stats["budget_pre_llm"] == 0.121739


@pytest.mark.unit
@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(segment_type="dp"), "segment_type"),
        (dict(segment_threshold=1.5), "segment_threshold"),
        (dict(static_threshold=-2.0), "static_threshold"),
        (dict(context_ratio=1.2), "context_ratio"),
        (dict(alpha=0.5), "alpha"),
        (dict(beta=-0.1), "beta"),
        (dict(num_neighbors=0), "num_neighbors"),
        (dict(base_time=0.0), "base_time"),
        (dict(base_space=-1.0), "base_space"),
        (dict(strope_sections=[3, 3, 2]), "strope_sections"),
        (dict(salient_mode="random"), "salient_mode"),
        (dict(sink_indices=[-1]), "sink_indices"),
        (dict(inner_layer=28), "inner_layer"),
        (dict(inner_keep=0.0), "inner_keep"),
        (dict(max_window=0), "max_window"),
        (dict(dpc_noise=-1.0), "dpc_noise"),
    ],
)
def test_bad_hyperparameters_raise(kw, word):
    with pytest.raises(ValueError, match=word):
        Tango(**kw)


@pytest.mark.unit
def test_bad_inputs_raise():
    v = make_video(1)
    with pytest.raises(ValueError, match="attn"):
        Tango().prune(v["x"], budget=0.1, timestamps=_secs(v["x"]))
    with pytest.raises(ValueError, match="budget"):
        Tango().prune(v["x"], budget=0.0, attn=v["attn"], timestamps=_secs(v["x"]))
    with pytest.raises(ValueError, match="strope_sections"):
        Tango(strope_sections=[16, 16, 14]).prune(v["x"], budget=0.1, attn=v["attn"], timestamps=_secs(v["x"]))
    with pytest.raises(ValueError, match=r"Tango needs timestamps \[N="):  # no silent 1 fps
        Tango().prune(v["x"], budget=0.1, attn=v["attn"])
    with pytest.raises(ValueError, match="segment_type='fastvid' needs metric"):  # no silent per-frame mean
        Tango(segment_type="fastvid").segments(v["x"], 0.1)
    assert METHODS["tango"] is Tango


@pytest.mark.config
@pytest.mark.parametrize(
    "model, sinks, inner",
    [
        ("llava_ov", [28, 27, 41, 169, 11, 12], False),
        ("llava_video", [26, 157, 11], True),
        ("qwen2_5_vl", [], False),
        ("tiny_llava_ov", [], False),
        ("tiny_qwen2_5_vl", [], False),
    ],
)
def test_configs_compose_per_model(model, sinks, inner):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import tango.config  # noqa: F401  (registers the Hydra schemas)

    config_dir = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="config", overrides=[f"model={model}", "method=tango"])
    method = OmegaConf.to_object(cfg.method)
    assert isinstance(method, Tango) and method.sink_indices == sinks and method.inner_llm is inner
    assert method == Tango(sink_indices=sinks, inner_llm=inner)  # every other field keeps the dataclass default


@pytest.mark.unit
def test_fastvid_segmenter_uses_the_global_metric():
    v = make_video(3, n=6, scenes=(3, 3))
    m = Tango(segment_type="fastvid", fastvid_c=1, segment_threshold=0.5)  # no forced cuts, threshold cuts only
    same = torch.ones(6, 8)
    assert m.segments(v["x"], 0.2, metric=same) == [6]
    assert m.segments(v["x"], 0.2, metric=same[:, None, :].expand(6, 4, 8)) == [6]  # [N, L, Dm] is averaged
    alternating = torch.stack([torch.eye(8)[i % 2] for i in range(6)])
    assert m.segments(v["x"], 0.2, metric=alternating) == [1] * 6
    sel = m.prune(v["x"], budget=0.2, attn=v["attn"], metric=same, timestamps=_secs(v["x"]))
    assert sel.stats["num_segments"] == 1


@pytest.mark.unit
def test_edge_cases_single_frame_tiny_budget_bf16():
    v = make_video(8, n=1, scenes=(1,))
    sel = Tango().prune(v["x"], budget=0.01, attn=v["attn"], timestamps=_secs(v["x"]))  # ceil(49 * 0.01) = 1 token: context only
    assert sel.stats["tokens_out"] == 1 and sel.stats["context_kept"] == 1
    v = make_video(9)
    sel = Tango().prune(v["x"].bfloat16(), budget=0.2, attn=v["attn"], timestamps=v["timestamps"])
    assert sel.tokens.dtype == torch.bfloat16 and sel.tokens.shape[0] == sel.stats["tokens_out"]


@pytest.mark.unit
@pytest.mark.parametrize("use_st_rope", [True, False])
def test_identical_tokens_give_unique_indices(use_st_rope):
    # Identical clustering features (all-zero tokens; or a flat frame without ST-RoPE) make empty DPC-KNN clusters
    # whose centre is another cluster's pick; kept indices must stay unique and the count must follow the rule.
    x = torch.zeros(3, 49, 16)
    x[1] = torch.randn(16)  # a flat frame: one feature at every position
    attn = torch.rand(3, 49, generator=torch.Generator().manual_seed(0))
    sel = Tango(use_st_rope=use_st_rope, segment_threshold=1.0).prune(x, budget=0.3, attn=attn,
                                                                      timestamps=_secs(x))
    assert sel.indices.unique().numel() == sel.indices.numel() == 3 * math.ceil(49 * 0.3)


@pytest.mark.unit
def test_repeated_salient_picks_are_replaced_by_the_best_free_candidates():
    from tango.methods.tango_ops import _dedupe

    best = torch.tensor([[0, 2, 0, 5], [1, 1, 1, 3], [3, 2, 1, 0]])
    assert _dedupe(best, 6).tolist() == [[0, 2, 1, 5], [1, 0, 2, 3], [3, 2, 1, 0]]


@pytest.mark.unit
def test_merge_context_weights_and_write_back_order():
    from tango.methods.tango_ops import merge_context

    g = torch.Generator().manual_seed(13)
    x = torch.randn(1, 24, 8, generator=g)
    xr = torch.nn.functional.normalize(torch.randn(1, 24, 6, generator=g), dim=-1)
    kw = {"k_neighbors": 7, "beta": 0.6, "generator": None}
    centres = dpc_knn(xr, 5, 7, generator=torch.Generator().manual_seed(0))[0]  # score order
    anchors_fixed, feats_fixed = merge_context(
        x, xr, 5, fix_order=True, **{**kw, "generator": torch.Generator().manual_seed(0)}
    )
    anchors_up, feats_up = merge_context(
        x, xr, 5, fix_order=False, **{**kw, "generator": torch.Generator().manual_seed(0)}
    )
    asc = centres.sort().values
    assert anchors_fixed[0].tolist() == asc.tolist() and anchors_up[0].tolist() == centres.tolist()
    # Corrected: anchor z = max(1/n, beta) * x_z + (1 - max(1/n, beta)) * mean of its cluster (anchor included).
    owner = torch.cdist(xr[0], xr[0, asc]).argmin(dim=1)
    for j, z in enumerate(asc.tolist()):
        members = x[0, owner == j]
        w = max(1.0 / members.shape[0], 0.6)
        torch.testing.assert_close(feats_fixed[0, j], w * x[0, z] + (1 - w) * members.mean(0), rtol=1e-5, atol=1e-6)
    # Upstream: the same merged rows, written onto the anchors in score order.
    torch.testing.assert_close(feats_up, feats_fixed)
    assert not torch.equal(anchors_up, anchors_fixed)


@pytest.mark.unit
@pytest.mark.parametrize("b,m,p,d", [(3, 40, 31, 70), (1, 300, 257, 3584), (4, 30, 20, 16), (2, 26, 26, 8)])
def test_shared_distances_are_torch_cdist_bit_for_bit(b, m, p, d):
    """The pool distances (built in place) and the assignment read from their columns are exactly what torch.cdist
    gives on the gathered pool, as upstream computes them (a torch release that changes cdist's kernel fails here)."""
    from tango.methods.dpc import assign_nearest, columns_argmin, gathered_cdist

    g = torch.Generator().manual_seed(p)
    x = F.normalize(torch.randn(b, m, d, generator=g), dim=-1)
    rows = torch.stack([torch.randperm(m, generator=g)[:p].sort().values for _ in range(b)])
    pool = x.gather(1, rows[..., None].expand(-1, -1, d))
    dist = gathered_cdist(x, rows)
    assert torch.equal(dist, torch.cdist(pool, pool))
    cols = torch.stack([torch.randperm(p, generator=g)[:7] for _ in range(b)])
    centres = pool.gather(1, cols[..., None].expand(-1, -1, d))
    assert torch.equal(columns_argmin(dist, cols), assign_nearest(pool, centres))


@pytest.mark.unit
def test_st_rope_in_place_gives_the_same_values():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(5, 12, 64, generator=g), dim=-1)
    t = torch.tensor([0.0, 0.5, 3.0, 7.5, 100.0])
    ref = st_rope(x, t, (3, 4), strope_sections(64))
    y = x.clone()
    assert st_rope(y, t, (3, 4), strope_sections(64), inplace=True) is y
    assert torch.equal(y, ref)
    with pytest.raises(ValueError, match="contiguous float32"):
        st_rope(x.double(), t, (3, 4), strope_sections(64), inplace=True)
