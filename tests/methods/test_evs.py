"""EVS (vLLM's ``compute_retention_mask``): parity with vLLM's function on planted inputs, counts, properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods.evs import EVS, evs_count

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "evs" / "reference.json"

# (id, seed, N, L, D, q, structure, dtype)
CASES = [
    ("random", 0, 8, 16, 32, 0.75, "random", "float32"),
    ("repeated_frames", 1, 10, 16, 32, 0.5, "repeated", "float32"),
    ("static_region_and_cut", 2, 12, 25, 24, 0.9, "static_cut", "float32"),
    ("first_frame_only", 3, 6, 196, 16, 0.85, "random", "float32"),
    ("bf16_repeated", 4, 8, 16, 64, 0.7, "repeated", "bfloat16"),
]


def evs_video(seed: int, n: int, l: int, d: int, structure: str, dtype: str) -> torch.Tensor:
    """Planted inputs: ``repeated`` duplicates frames 2, 5, 6 from their predecessors (exact ties) and makes frame 8
    a 1e-7 perturbation of frame 7 (near ties); ``static_cut`` keeps the first 40 % of the positions constant and
    starts a new scene halfway."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, l, d, generator=g)
    if structure == "repeated":
        for f in (2, 5, 6):
            x[f] = x[f - 1]
        if n > 8:
            x[8] = x[7] + 1e-7 * torch.randn(l, d, generator=g)
    elif structure == "static_cut":
        static = int(0.4 * l)
        x[:, :static] = x[:1, :static]
        x[n // 2:, static:] = x[n // 2:, static:] + 3 * torch.randn(1, l - static, d, generator=g)
    return x.to(getattr(torch, dtype))


def test_matches_vllm_compute_retention_mask():
    """Kept indices equal vLLM's mask (its function run unmodified by tests/fixtures/evs/make_reference.py)."""
    fixture = json.loads(FIXTURE.read_text())
    assert [c["id"] for c in fixture["cases"]] == [c[0] for c in CASES]
    for (name, seed, n, l, d, q, structure, dtype), ref in zip(CASES, fixture["cases"]):
        x = evs_video(seed, n, l, d, structure, dtype)
        method = EVS()
        budget = 1.0 - q  # the harness's budget; the method maps it back to vLLM's q
        sel = method.prune(x, budget=budget)
        assert sel.indices.tolist() == ref["indices"], name
        assert sel.stats["tokens_out"] == len(ref["indices"]) == evs_count(l, n, method.pruning_rate(budget))
        assert torch.equal(sel.tokens, x.reshape(n * l, d)[sel.indices])  # copies, no merging


def test_first_frame_whole_count_exact_and_identity():
    x = evs_video(5, 9, 36, 16, "random", "float32")
    for budget in (0.05, 0.1, 0.3, 0.6):
        sel = EVS().prune(x, budget=budget)
        assert sel.indices[:36].tolist() == list(range(36))  # frame 0 first and whole
        assert sel.stats["tokens_out"] == max(36, int(9 * 36 * (1 - (1.0 - budget))))
        assert torch.equal(sel.indices, sel.indices.sort().values)
    assert EVS().prune(x, budget=0.05).stats["first_frame_only"] == 1  # 9 * 0.05 < 1: frame 0 alone
    full = EVS().prune(x, budget=1.0)
    assert torch.equal(full.tokens, x.reshape(-1, 16)) and full.stats["pruning_rate"] == 0.0


def test_a_repeated_frame_loses_everything_first():
    x = evs_video(6, 6, 16, 8, "random", "float32")
    x[3] = x[2]
    kept = EVS().prune(x, budget=0.5).indices  # 48 of 96: the duplicate frame ranks last
    assert not ((kept >= 48) & (kept < 64)).any()
