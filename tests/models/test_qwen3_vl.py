"""Tiny Qwen3-VL adapter: timestamped per-patch prompt blocks, DeepStack maps pruned with the kept indices, original
3-D M-RoPE ids, against the model's own ``generate`` and against references built through the model's own
pre-encoded path (``mm_encoder_outputs``)."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tango.flops import llm_prefill_flops
from tango.hooks import add_after_layers
from tango.methods import build_method
from tango.methods.base import PruningMethod, Selection
from tango.models.base import ensure_tiny_checkpoint
from tango.models.qwen3_vl import Qwen3VL, qwen3_vl_vision_flops
from tango.video import Clip

from models.test_qwen2_5_vl import KeepScattered, StepLogits

pytestmark = pytest.mark.tiny


@dataclass
class DropPatch(PruningMethod):
    """Test method: every token except those of temporal patch ``patch`` (that patch is emptied)."""

    name: str = "drop_patch"
    patch: int = 1

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        n, l, d = x.shape
        idx = torch.cat([torch.arange(0, self.patch * l), torch.arange((self.patch + 1) * l, n * l)])
        return Selection(x.reshape(-1, d)[idx], idx, {"tokens_in": n * l, "tokens_out": len(idx)})


@pytest.fixture(scope="module")
def adapter(cache_dir):
    path = ensure_tiny_checkpoint("qwen3_vl", cache_dir / "models" / "tiny_qwen3_vl")
    return Qwen3VL(str(path), device=torch.device("cpu"), dtype="float32")


@pytest.fixture(scope="module")
def clip():
    frames = np.random.RandomState(0).randint(0, 255, (9, 112, 84, 3), dtype=np.uint8)  # odd: the last is repeated
    idx = np.arange(9) * 5
    return Clip(frames, idx, idx / 10.0, 10.0, 45)


@pytest.fixture(scope="module")
def inputs(adapter, clip):
    return adapter.prepare(clip, "What colour is the moving shape?")


def decoded(adapter, ids) -> str:
    return adapter.processor.tokenizer.decode(ids[0])


def test_prompt_has_one_timestamped_block_per_temporal_patch(adapter, inputs, clip):
    """transformers 4.57's layout: ``<t seconds><|vision_start|>pads<|vision_end|>`` per patch, no outer wrapper."""
    assert inputs["video_grid_thw"].tolist() == [[5, 8, 6]]  # 9 frames -> 5 patches; 112 x 84 -> 128 x 96
    text = decoded(adapter, inputs["input_ids"])
    times = adapter.timestamps(clip, 5).tolist()
    assert times == pytest.approx([0.25, 1.25, 2.25, 3.25, 4.0])  # pair means, the last frame repeated
    blocks = "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * 12 + "<|vision_end|>" for t in times)
    assert blocks in text and text.count("<|vision_start|>") == 5


def test_budget_one_is_bit_exact_with_the_models_own_generate(adapter, inputs, clip):
    with torch.inference_mode():
        own = adapter.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
    with StepLogits(adapter.model) as steps:
        got = adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=4)
    assert len(steps) == len(own.logits) == 4
    for a, b in zip(steps, own.logits):
        assert torch.equal(a, b)
    new = own.sequences[:, inputs["input_ids"].shape[1]:]
    assert got.text == adapter.processor.batch_decode(new, skip_special_tokens=True)[0].strip()
    assert got.stats["prompt_tokens"] == inputs["input_ids"].shape[1] and got.stats["frames_emptied"] == 0


