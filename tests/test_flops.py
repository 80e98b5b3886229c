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
