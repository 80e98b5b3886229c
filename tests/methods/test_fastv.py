"""FastV: parity of the layer-K selection with pkunlp-icler/FastV's HF fork, the budget plan, and errors.

``tests/fixtures/fastv/reference.json`` holds only numbers from running the reference selection block of
``LlamaModel.fastv_forward`` on the attention maps of :func:`make_attention`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tango.methods import METHODS
from tango.methods.fastv import FastV, fastv_keep_fraction, fastv_layer_counts, fastv_num_keep, fastv_select

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fastv" / "reference.json"


def make_attention(seed: int, heads: int, seq: int, image_start: int, image_len: int) -> torch.Tensor:
    """Seeded causal attention maps ``[1, heads, seq, seq]``: each head favours its own few visual tokens, plus a
    shared "sink" at the first visual token, so the head average decides the ranking."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, heads, seq, seq, generator=g)
    favoured = image_start + torch.randint(0, image_len, (heads, 4), generator=g)
    for h in range(heads):
        logits[0, h, :, favoured[h]] += 3.0
    logits[..., image_start] += 2.0
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


def _cases():
    return json.loads(FIXTURE.read_text())["cases"] if FIXTURE.exists() else []


@pytest.mark.unit
def test_fixture_is_present():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["commit"].startswith("d165972") and len(fixture["cases"]) >= 3


@pytest.mark.unit
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_selection_parity(case):
    attn = make_attention(case["seed"], case["heads"], case["seq"], case["image_start"], case["image_len"])
    keep = fastv_num_keep(case["image_len"], 1 - case["fastv_r"])
    assert keep == case["num_keep"]
    visual = torch.arange(case["image_start"], case["image_start"] + case["image_len"])  # the reference's span
    got = fastv_select(attn[0, :, -1, :], visual=visual, num_keep=keep)
    # The reference sorts its keep indices, so the comparison is exact.
    assert got.tolist() == case["keep_indexs"]


@pytest.mark.unit
def test_half_to_even_rounding_and_plan_table():
    assert fastv_num_keep(6273, 0.5) == 3136
    # docs §1.5: K = 2 on 28 layers
    for r, f in [(0.30, 0.246), (0.25, 0.192), (0.20, 0.138), (0.15, 0.085), (0.10, 0.031)]:
        assert fastv_keep_fraction(r, 2, 28) == pytest.approx(f, abs=5e-4)


@pytest.mark.unit
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 1.0])
def test_plan_counts_and_identity_prune(budget):
    x = torch.randn(4, 49, 8)
    m = FastV(layer=2, num_layers=28)
    sel = m.prune(x, budget=budget)
    assert torch.equal(sel.tokens, x.reshape(-1, 8)) and torch.equal(sel.indices, torch.arange(196))
    f = (28 * budget - 2) / 26
    keep = 196 if budget == 1.0 else round(196 * f)
    plan = m.plan(196, budget)
    assert plan["num_keep"] == keep == sel.stats["tokens_kept_after_layer"]
    assert plan["layer_counts"] == [196, 196] + [keep] * 26 == fastv_layer_counts(196, keep, 2, 28)
    assert sel.stats["tokens_layer_avg"] == pytest.approx((2 * 196 + 26 * keep) / 28)
    assert sel.stats["tokens_in"] == sel.stats["tokens_out"] == 196
    assert abs(sel.stats["tokens_layer_avg"] / 196 - budget) < 1 / 196


@pytest.mark.unit
def test_select_properties():
    attn = make_attention(3, 4, 50, 6, 30)
    m = FastV(layer=1, num_layers=2)
    visual = torch.arange(6, 36)
    keep = m.select(attn[0, :, -1], visual=visual, budget=0.75)
    num_keep = round(30 * (2 * 0.75 - 1))
    assert keep.numel() == 50 - 30 + num_keep and keep.unique().numel() == keep.numel()
    assert torch.equal(keep, keep.sort().values) and int(keep.max()) < 50
    assert keep[:6].tolist() == list(range(6)) and keep[-14:].tolist() == list(range(36, 50))
    head_mean = fastv_select(attn[0, :, -1].mean(0), visual=visual, num_keep=num_keep)
    assert torch.equal(keep, head_mean)
    assert torch.equal(keep, m.select(attn[0, :, -1].clone(), visual=visual, budget=0.75))
    # Visual positions need not be contiguous (text between frames): only they are candidates, the rest is kept.
    gappy = torch.cat([torch.arange(6, 16), torch.arange(20, 40)])
    keep = m.select(attn[0, :, -1], visual=gappy, budget=0.75)
    assert set(range(50)) - set(gappy.tolist()) <= set(keep.tolist())
    assert keep.numel() == 50 - 30 + num_keep and torch.equal(keep, keep.sort().values)
    assert METHODS["fastv"] is FastV


@pytest.mark.unit
def test_infeasible_and_bad_values_raise():
    with pytest.raises(ValueError, match=r"budget=0.1 is infeasible .* K=3 of num_layers=28"):
        FastV(layer=3, num_layers=28).prune(torch.zeros(2, 4, 3), budget=0.1)
    with pytest.raises(ValueError, match="layer=0"):
        FastV(layer=0)
    with pytest.raises(ValueError, match="layer=28"):
        FastV(layer=28, num_layers=28)
    with pytest.raises(ValueError, match="num_layers=1"):
        FastV(layer=1, num_layers=1)
    with pytest.raises(ValueError, match="budget=0.0"):
        FastV().prune(torch.zeros(2, 4, 3), budget=0.0)


@pytest.mark.config
@pytest.mark.parametrize(
    "model, method, expected",
    [("tiny_llava_ov", "fastv", {"layer": 1, "num_layers": 12}), ("llava_ov", "fastv", {"layer": 2, "num_layers": 28}),
     ("tiny_qwen2_5_vl", "dycoke", {"kv_layer": 3, "merging_ratio": None}),
     ("llava_video", "visionzip", {"sort_by_position": True, "dominant_ratio": 54 / 64})],
)
def test_model_method_overrides_reach_the_method(model, method, expected):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import tango.config  # noqa: F401  (registers the schemas)

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(version_base="1.3", config_dir=str(configs)):
        cfg = compose("config", overrides=[f"model={model}", f"method={method}"])
    obj = OmegaConf.to_object(cfg.method)
    assert isinstance(obj, METHODS[method])
    assert {k: getattr(obj, k) for k in expected} == expected
