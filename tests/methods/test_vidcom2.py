"""VidCom²: parity with the authors' code and with vLLM's port on planted inputs; counts and properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods.vidcom2 import VidCom2, frame_budgets, vidcom2_scores

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vidcom2" / "reference.json"

# (id, seed, N, L, D, budget, structure)
CASES = [
    ("random", 0, 8, 16, 32, 0.25, "random"),
    ("offset_frame", 1, 8, 16, 32, 0.25, "offset"),
    ("offset_frame_high_budget", 2, 6, 25, 24, 0.6, "offset"),
    ("ov_sized_10pct", 3, 6, 196, 64, 0.1, "random"),
    ("repeated_frames", 4, 10, 16, 32, 0.2, "repeated"),
    ("low_budget_floor", 5, 12, 9, 16, 0.05, "random"),
]


def vidcom2_video(seed: int, n: int, l: int, d: int, structure: str) -> torch.Tensor:
    """``offset``: frame 3 shifted by one random vector (which also raises those channels' variance, so the
    low-variance selection partly hides it); ``repeated``: frames 2, 5, 6 copy their predecessors. Features get a
    per-channel scale so that channel variances differ."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 2.0, d)
    x = torch.randn(n, l, d, generator=g) * scale
    if structure == "offset":
        x[3] = x[3] + 4.0 * torch.randn(1, d, generator=g)
    elif structure == "repeated":
        for f in (2, 5, 6):
            x[f] = x[f - 1]
    return x


@pytest.mark.parametrize("rule", ["authors", "vllm"])
def test_matches_the_reference_implementations(rule):
    """Kept indices equal the authors' ``vidcom2_compression`` (count_rule=authors) and vLLM's
    ``compute_retention_mask`` (count_rule=vllm), run unmodified by tests/fixtures/vidcom2/make_reference.py."""
    fixture = json.loads(FIXTURE.read_text())[rule]
    assert [c["id"] for c in fixture["cases"]] == [c[0] for c in CASES]
    for (name, seed, n, l, d, budget, structure), ref in zip(CASES, fixture["cases"]):
        x = vidcom2_video(seed, n, l, d, structure)
        sel = VidCom2(count_rule=rule).prune(x, budget=budget)
        assert sel.indices.tolist() == ref["indices"], (rule, name)
        assert torch.equal(sel.tokens, x.reshape(n * l, d)[sel.indices])  # rows are copies


def test_vllm_rule_hits_its_exact_count_and_authors_rule_does_not_need_to():
    x = vidcom2_video(1, 8, 16, 32, "offset")
    for budget in (0.1, 0.25, 0.5):
        q = 1.0 - budget
        sel = VidCom2(count_rule="vllm").prune(x, budget=budget)
        assert sel.stats["tokens_out"] == max(8, min(int(128 * (1.0 - q)), 128)) and sel.stats["pruning_rate"] == q
        v, _ = vidcom2_scores(x, 0.5)
        before = int(frame_budgets(v, 1.0 - q, 0.01, cap=True).sum())  # per-frame counts, before the reconcile
        assert sel.stats["reconciled"] == sel.stats["tokens_out"] - before
    # the frame farthest from the video mean (largest -mean v) gets the largest budget, the others r (1 - 1/N)-ish
    v, _ = vidcom2_scores(x, 0.5)
    sel = VidCom2().prune(x, budget=0.25)
    per_frame = torch.bincount(sel.indices // 16, minlength=8)
    assert int(per_frame.argmax()) == int((-v.mean(dim=-1)).argmax()) and per_frame.max() > per_frame.min()
    assert sel.stats["frame_budget_max"] == int(per_frame.max())


def test_identity_and_bad_values():
    x = vidcom2_video(0, 4, 9, 8, "random")
    assert torch.equal(VidCom2().prune(x, budget=1.0).tokens, x.reshape(-1, 8))
    with pytest.raises(ValueError, match=r"count_rule='exact'.*authors.*vllm"):
        VidCom2(count_rule="exact")
