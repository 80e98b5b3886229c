"""Tiny Qwen2.5-VL adapter: pre-LLM pruning with original 3-D M-RoPE ids, against the unhooked model and against
references built by hand (positions from ``grid_thw``, no-cache recomputes, an explicit attention loop)."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tango.flops import llm_prefill_flops
from tango.methods import build_method
from tango.methods.base import PruningMethod, Selection
from tango.models.qwen2_5_vl import Qwen25VL, qwen2_5_vl_vision_flops
from tango.models.base import ensure_tiny_checkpoint
from tango.video import Clip

from models.test_llava_ov import KeepFirstPerFrame  # first round(L * budget) tokens per frame / patch

pytestmark = pytest.mark.tiny

STATS = {"tokens_in", "tokens_out", "prompt_tokens", "new_tokens", "vision_ms", "pruning_ms",
         "llm_prefill_ms", "ttft_ms", "decode_tok_s", "tokens_layer_avg", "tflops_vision", "tflops_projector",
         "tflops_llm", "tflops_prefill", "achieved_tflop_s"}


@dataclass
class KeepScattered(PruningMethod):
    """Test method: a fixed scattered subset (every third token, plus the last), so kept ids have gaps in t, h, w."""

    name: str = "keep_scattered"

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        n, l, d = x.shape
        idx = torch.cat([torch.arange(0, n * l - 1, 3), torch.tensor([n * l - 1])])
        return Selection(x.reshape(-1, d)[idx], idx, {"tokens_in": n * l, "tokens_out": len(idx)})


@dataclass
class NeedsAttention(KeepFirstPerFrame):
    needs_attention = True
    seen: tuple = ()

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        self.seen = (attn, timestamps, grid)
        return super().prune(x, budget=budget)


@pytest.fixture(scope="module")
def tiny_dir(cache_dir):
    return ensure_tiny_checkpoint("qwen2_5_vl", cache_dir / "models" / "tiny_qwen2_5_vl")


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return Qwen25VL(str(tiny_dir), device=torch.device("cpu"), dtype="float32")


@pytest.fixture(scope="module")
def clip():
    frames = np.random.RandomState(0).randint(0, 255, (8, 112, 84, 3), dtype=np.uint8)
    idx = np.arange(8) * 5
    return Clip(frames, idx, idx / 10.0, 10.0, 40)


@pytest.fixture(scope="module")
def inputs(adapter, clip):
    return adapter.prepare(clip, "What colour is the moving shape?")


class StepLogits:
    """Records the LM head's output of every forward (one per generated token) while active."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def __enter__(self):
        self.handle = self.model.lm_head.register_forward_hook(lambda m, a, o: self.steps.append(o[:, -1].clone()))
        return self.steps

    def __exit__(self, *exc):
        self.handle.remove()


def test_prepare_gives_the_expected_grid_and_timestamps(adapter, inputs, clip):
    assert inputs["video_grid_thw"].tolist() == [[4, 8, 6]]
    assert int((inputs["input_ids"] == adapter.video_token_id).sum()) == 48
    # the clip's sampled frame rate (8 frames of 40 at 10 fps = 2 fps) sets the temporal M-RoPE spacing
    torch.testing.assert_close(inputs["second_per_grid_ts"], torch.tensor([1.0]))
    torch.testing.assert_close(adapter.timestamps(clip, 4), torch.tensor([0.0, 7 / 6, 7 / 3, 3.5]))
    odd = Clip(clip.frames[:7], clip.indices[:7], clip.timestamps[:7], 10.0, 40)
    odd_inputs = adapter.prepare(odd, "q")  # the processor repeats the last frame to fill the temporal patch
    assert odd_inputs["video_grid_thw"].tolist() == [[4, 8, 6]]
    torch.testing.assert_close(adapter.timestamps(odd, 4), torch.tensor([0.0, 1.0, 2.0, 3.0]))