def test_deepstack_maps_are_gathered_with_the_kept_indices(adapter, inputs, clip):
    """The harness's pruned prefill equals the model's own pre-encoded path fed the kept tokens and every DeepStack
    map gathered at the same indices; gathering one map elsewhere changes the logits (the test can fail)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    method = KeepScattered()
    with StepLogits(adapter.model) as steps:
        adapter.generate(inputs, clip, method, 0.5, max_new_tokens=1)
    with torch.inference_mode():
        enc = adapter.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        x = enc.pooler_output[0].view(5, 12, -1)
        idx = method.prune(x, budget=0.5).indices
        maps = [f[0] for f in enc.deepstack_features]
        assert len(maps) == 2
        ids_p, pos_p = adapter.pruned_positions(inputs, idx, 12)

        def reference(gather):
            out = BaseModelOutputWithDeepstackFeatures(pooler_output=(enc.pooler_output[0][idx],),
                                                       deepstack_features=[(g,) for g in gather])
            return adapter.model(input_ids=ids_p, position_ids=pos_p, mm_encoder_outputs={"video": out},
                                 logits_to_keep=1).logits[:, -1]

        assert torch.equal(steps[0], reference([m[idx] for m in maps]))
        wrong = reference([maps[0][idx], maps[1][idx.roll(1)]])  # map 1 misaligned by one token
        assert not torch.allclose(steps[0], wrong, atol=1e-4)


def test_kept_tokens_keep_their_positions_and_decoding_continues_after_the_unpruned_prompt(adapter, inputs, clip):
    seen = []
    lm = adapter.model.model.language_model
    h = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        gen = adapter.generate(inputs, clip, KeepScattered(), 0.5, max_new_tokens=2)
    finally:
        h.remove()
    ids = inputs["input_ids"]
    full, _ = adapter.model.model.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                                 video_grid_thw=inputs["video_grid_thw"])
    is_video = ids[0] == adapter.video_token_id
    idx = KeepScattered().prune(torch.zeros(5, 12, 1), budget=0.5).indices
    prefill, step = seen[0], seen[1]
    assert prefill.shape == (4, 1, gen.stats["prompt_tokens"])
    assert torch.equal(prefill[0, 0], torch.arange(prefill.shape[-1]))
    ids_p, _ = adapter.pruned_positions(inputs, idx, 12)
    video_p = ids_p[0] == adapter.video_token_id
    assert torch.equal(prefill[1:, 0][:, video_p], full[:, 0][:, is_video][:, idx])
    assert torch.equal(prefill[1:, 0][:, ~video_p], full[:, 0][:, ~is_video])  # every text token, timestamps too
    assert torch.equal(step[1:, 0, 0], full[:, 0, -1] + 1)  # the unpruned prompt's last (= max) position + 1


def test_an_emptied_patch_keeps_its_timestamp_and_vision_pair(adapter, inputs, clip):
    gen = adapter.generate(inputs, clip, DropPatch(patch=1), 0.8, max_new_tokens=1)
    assert gen.stats["frames_emptied"] == 1 and gen.stats["tokens_out"] == 48
    ids_p, _ = adapter.pruned_positions(inputs, DropPatch(patch=1).prune(torch.zeros(5, 12, 1), budget=0.8).indices, 12)
    text = decoded(adapter, ids_p)
    assert "<1.2 seconds><|vision_start|><|vision_end|><2.2 seconds>" in text and text.count("<|vision_start|>") == 5
    assert gen.stats["prompt_tokens"] == inputs["input_ids"].shape[1] - 12


def test_add_after_layers_re_indexes_through_an_in_llm_drop():
    """Map ``i`` lands on the visual positions still present after layer ``i``; positions dropped before are skipped."""
    layers = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    positions = torch.tensor([1, 3, 4])
    maps = [torch.ones(3, 2), 10 * torch.ones(3, 2)]
    state = {"layer": 1, "keep": torch.tensor([0, 1, 4, 5])}  # positions 2 and 3 dropped from layer 1 on
    with add_after_layers(layers, positions, maps, state):
        h = layers[0](torch.zeros(1, 6, 2))
        h = layers[1](h[:, state["keep"]])
        again = layers[1](torch.zeros(1, 4, 2))  # decode-time calls are left alone
    assert h[0, :, 0].tolist() == [0.0, 11.0, 11.0, 0.0]
    assert again.abs().sum() == 0
    assert not layers[0]._forward_hooks and not layers[1]._forward_hooks


def test_attention_sources_read_the_last_block_in_raster_order(adapter, inputs, clip):
    """``pooling_head`` rows are softmaxes over each patch's merged tokens; ``last_layer`` rows sum to 1/4 (mean over
    each 2x2 unit of received attention) and come with ``metric [N, L, head_dim]``; both equal an explicit loop."""
    thw = inputs["video_grid_thw"]
    visual = adapter.model.model.visual
    qk = {}

    def grab(mod, args, kwargs, out):
        hid = args[0] if args else kwargs["hidden_states"]
        q, k, _ = mod.qkv(hid).reshape(hid.shape[0], 3, mod.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision
        qk["q"], qk["k"] = apply_rotary_pos_emb_vision(q, k, *kwargs["position_embeddings"])

    h = visual.blocks[-1].attn.register_forward_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode(), adapter._capture_attention("pooling_head", thw) as pool:
            adapter.model.model.get_video_features(inputs["pixel_values_videos"], thw)
        with torch.inference_mode(), adapter._capture_attention("last_layer", thw) as last:
            adapter.model.model.get_video_features(inputs["pixel_values_videos"], thw)
    finally:
        h.remove()
    q, k = qk["q"].float(), qk["k"].float()                 # [S, H, hd], S = 5 * 48 patches in merge-unit order
    expect_pool, expect_last = [], []
    for t in range(5):
        qt, kt = q[t * 48:(t + 1) * 48], k[t * 48:(t + 1) * 48]
        probe = qt.mean(0)                                  # [H, hd]
        keys = kt.view(12, 4, *kt.shape[1:]).mean(1)        # [12, H, hd]
        w = torch.softmax(torch.einsum("hd,lhd->hl", probe, keys) * visual.blocks[-1].attn.scaling, -1)
        expect_pool.append(w.mean(0))
        a = torch.softmax(torch.einsum("qhd,khd->hqk", qt, kt) * visual.blocks[-1].attn.scaling, -1)
        expect_last.append(a.mean(dim=(0, 1)).view(12, 4).mean(1))
    torch.testing.assert_close(pool["attn"], torch.stack(expect_pool), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last["attn"], torch.stack(expect_last), rtol=1e-5, atol=1e-6)
    assert tuple(last["metric"].shape) == (5, 12, visual.blocks[-1].attn.head_dim)


@pytest.fixture(scope="module")
def eager_model(cache_dir):
    from transformers import Qwen3VLForConditionalGeneration

    path = ensure_tiny_checkpoint("qwen3_vl", cache_dir / "models" / "tiny_qwen3_vl")
    return Qwen3VLForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("thw", [(4, 8, 6), (1, 12, 8), (2, 4, 10)])
def test_vision_flops_match_the_counter(eager_model, thw):
    grid = torch.tensor([thw])
    pix = torch.randn(int(np.prod(thw)), 3 * 2 * 16 * 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager_model.model.get_video_features(pix, grid)
    f = qwen3_vl_vision_flops(eager_model.config.vision_config, thw)
    assert counter.get_total_flops() == f["flops_vision"] + f["flops_projector"]


def test_llm_flops_match_the_counter(eager_model):
    embeds = torch.randn(1, 33, eager_model.config.text_config.hidden_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        h = eager_model.model.language_model(inputs_embeds=embeds).last_hidden_state
        eager_model.lm_head(h[:, -1:])
    assert counter.get_total_flops() == llm_prefill_flops(eager_model.config.text_config, 33)


def test_an_in_llm_drop_inside_the_deepstack_layers_runs_and_leaves_no_hook(adapter, inputs, clip):
    """FastV at K = 1 drops before the second DeepStack layer (maps re-indexed); every hook is gone afterwards."""
    from omegaconf import OmegaConf

    from tango.config import compose

    m = OmegaConf.to_object(compose(["model=tiny_qwen3_vl", "method=fastv", "budget=0.25"]).method)
    assert m.layer == 1 < len(adapter.model.config.vision_config.deepstack_visual_indexes)
    before = {n: (tuple(x._forward_hooks), tuple(x._forward_pre_hooks)) for n, x in adapter.model.named_modules()}
    gen = adapter.generate(inputs, clip, m, 0.25, max_new_tokens=2)
    after = {n: (tuple(x._forward_hooks), tuple(x._forward_pre_hooks)) for n, x in adapter.model.named_modules()}
    assert after == before
    n_layers = adapter.model.config.text_config.num_hidden_layers
    assert gen.stats["tokens_layer_avg"] == (60 + (n_layers - 1) * gen.stats["tokens_after_layer"]) / n_layers
