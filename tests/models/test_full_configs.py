"""The real 7B architectures (``tango.models.full_configs``) on the meta device: no weights, no download.

Token counts per frame, parameter counts, the offline processors' visual spans, and the analytical prefill FLOPs
(``tango.flops``) checked against ``torch.utils.flop_counter`` on the full-size meta model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tango.flops import (
    llava_ov_prefill_flops,
    llava_projector_flops,
    llm_prefill_flops,
    siglip_flops,
)
from tango.models import full_configs as fc
from tango.models.base import ADAPTERS


@pytest.fixture(scope="module")
def ov_meta():
    return fc.meta_model("llava_ov", offline_ids=True)


@pytest.mark.unit
@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_dimensions_and_parameter_count(family):
    cfg = fc.full_config(family)
    t = cfg.text_config
    if family == "qwen3_vl":  # Qwen3-VL-8B [Q3VL]: 8.77B parameters (its model card)
        v = cfg.vision_config
        assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
                t.head_dim, t.vocab_size) == (4096, 12288, 36, 32, 8, 128, 151936)
        assert t.rope_parameters["rope_theta"] == 5e6 and t.rope_parameters["mrope_section"] == [24, 20, 20]
        assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.patch_size, v.out_hidden_size,
                v.deepstack_visual_indexes) == (27, 1152, 4304, 16, 16, 4096, [8, 16, 24])
        assert round(fc.param_count(fc.meta_model(family)) / 1e9, 2) == 8.77
        return
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
            t.num_key_value_heads, t.vocab_size) == (3584, 18944, 28, 28, 4, 152064)
    assert t.rope_parameters["rope_theta"] == 1e6
    n = fc.param_count(fc.meta_model(family))
    assert 7.5e9 < n < 8.5e9, n  # ~7.6B LLM + 0.4B SigLIP (+ head) / 0.67B Qwen ViT + projector / merger
    if family == "qwen2_5_vl":
        v = cfg.vision_config
        assert (v.depth, v.hidden_size, v.out_hidden_size, v.intermediate_size, v.num_heads, v.window_size,
                v.fullatt_block_indexes, v.patch_size, v.spatial_merge_size, v.temporal_patch_size) == (
            32, 1280, 3584, 3420, 16, 112, [7, 15, 23, 31], 14, 2, 2)
        assert t.rope_parameters["mrope_section"] == [16, 24, 24]
    else:
        v = cfg.vision_config
        assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size,
                v.image_size) == (1152, 4304, 26, 16, 14, 384)


@pytest.mark.unit
def test_llava_ov_32_frames_gives_6272_plus_newline(ov_meta):
    assert fc.llava_video_span(ov_meta.config, 32, "llava_ov") == {"visual": 6272, "newlines": 1, "span": 6273}
    with torch.no_grad():  # the real get_video_features on the meta model: shapes only
        video = ov_meta.model.get_video_features(
            pixel_values_videos=torch.empty(1, 32, 3, 384, 384, device="meta")).pooler_output
    assert tuple(video.shape) == (1, 6273, 3584)


@pytest.mark.unit
def test_llava_video_169_per_frame_plus_13_row_newlines(ov_meta):
    from tango.bench import adapter_from_model

    assert fc.llava_video_span(ov_meta.config, 1, "llava_video") == {"visual": 169, "newlines": 13, "span": 182}
    assert fc.llava_video_span(ov_meta.config, 32, "llava_video")["span"] == 32 * (169 + 13)
    adapter = adapter_from_model("llava_video", ov_meta, None, "meta")  # the adapter's own pooling, on meta
    with torch.no_grad():
        x, newline = adapter._encode(torch.empty(1, 4, 3, 384, 384, device="meta"))
    assert tuple(x.shape) == (4, 169, 3584) and tuple(newline.shape) == (1, 3584)
    assert adapter.grid == (13, 13)


@pytest.mark.unit
def test_offline_llava_processor_expands_32_frames_to_6273():
    cfg = fc.full_config("llava_ov", offline_ids=True)
    proc = fc.build_processor("llava_ov")
    frames = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
                                      add_generation_prompt=True)
    out = proc(text=prompt, videos=[frames], return_tensors="pt")
    assert tuple(out["pixel_values_videos"].shape) == (1, 32, 3, 384, 384)
    assert int((out["input_ids"] == cfg.video_token_id).sum()) == 6273


@pytest.mark.unit
@pytest.mark.parametrize("hw, grid, tokens", [((448, 448), (16, 32, 32), 16 * 256),
                                              ((360, 640), (16, 26, 46), 16 * 13 * 23)])
def test_qwen_merged_tokens_for_a_resolution(hw, grid, tokens):
    cfg = fc.full_config("qwen2_5_vl", offline_ids=True)
    assert fc.qwen_video_grid(cfg, 32, *hw) == grid
    assert fc.qwen_video_tokens(cfg, 32, *hw) == tokens
    proc = fc.build_processor("qwen2_5_vl")  # the real video processor's resize agrees
    frames = np.random.default_rng(0).integers(0, 256, (32, *hw, 3), dtype=np.uint8)
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
                                      add_generation_prompt=True)
    out = proc(text=prompt, videos=[frames], return_tensors="pt", videos_kwargs={"do_sample_frames": False})
    assert out["video_grid_thw"].tolist() == [list(grid)]
    assert int((out["input_ids"] == cfg.video_token_id).sum()) == tokens


@pytest.mark.unit
def test_analytical_prefill_flops_match_flop_counter_on_the_7b_meta_model(ov_meta):
    from torch.utils.flop_counter import FlopCounterMode

    cfg, n = ov_meta.config, 6273 + 20
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        h = ov_meta.model.language_model(inputs_embeds=torch.empty(1, n, 3584, device="meta")).last_hidden_state
        ov_meta.lm_head(h[:, -1:])
    assert counter.get_total_flops() == llm_prefill_flops(cfg.text_config, n)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ov_meta.model.get_video_features(pixel_values_videos=torch.empty(1, 32, 3, 384, 384, device="meta"))
    assert counter.get_total_flops() == siglip_flops(cfg.vision_config, 32, with_head=True) + \
        llava_projector_flops(cfg, 32)


@pytest.mark.unit
def test_llava_ov_32_frame_prefill_flops_full_vs_10_percent():
    """LLaVA-OV-7B, 32 frames, 20 text tokens: full 6273-token span vs Tango's 10% (627 tokens + newline)."""
    cfg = fc.full_config("llava_ov")
    text = 20
    full = llava_ov_prefill_flops(cfg, 32, 6273 + text, with_head=True)
    pruned = llava_ov_prefill_flops(cfg, 32, 627 + 1 + text, with_head=True)
    assert full["flops_vision"] == pruned["flops_vision"] and full["flops_projector"] == pruned["flops_projector"]
    t = {k: v / 1e12 for k, v in full.items()}
    p = {k: v / 1e12 for k, v in pruned.items()}
    assert t["flops_vision"] == pytest.approx(20.66, abs=0.01)      # 32 x 729 patches through 26 SigLIP layers + head
    assert t["flops_projector"] == pytest.approx(0.79, abs=0.01)    # mlp2x_gelu on all 23328 patches
    assert t["flops_llm"] == pytest.approx(98.02, abs=0.01)         # 28 layers on 6293 tokens
    assert p["flops_llm"] == pytest.approx(8.63, abs=0.01)          # 28 layers on 648 tokens
    assert p["flops_llm"] / t["flops_llm"] < 0.1                    # attention shrinks quadratically
    total_full, total_pruned = sum(t.values()), sum(p.values())
    assert total_full == pytest.approx(119.48, abs=0.02) and total_pruned == pytest.approx(30.08, abs=0.02)