@pytest.mark.parametrize("method,budget", [(build_method("none"), 1.0), (KeepFirstPerFrame(), 1.0)])
def test_nothing_dropped_is_bit_exact_with_the_unhooked_generate(adapter, inputs, clip, method, budget):
    with StepLogits(adapter.model) as got:
        gen = adapter.generate(inputs, clip, method, budget, max_new_tokens=5)
    with torch.inference_mode(), StepLogits(adapter.model) as ref:
        out = adapter.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    ref_text = adapter.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert gen.text == ref_text.strip()
    assert len(got) == len(ref) == gen.stats["new_tokens"]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))  # step-0 logits and every decode step
    assert [int(s.argmax()) for s in got] == out[0, inputs["input_ids"].shape[1]:].tolist()
    assert gen.stats["tokens_in"] == gen.stats["tokens_out"] == 48
    assert gen.stats["prompt_tokens"] == inputs["input_ids"].shape[1]
    assert STATS <= set(gen.stats)


@pytest.mark.parametrize("budget,kept_per_patch", [(0.25, 3), (0.5, 6)])
def test_pruned_prefill_has_exactly_the_kept_tokens(adapter, inputs, clip, budget, kept_per_patch):
    gen = adapter.generate(inputs, clip, KeepFirstPerFrame(), budget, max_new_tokens=3)
    assert gen.stats["tokens_out"] == 4 * kept_per_patch
    assert gen.stats["prompt_tokens"] == inputs["input_ids"].shape[1] - 4 * (12 - kept_per_patch)
    assert gen.stats["new_tokens"] >= 1 and gen.stats["ttft_ms"] >= gen.stats["llm_prefill_ms"] > 0
    assert gen.stats["tflops_llm"] < adapter.generate(inputs, clip, build_method("none"), 1.0,
                                                      max_new_tokens=1).stats["tflops_llm"]


def reference_positions(ids, video_token_id, grid_thw, second_per_grid_ts, tokens_per_second, kept):
    """3-D ids built by hand: text 0..s0-1; the kept video token j = t*L + r*W + c at (s0 + floor(t * tps * spg),
    s0 + r, s0 + c); text after the video from s0 + max(H, W) on. ``ids`` is the pruned prompt."""
    _, h_, w_ = grid_thw
    hh, ww = h_ // 2, w_ // 2
    is_vid = (ids[0] == video_token_id).tolist()
    s0 = is_vid.index(True)
    cols, nxt, j = [], None, 0
    for i, v in enumerate(is_vid):
        if i < s0:
            cols.append([i, i, i])
        elif v:
            src = int(kept[j])
            j += 1
            t, r, c = src // (hh * ww), src % (hh * ww) // ww, src % ww
            cols.append([s0 + int(t * tokens_per_second * second_per_grid_ts), s0 + r, s0 + c])
        else:
            nxt = s0 + max(hh, ww) if nxt is None else nxt + 1
            cols.append([nxt] * 3)
    return torch.tensor(cols).T[:, None]  # [3, 1, S']


