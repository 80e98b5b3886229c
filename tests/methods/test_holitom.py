"""HoliTom (outer stage): parity with the authors' functions on planted videos, and properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_tango import make_video

from tango.methods import METHODS
from tango.methods.holitom import HoliTom

pytestmark = pytest.mark.unit
FIX = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "holitom" / "reference.json").read_text())


def planted(video: dict) -> dict:
    """``make_video(**video)``, with frames ``repeat[0]..repeat[1]`` replaced by exact copies of the first (a
    duplicated-frame stretch: a fully static window)."""
    spec = dict(video)
    repeat = spec.pop("repeat", None)
    v = make_video(**spec)
    if repeat:
        a, b = repeat
        v["x"][a:b + 1] = v["x"][a]
    return v


@pytest.mark.parametrize("case", FIX["cases"], ids=[c["name"] for c in FIX["cases"]])
def test_parity_with_upstream(case):
    video = planted(case["video"])
    sel = HoliTom(tau=case["tau"], seed=case["seed"]).prune(video["x"], budget=case["budget"], attn=video["attn"])
    assert sel.indices.tolist() == case["indices"]  # same tokens, same LLM order
    torch.testing.assert_close(sel.tokens, torch.tensor(case["tokens"]), rtol=1e-5, atol=1e-5)
    sizes = [e - s + 1 for s, e in case["windows"]]
    assert sel.stats["windows"] == len(sizes) and sel.stats["multi_frame_windows"] == sum(w > 1 for w in sizes)
    assert sel.stats["total_reduced"] == case["total_reduced"]
    assert sel.stats["ratio_rescaled"] == case["ratio"]


def test_fixture_covers_the_cases_that_matter():
    """Static windows, a capped ratio, noise-decided centres (c <= 2 differs between seeds), T = 0.65."""
    by = {c["name"]: c for c in FIX["cases"]}
    assert by["ratio_capped_b050"]["ratio"] == 1
    assert by["few_static_centres_seed0"]["indices"] != by["few_static_centres_seed1"]["indices"]
    assert any(c["tau"] == 0.65 for c in FIX["cases"])
    assert all(any(e > s for s, e in c["windows"]) for c in FIX["cases"])
    repeated = by["repeated_frames_b020"]
    (window,) = [w for w in repeated["windows"] if w[0] <= repeated["video"]["repeat"][0] <= w[1]]
    assert window[1] - window[0] >= 3 and repeated["ratio"] < 1


def test_budget_one_is_identity_and_tau_follows_the_scripts():
    v = make_video(seed=0)
    sel = HoliTom().prune(v["x"], budget=1.0, attn=v["attn"])
    assert torch.equal(sel.tokens, v["x"].flatten(0, 1))
    assert HoliTom().threshold(0.1) == 0.65 and HoliTom().threshold(0.15) == 0.8 and HoliTom(tau=0.7).threshold(0.1) == 0.7
    assert HoliTom().prune(v["x"], budget=0.1, attn=v["attn"]).stats["tau"] == 0.65


@pytest.mark.parametrize("budget", [0.1, 0.15, 0.2, 0.25])
def test_count_follows_the_ceil_and_round_rule(budget):
    """Kept = sum over frames of ceil(L_dyn r') + sum over windows of round(L_s r') (spec §1.6): at or a little above
    budget * N * L while r' < 1, below it once r' is capped at 1 (static averaging alone removes enough)."""
    n, l = 16, 49
    for video in ({"seed": 3, "n": n, "scenes": (6, 6, 4), "static_rows": 4},
                  {"seed": 5, "n": n, "scenes": (6, 6, 4), "static_rows": 1, "drift": 3.0}):
        v = planted(video)
        sel = HoliTom().prune(v["x"], budget=budget, attn=v["attn"])
        r, kept = sel.stats["ratio_rescaled"], sel.stats["tokens_out"]
        assert sel.indices.unique().numel() == sel.indices.numel() == kept == sel.tokens.shape[0]
        assert r == min(budget / ((n * l - sel.stats["total_reduced"]) / (n * l)), 1)
        if r < 1:
            assert budget * n * l - sel.stats["windows"] / 2 <= kept <= budget * n * l + n + sel.stats["windows"]
        else:
            assert kept <= budget * n * l


def test_needs_attention_from_the_last_layer_and_names_bad_input():
    assert METHODS["holitom"] is HoliTom
    assert HoliTom.needs_attention and HoliTom.attention_source == "last_layer"
    v = make_video(seed=0)
    with pytest.raises(ValueError, match="attention received"):
        HoliTom().prune(v["x"], budget=0.1)
    with pytest.raises(ValueError, match=r"expected \[N, L\]"):
        HoliTom().prune(v["x"], budget=0.1, attn=v["attn"][:, :3])
    with pytest.raises(ValueError, match="beta=1.5"):
        HoliTom(beta=1.5)


def test_dynamic_tokens_are_copies_and_static_tokens_sit_first_in_their_window():
    v = planted({"seed": 1})
    sel = HoliTom().prune(v["x"], budget=0.25, attn=v["attn"])
    flat = v["x"].flatten(0, 1)
    copies = (sel.tokens == flat[sel.indices]).all(dim=1)
    n_static = sel.stats["static_tokens"]
    assert n_static > 0 and int((~copies).sum()) == n_static  # merged static tokens are the only non-copies
    # a static token (placed at its window's first frame) comes after every dynamic token of earlier frames and
    # before every dynamic token of its own frame on
    frame = sel.indices // v["x"].shape[1]
    for i in (~copies).nonzero().flatten().tolist():
        assert bool((frame[:i][copies[:i]] < frame[i]).all()) and bool((frame[i:][copies[i:]] >= frame[i]).all())


def test_threshold_cosine_decides_like_upstreams_exact_call():
    """The fast cosine plus exact recomputation near tau gives upstream's ``> tau`` on every entry, including
    entries planted within float32 rounding of tau."""
    import torch.nn.functional as F

    from tango.methods.holitom import threshold_cosine

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 49, 256, generator=g)
    x[1:] = 0.8 * x[:-1] + 0.6 * torch.randn(11, 49, 256, generator=g)  # cosines around 0.8
    xn = F.normalize(x, p=2, dim=-1)
    exact = F.cosine_similarity(xn[:-1], xn[1:], dim=-1)
    for tau in (0.65, 0.8, float(exact[3, 7]), float(exact[5, 2]) + 1e-8):
        got = threshold_cosine(x, tau)
        assert torch.equal(got > tau, exact > tau), tau
        near = (exact - tau).abs() < 1e-4
        assert torch.equal(got[near], exact[near])


def inner_inputs(seed: int, seq: int, d: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``hidden [1, seq, d]`` (clustered, so merges have several members) and a last-token attention row
    ``[heads, seq]`` (rows sum to 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, d, generator=g) * 2
    hidden = centres[torch.randint(0, 5, (seq,), generator=g)] + 0.5 * torch.randn(seq, d, generator=g)
    row = torch.rand(heads, seq, generator=g).softmax(-1)
    return hidden[None], row


INNER = Path(__file__).resolve().parents[1] / "fixtures" / "holitom" / "inner.json"


@pytest.mark.parametrize("case", json.loads(INNER.read_text())["cases"] if INNER.exists() else [],
                         ids=lambda c: c["name"])
def test_inner_merge_parity_with_upstream(case):
    from tango.methods.holitom import holitom_inner_merge

    hidden, row = inner_inputs(case["seed"], case["seq"], case["d"], case["heads"])
    s, n = case["start"], case["length"]
    keep, merged = holitom_inner_merge(hidden[:, s:s + n], row.mean(0)[s:s + n], case["r"])
    assert keep.tolist() == case["keep"]
    torch.testing.assert_close(merged[0], torch.tensor(case["tokens"]), rtol=1e-5, atol=1e-5)