@pytest.mark.unit
@pytest.mark.parametrize("frames", [16, 32, 64])
@pytest.mark.parametrize("hw", [(448, 448), (360, 640)])
def test_qwen3_vl_token_counts_equal_the_processors(frames, hw):
    """The analytic count (``qwen3_video_grid``, the processor's per-frame cap) equals the offline processor's
    placeholders and grid for the checkpoint's video settings; one ``<t seconds><|vision_start|>...<|vision_end|>``
    block per temporal patch."""
    from tango.models.base import family_spec
    from tango.models.qwen3_vl import Qwen3VL

    cfg = fc.full_config("qwen3_vl", offline_ids=True)
    proc = fc.build_processor("qwen3_vl")
    adapter = Qwen3VL.__new__(Qwen3VL)
    adapter.processor = proc
    frames_arr = np.random.default_rng(0).integers(0, 256, (frames, *hw, 3), dtype=np.uint8)
    from transformers.video_utils import VideoMetadata

    md = VideoMetadata(total_num_frames=frames * 15, fps=30.0, frames_indices=list(range(0, frames * 15, 15)))
    out = proc(text=adapter.prompt("q"), videos=[frames_arr], return_tensors="pt",
               videos_kwargs={"do_sample_frames": False, "cap_pixels_per_frame": True, "video_metadata": [md]})
    assert out["video_grid_thw"].tolist() == [list(fc.qwen3_video_grid(cfg, frames, *hw))]
    visual, layout = family_spec("qwen3_vl").video_tokens(cfg, frames, hw)
    assert int((out["input_ids"] == cfg.video_token_id).sum()) == visual
    assert int((out["input_ids"] == cfg.vision_start_token_id).sum()) * 2 == layout == frames


@pytest.mark.unit
def test_qwen3_vl_analytical_flops_match_flop_counter_on_the_8b_meta_model():
    from tango.models.qwen3_vl import qwen3_vl_vision_flops
    from torch.utils.flop_counter import FlopCounterMode

    model = fc.meta_model("qwen3_vl")
    cfg, n = model.config, 3136 + 16 * 15 + 20
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        h = model.model.language_model(inputs_embeds=torch.empty(1, n, 4096, device="meta")).last_hidden_state
        model.lm_head(h[:, -1:])
    assert counter.get_total_flops() == llm_prefill_flops(cfg.text_config, n)
    # The tower cannot run on meta (its position-grid interpolation indexes on the CPU): the 8B tower's widths with
    # 2 of its 27 blocks, on CPU (FLOPs are linear in depth), against the formula with the same depth.
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    vcfg = type(cfg.vision_config)(**dict(fc.QWEN3_VL_8B_VISION, depth=2, deepstack_visual_indexes=[0, 1]))
    tower = Qwen3VLVisionModel._from_config(vcfg).eval()
    thw = (2, 8, 12)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tower(torch.randn(2 * 8 * 12, 1536), grid_thw=torch.tensor([thw]))
    f = qwen3_vl_vision_flops(vcfg, thw)
    assert counter.get_total_flops() == f["flops_vision"] + f["flops_projector"]