def test_pruned_logits_and_decoding_equal_hand_built_references(adapter, inputs, clip):
    m = adapter.model
    method = KeepScattered()
    with StepLogits(m) as got:
        gen = adapter.generate(inputs, clip, method, 0.5, max_new_tokens=4)
    assert gen.stats["new_tokens"] == len(got) == 4
    ids, thw = inputs["input_ids"], inputs["video_grid_thw"]
    with torch.inference_mode():
        video = m.model.get_video_features(inputs["pixel_values_videos"], thw).pooler_output[0]
        sel = method.prune(video.view(4, 12, -1), budget=0.5)
        keep = (ids[0] != adapter.video_token_id) | (torch.cumsum(ids[0] == adapter.video_token_id, 0) <= 17)
        ids_p = ids[:, keep]
        assert gen.stats["prompt_tokens"] == ids_p.shape[1] == ids.shape[1] - 48 + 17
        pos = reference_positions(ids_p, adapter.video_token_id, thw[0].tolist(),
                                  float(inputs["second_per_grid_ts"][0]), m.config.vision_config.tokens_per_second,
                                  sel.indices)
        assert pos[0, 0, -1] == 7 + 4 + (ids_p.shape[1] - 7 - 17) - 1  # text after the video: 11, 12, ...
        emb = m.get_input_embeddings()(ids_p)
        emb[ids_p == adapter.video_token_id] = sel.tokens
        step0 = m(inputs_embeds=emb, attention_mask=torch.ones_like(ids_p), position_ids=pos, logits_to_keep=1)
        assert torch.equal(step0.logits[:, -1], got[0])

        # Greedy decode steps against no-cache recomputes that keep the generated tokens (positions last+1, ...).
        new = [int(s.argmax()) for s in got]
        for t in range(1, 4):
            e = torch.cat([emb, m.get_input_embeddings()(torch.tensor([new[:t]]))], 1)
            p = torch.cat([pos, pos[..., -1:] + torch.arange(1, t + 1)], -1)
            ref = m(inputs_embeds=e, attention_mask=torch.ones(1, e.shape[1], dtype=torch.long), position_ids=p,
                    use_cache=False, logits_to_keep=1).logits[:, -1]
            torch.testing.assert_close(ref, got[t], rtol=1e-5, atol=1e-5)

        # A manual cached loop without position_ids continues from the rope_deltas the adapter left on the model.
        pre = m(inputs_embeds=emb, position_ids=pos, use_cache=True, logits_to_keep=1)
        step1 = m(inputs_embeds=m.get_input_embeddings()(torch.tensor([new[:1]])), past_key_values=pre.past_key_values,
                  use_cache=True).logits[:, -1]
        torch.testing.assert_close(step1, got[1], rtol=1e-5, atol=1e-5)


def window_order(t, hh, ww, win):
    """Merged-token raster indices in the ViT's window order, by hand: per temporal patch, windows of win x win
    merged tokens row-major over the (unpadded) grid, raster order inside each window."""
    order = []
    for f in range(t):
        for r0 in range(0, hh, win):
            for c0 in range(0, ww, win):
                order += [f * hh * ww + r * ww + c for r in range(r0, min(r0 + win, hh))
                          for c in range(c0, min(c0 + win, ww))]
    return torch.tensor(order)


