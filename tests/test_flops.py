"""Analytical FLOPs against torch's FlopCounterMode on the tiny eager model (same counting conventions)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tango.flops import llava_ov_prefill_flops, llm_prefill_flops

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def eager_model(tiny_llava_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()


def counted(fn) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("frames", [1, 4])
def test_vision_and_projector_match_the_counter(eager_model, frames):
    pv = torch.randn(1, frames, 3, 112, 112)
    got = counted(lambda: eager_model.get_video_features(pixel_values_videos=pv))
    f = llava_ov_prefill_flops(eager_model.config, frames, 1, with_head=True)  # the tiny tower runs its head
    assert got == f["flops_vision"] + f["flops_projector"]


@pytest.mark.parametrize("n", [7, 100])
def test_llm_prefill_matches_the_counter(eager_model, n):
    emb = torch.randn(1, n, eager_model.config.text_config.hidden_size)
    got = counted(lambda: eager_model(inputs_embeds=emb, logits_to_keep=1))
    assert got == llm_prefill_flops(eager_model.config.text_config, n)


def test_per_layer_counts(eager_model):
    t = eager_model.config.text_config
    n = t.num_hidden_layers
    assert llm_prefill_flops(t, [50] * n) == llm_prefill_flops(t, 50)
    assert llm_prefill_flops(t, [50] + [10] * (n - 1)) < llm_prefill_flops(t, 50)
    with pytest.raises(ValueError, match=f"{n}-layer"):
        llm_prefill_flops(t, [50] * (n + 1))


@pytest.mark.unit
def test_paper_convention_is_fastvs_formula_in_multiply_adds():
    from tango.flops import llm_prefill_macs_paper

    cfg = {"num_hidden_layers": 2, "hidden_size": 4, "intermediate_size": 8}
    per_layer = lambda n: 4 * n * 16 + 2 * n * n * 4 + 2 * n * 4 * 8  # noqa: E731
    assert llm_prefill_macs_paper(cfg, 3) == 2 * per_layer(3)
    assert llm_prefill_macs_paper(cfg, [5, 2]) == per_layer(5) + per_layer(2)
    with pytest.raises(ValueError, match="2-layer decoder"):
        llm_prefill_macs_paper(cfg, [1, 2, 3])


@pytest.mark.unit
@pytest.mark.parametrize("method,budget,published", [("none", 1.0, 40.8), ("visionzip", 0.1, 3.4)])
def test_full_size_llava_ov_matches_holitoms_published_flops(method, budget, published):
    """HoliTom's figure (../shared/references/holitom_llava_ov_7b.csv): 40.8 T for vanilla LLaVA-OV-7B at 32 frames,
    3.4 T at 10 %, in FastV's convention. The script's last line is the number; within 5 %."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "flops.py"
    out = subprocess.run([sys.executable, str(script), "--model", "llava_ov", "--frames", "32", "--method", method,
                          "--budget", str(budget)], capture_output=True, text=True, check=True, timeout=120).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("llm_prefill_paper_T=") and "exact (FLOPs" in out
    assert float(last.split("=")[1]) == pytest.approx(published, rel=0.05)
