"""Kept counts at the retention ratios published tables use (25/20/15/10 %) on LLaVA-OV-7B's 32 x 196 tokens: each
method's count equals its authors' scripts (the rule it ran is recorded)."""

from __future__ import annotations

import pytest
import torch

from tango.methods.holitom import HoliTom
from tango.methods.visionzip import VisionZip

pytestmark = pytest.mark.unit
N, L, D = 32, 196, 64  # random 64-d tokens: no cosine near 0.65, so no HoliTom window is static
RATIOS = (0.10, 0.15, 0.20, 0.25)


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, L, D, generator=g), torch.rand(N, L, generator=g)


@pytest.mark.parametrize("ratio,per_frame", zip(RATIOS, (20, 30, 40, 50)))
def test_visionzip_uses_the_scripts_spatial_tokens(video, ratio, per_frame):
    """HoliTom's scripts/eval_ov-7b_visionzip.sh: SPATIAL_TOKENS 20/30/40/50, not round(196 r) = 20/29/39/49."""
    x, attn = video
    sel = VisionZip().prune(x, budget=ratio, attn=attn)
    assert (sel.stats["tokens_out"], sel.stats["budget_rule"]) == (N * per_frame, "scripts")
    assert sel.tokens.shape[0] == N * per_frame
    plain = VisionZip(budget_rule="round").prune(x, budget=ratio, attn=attn)
    assert (plain.stats["tokens_per_frame"], plain.stats["budget_rule"]) == (round(L * ratio), "round")


def test_visionzip_scripts_rule_records_where_it_had_no_value(video):
    x, attn = video
    assert VisionZip().prune(x, budget=0.3, attn=attn).stats["budget_rule"] == "round"  # never run by the scripts
    assert VisionZip().prune(x[:, :16], budget=0.25, attn=attn[:, :16]).stats["budget_rule"] == "round"  # L != 196
    with pytest.raises(ValueError, match="budget_rule='nearest'"):
        VisionZip(budget_rule="nearest")


@pytest.mark.parametrize("ratio,per_frame", zip(RATIOS, (20, 30, 40, 49)))
def test_holitom_keeps_ceil_per_frame(video, ratio, per_frame):
    """HoliTom's RETAIN_RATIO: ceil(196 r) per frame where no window is static (r' = r): 20/30/40/49."""
    x, attn = video
    sel = HoliTom().prune(x, budget=ratio, attn=attn)
    assert sel.stats["multi_frame_windows"] == 0 and sel.stats["ratio_rescaled"] == ratio
    assert sel.stats["tokens_out"] == N * per_frame