@pytest.fixture(scope="module")
def raster_qk(adapter, inputs):
    """The last full-attention block's queries / keys (after and before RoPE), ``[192 patches, heads, hd]``, rebuilt
    by hand in raster (block-major) patch order: the block's captured input un-permuted with a hand-built window
    order, rotary from the patches' own (h, w) ids."""
    from transformers.vision_utils import get_vision_position_ids

    visual = adapter.model.model.visual
    vc = visual.config
    blk = visual.blocks[vc.fullatt_block_indexes[-1]]
    thw = inputs["video_grid_thw"]
    seen = {}

    def grab(mod, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = blk.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            visual(inputs["pixel_values_videos"], grid_thw=thw)
    finally:
        handle.remove()
    # Back to raster order: the ViT permutes whole 2x2 merge units (4 consecutive patch rows) into window order.
    order = window_order(4, 4, 3, vc.window_size // vc.spatial_merge_size // vc.patch_size)
    h = torch.empty_like(seen["h"]).view(48, 4, -1)
    h[order] = seen["h"].view(48, 4, -1)
    h = h.reshape(192, -1)
    heads, hd = blk.attn.num_heads, blk.attn.head_dim
    with torch.inference_mode():
        cos, sin = visual.rotary_pos_emb(h, get_vision_position_ids(thw, vc.spatial_merge_size))  # raster rows
        qkv = blk.attn.qkv(blk.norm1(h)).view(192, 3, heads, hd)

    def rope(v):
        rot = torch.cat([-v[..., hd // 2:], v[..., : hd // 2]], -1)
        return v * cos[:, None] + rot * sin[:, None]

    return rope(qkv[:, 0]), rope(qkv[:, 1]), qkv[:, 1]


def test_pooling_head_attention_equals_an_explicit_loop(adapter, inputs, clip, raster_qk):
    method = NeedsAttention()
    adapter.generate(inputs, clip, method, 0.5, max_new_tokens=1)
    attn, timestamps, grid = method.seen
    assert grid == (4, 3) and attn.shape == (4, 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(timestamps, adapter.timestamps(clip, 4))
    q, k, _ = raster_qk
    heads, hd = q.shape[1:]
    expected = torch.zeros(4, 12)
    for f in range(4):
        rows = slice(f * 48, (f + 1) * 48)
        for head in range(heads):
            qbar = q[rows, head].mean(0)
            kbar = k[rows, head].reshape(12, 4, hd).mean(1)  # patch rows 4l..4l+3 form merged token l
            expected[f] += torch.softmax(kbar @ qbar / hd ** 0.5, 0) / heads
    torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)


def test_last_layer_source_equals_an_explicit_loop(adapter, inputs, clip, raster_qk):
    @dataclass
    class LastLayer(NeedsAttention):
        attention_source = "last_layer"
        seen_metric: object = None

        def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
            self.seen_metric = metric
            return super().prune(x, budget=budget, attn=attn, timestamps=timestamps, grid=grid)

    method = LastLayer()
    adapter.generate(inputs, clip, method, 0.5, max_new_tokens=1)
    attn, metric = method.seen[0], method.seen_metric
    q, k, k_raw = raster_qk
    heads, hd = q.shape[1:]
    expected = torch.zeros(4, 12)
    for f in range(4):
        rows = slice(f * 48, (f + 1) * 48)
        for head in range(heads):
            w = torch.softmax(q[rows, head] @ k[rows, head].T / hd ** 0.5, -1)  # [48 queries, 48 keys]
            expected[f] += w.mean(0).reshape(12, 4).mean(1) / heads
    torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.full((4,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metric, k_raw.mean(1).reshape(4, 12, 4, hd).mean(2), rtol=1e-5, atol=1e-6)


def test_fastv_keeps_the_layer_averaged_budget_and_hooks_are_removed(adapter, inputs, clip):
    from omegaconf import OmegaConf

    from tango.config import compose

    method = OmegaConf.to_object(compose(["model=tiny_qwen2_5_vl", "method=fastv", "budget=0.6"]).method)
    n_layers = adapter.model.config.text_config.num_hidden_layers
    assert (method.layer, method.num_layers) == (1, n_layers)  # configs/model_method/tiny_qwen2_5_vl_fastv.yaml
    gen = adapter.generate(inputs, clip, method, 0.6, max_new_tokens=3)
    keep = round(48 * (n_layers * 0.6 - 1) / (n_layers - 1))  # f = (L r - K) / (L - K)
    assert gen.stats["tokens_out"] == 48 and gen.stats["tokens_after_layer"] == keep
    assert gen.stats["tokens_layer_avg"] == (48 + (n_layers - 1) * keep) / n_layers
    assert gen.stats["new_tokens"] == 3
    with pytest.raises(ValueError, match="infeasible"):
        adapter.generate(inputs, clip, method, 0.5 / n_layers, max_new_tokens=1)
    adapter.generate(inputs, clip, NeedsAttention(), 0.5, max_new_tokens=1)
    for name, mod in adapter.model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, f"hook left on {name or 'model'}"
        assert not mod._forward_hooks_with_kwargs and not mod._forward_pre_hooks_with_kwargs


def test_stage_both_is_refused(adapter, inputs, clip):
    @dataclass
    class Both(KeepFirstPerFrame):
        stage = "both"

    with pytest.raises(NotImplementedError, match="inside the LLM"):
        adapter.generate(inputs, clip, Both(), 0.5)


@pytest.fixture(scope="module")
def eager_model(tiny_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation="eager").eval()


def counted(fn) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("thw", [(4, 8, 6), (1, 12, 8), (2, 4, 10)])
def test_vision_flops_match_the_counter(eager_model, thw):
    """Windowed blocks included: the window lengths are exact (full windows + the remainder row / column)."""
    cfg = eager_model.config.vision_config
    grid = torch.tensor([thw])
    pv = torch.randn(int(np.prod(thw)), 3 * cfg.temporal_patch_size * cfg.patch_size ** 2)
    got = counted(lambda: eager_model.model.get_video_features(pv, grid))
    f = qwen2_5_vl_vision_flops(cfg, thw)
    assert got == f["flops_vision"] + f["flops_projector"]


def test_llm_flops_match_the_counter(eager_model):
    emb = torch.randn(1, 33, eager_model.config.text_config.hidden_size)
    got = counted(lambda: eager_model(inputs_embeds=emb, position_ids=torch.arange(33).expand(3, 1, 33),
                                      logits_to_keep=1))
    assert got == llm_prefill_flops(eager_model.config.text_config, 33)


def test_mrope_convention_is_transformers_5_when_temporal_ids_outrun_the_text(adapter):
    """16 frames 3 s apart: temporal ids reach base + 168 while the text after the video starts at base +
    max(h, w)/merge. The harness decodes where the model's own ``generate`` does (last + 1 = base + 20, base + 21),
    not at transformers 4.x's / vLLM's max + 1 (base + 169); a manual cached loop reading the ``rope_deltas`` it
    leaves continues there too. ``base``: the video's first position (the template's default system turn, then
    ``<|im_start|>user\n<|vision_start|>``)."""
    frames = np.random.RandomState(0).randint(0, 255, (16, 112, 84, 3), dtype=np.uint8)
    idx = np.arange(16) * 30
    far = Clip(frames, idx, idx / 10.0, 10.0, 480)
    inputs = adapter.prepare(far, "q?")
    lm = adapter.model.model.language_model
    runs = {}
    for who in ("own", "harness"):  # the harness last: the rope_deltas it leaves are checked below
        seen = []
        h = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"][-3:].clone()),
                                         with_kwargs=True)
        try:
            with torch.inference_mode(), StepLogits(adapter.model) as steps:
                if who == "own":
                    adapter.model.generate(**inputs, max_new_tokens=3, do_sample=False)
                else:
                    adapter.generate(inputs, far, build_method("none"), 1.0, max_new_tokens=3)
        finally:
            h.remove()
        runs[who] = (seen, steps)
    (seen, steps), (own_seen, own_steps) = runs["harness"], runs["own"]
    prefill = seen[0][:, 0]
    base = int(torch.nonzero(inputs["input_ids"][0] == adapter.video_token_id)[0, 0])
    assert base == 45  # 38 tokens of system turn + 7
    assert int(prefill.max()) == base + 168 and prefill[:, -1].tolist() == [base + 19] * 3
    assert [s[:, 0, 0].tolist() for s in seen[1:]] == [[base + 20] * 3, [base + 21] * 3]
    assert all(torch.equal(a, b) for a, b in zip(seen, own_seen))
    assert all(torch.equal(a, b) for a, b in zip(steps, own_steps))
    m = adapter.model
    with torch.inference_mode():
        ids = inputs["input_ids"]
        emb = m.get_input_embeddings()(ids)
        emb[ids == adapter.video_token_id] = m.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output[0]
        pre = m(inputs_embeds=emb, position_ids=seen[0], use_cache=True, logits_to_keep=1)
        nxt = torch.tensor([[int(steps[0].argmax())]])
        step1 = m(inputs_embeds=m.get_input_embeddings()(nxt), past_key_values=pre.past_key_values,
                  use_cache=True).logits[:, -1]
    torch.testing.assert_close(step1, steps[1], rtol=1e-5, atol=1e-5)
