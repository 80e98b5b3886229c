"""VisionZip (HoliTom SigLIP port): parity with the reference function and properties of the budget rule.

The fixture ``tests/fixtures/visionzip/reference.json`` holds only numbers produced by running HoliTom's nested
``visionzip(...)`` on the inputs of :func:`make_inputs` (regenerated from the seed here, never stored).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods import METHODS, build_method
from tango.methods.visionzip import VisionZip, visionzip_frames, visionzip_split

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "visionzip" / "reference.json"


def make_inputs(seed: int, n: int = 3, h: int = 14, w: int = 14, d: int = 8, dm: int = 6):
    """Seeded ``x [n, h*w, d]``, ``attn [n, h*w]``, ``metric [n, h*w, dm]`` with planted structure.

    The metric is clustered by spatial block (4 quadrants + a centre blob), attention has a few planted peaks, and
    frame 2 repeats frame 0 with small noise (a static video).
    """
    g = torch.Generator().manual_seed(seed)
    length = h * w
    x = torch.randn(n, length, d, generator=g)
    if n > 2:
        x[2] = x[0] + 0.05 * torch.randn(length, d, generator=g)
    rows = torch.arange(length) // w
    cols = torch.arange(length) % w
    cluster = (rows >= h // 2).long() * 2 + (cols >= w // 2).long()
    centre = ((rows - h // 2).abs() <= 1) & ((cols - w // 2).abs() <= 1)
    cluster[centre] = 4
    centres = torch.randn(5, dm, generator=g)
    metric = centres[cluster].expand(n, -1, -1) + 0.3 * torch.randn(n, length, dm, generator=g)
    attn = torch.rand(n, length, generator=g)
    peaks = torch.randint(0, length, (n, max(1, length // 20)), generator=g)
    attn.scatter_add_(1, peaks, 5.0 + torch.rand(peaks.shape, generator=g))
    return x, attn / attn.sum(1, keepdim=True), metric


def _reference_cases():
    return json.loads(FIXTURE.read_text())["cases"] if FIXTURE.exists() else []


@pytest.mark.unit
def test_fixture_is_present():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["commit"].startswith("e9b2972") and len(fixture["cases"]) >= 5


@pytest.mark.unit
@pytest.mark.parametrize("case", _reference_cases(), ids=lambda c: c["id"])
def test_parity_with_holitom_port(case):
    x, attn, metric = make_inputs(case["seed"], case["n"], case["h"], case["w"], case["d"], case["dm"])
    method = VisionZip(sort_by_position=case["grid"], budget_rule="round")  # the fixture ran SPATIAL_TOKENS = round(L r)
    sel = method.prune(x, budget=case["budget"], attn=attn, metric=metric)
    s = case["dominant"] + case["contextual"]
    assert sel.stats["tokens_per_frame"] == s
    assert (sel.stats["dominant_per_frame"], sel.stats["contextual_per_frame"]) == (case["dominant"], case["contextual"])
    # Output order is the reference's (dominant ascending, then contextual targets ascending), so compare as lists.
    assert sel.indices.tolist() == case["indices"]
    flat = x.reshape(-1, x.shape[-1])
    out = sel.tokens.reshape(case["n"], s, -1)
    ref_ctx = torch.tensor(case["contextual_tokens"], dtype=torch.float32).reshape(case["n"], -1, x.shape[-1])
    is_ctx = torch.tensor(case["is_contextual"], dtype=torch.bool).reshape(case["n"], s)
    torch.testing.assert_close(out[is_ctx].reshape_as(ref_ctx), ref_ctx, rtol=1e-5, atol=1e-6)
    # Dominant rows are exact copies of the input rows.
    assert torch.equal(out[~is_ctx], flat[sel.indices.reshape(case["n"], s)[~is_ctx]])


@pytest.mark.unit
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.15, 0.25, 0.5, 0.9])
def test_budget_rule_and_indices(budget):
    x, attn, metric = make_inputs(1, n=2)
    sel = VisionZip(budget_rule="round").prune(x, budget=budget, attn=attn, metric=metric)
    s = max(1, round(196 * budget))
    dom, ctx = visionzip_split(s, 54 / 64)
    assert sel.tokens.shape == (2 * s, 8) and sel.indices.shape == (2 * s,)
    assert sel.stats == {"tokens_in": 392, "tokens_out": 2 * s, "tokens_per_frame": s, "dominant_per_frame": dom,
                         "contextual_per_frame": ctx, "metric": "metric", "budget_rule": "round"}
    assert sel.indices.unique().numel() == 2 * s
    assert 0 <= int(sel.indices.min()) and int(sel.indices.max()) < 392
    # Each frame's tokens come from that frame, dominant part = top-attention tokens.
    frame_of = sel.indices.reshape(2, s) // 196
    assert torch.equal(frame_of, torch.arange(2).unsqueeze(1).expand(2, s))
    top = attn.topk(dom, dim=1).indices.sort(dim=1).values
    assert torch.equal(sel.indices.reshape(2, s)[:, :dom] % 196, top)


@pytest.mark.unit
def test_documented_splits():
    assert [visionzip_split(s, 54 / 64) for s in (20, 30, 40, 50)] == [(16, 4), (25, 5), (33, 7), (42, 8)]


@pytest.mark.unit
def test_identity_determinism_and_registry():
    x, attn, metric = make_inputs(2)
    sel = VisionZip().prune(x, budget=1.0, attn=attn, metric=metric)
    assert torch.equal(sel.tokens, x.reshape(-1, 8)) and torch.equal(sel.indices, torch.arange(3 * 196))
    a = VisionZip().prune(x, budget=0.2, attn=attn, metric=metric)
    b = VisionZip().prune(x.clone(), budget=0.2, attn=attn.clone(), metric=metric.clone())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.indices, b.indices)
    assert METHODS["visionzip"] is VisionZip and isinstance(build_method("visionzip"), VisionZip)


@pytest.mark.unit
def test_sort_by_position_and_metric_fallback():
    x, attn, metric = make_inputs(3)
    sel = VisionZip(sort_by_position=True).prune(x, budget=0.25, attn=attn, metric=metric)
    per_frame = sel.indices.reshape(3, -1)
    assert torch.equal(per_frame, per_frame.sort(dim=1).values)
    unsorted = VisionZip().prune(x, budget=0.25, attn=attn, metric=metric)
    assert set(unsorted.indices.tolist()) == set(sel.indices.tolist())
    fallback = VisionZip().prune(x, budget=0.25, attn=attn)
    assert fallback.stats["metric"] == "x" and fallback.tokens.shape == unsorted.tokens.shape


@pytest.mark.unit
def test_tiny_budgets_and_bf16():
    x, attn, metric = make_inputs(4, h=7, w=7)
    one = VisionZip().prune(x, budget=0.01, attn=attn, metric=metric)  # S = 1: one contextual token, no dominant
    assert one.stats["tokens_per_frame"] == 1 and one.tokens.shape == (3, 8)
    only_dom = visionzip_frames(x, attn, metric, dominant=5, contextual=0)
    assert only_dom[0].shape == (3, 5, 8)
    hi = VisionZip().prune(x, budget=0.3, attn=attn, metric=metric)
    # bf16 keys can flip near-tied merge assignments; bf16 features with fp32 keys must agree closely.
    lo = VisionZip().prune(x.bfloat16(), budget=0.3, attn=attn, metric=metric)
    assert torch.equal(hi.indices, lo.indices)
    torch.testing.assert_close(lo.tokens.float(), hi.tokens, rtol=2e-2, atol=2e-2)


@pytest.mark.unit
def test_bad_values_raise():
    with pytest.raises(ValueError, match="dominant_ratio=1.5"):
        VisionZip(dominant_ratio=1.5)
    x, attn, metric = make_inputs(5, n=1)
    with pytest.raises(ValueError, match="budget=0.0"):
        VisionZip().prune(x, budget=0.0, attn=attn)
    with pytest.raises(ValueError, match="needs attn"):
        VisionZip().prune(x, budget=0.5)
    with pytest.raises(ValueError, match="metric must be"):
        VisionZip().prune(x, budget=0.5, attn=attn, metric=metric[:, :10])
