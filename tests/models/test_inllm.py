"""In-LLM dropping through hooks (FastV-style) on the tiny LLaVA-OV decoder, against hand-computed references."""

import numpy as np
import pytest
import torch

from tango.hooks import drop_tokens_after

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def model(tiny_llava_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()


@pytest.fixture(scope="module")
def embeds(model):
    torch.manual_seed(0)
    return torch.randn(1, 40, model.config.text_config.hidden_size)


def test_keeping_everything_is_bit_exact(model, embeds):
    layers = model.model.language_model.layers
    with torch.inference_mode():
        ref = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        with drop_tokens_after(layers, 1, lambda row: torch.arange(row.shape[-1])):
            got = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    assert torch.equal(ref.sequences, got.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits))


def test_the_row_equals_eager_attention(tiny_llava_dir, embeds):
    from transformers import LlavaOnevisionForConditionalGeneration

    eager = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    rows = {}

    def select(row):
        rows["row"] = row
        return torch.arange(row.shape[-1])

    with torch.inference_mode():
        out = eager(inputs_embeds=embeds, output_attentions=True)
        with drop_tokens_after(eager.model.language_model.layers, 1, select):
            eager.generate(inputs_embeds=embeds, max_new_tokens=1, do_sample=False)
    torch.testing.assert_close(rows["row"], out.attentions[0][0, :, -1].float(), rtol=1e-5, atol=1e-7)


def test_dropped_prefill_matches_hand_computed_layers(model, embeds):
    """K=1: layers 1.. must see exactly the kept rows of layer 0's output, at their original rotary positions,
    under a causal mask."""
    from transformers.masking_utils import create_causal_mask

    lm = model.model.language_model
    keep = torch.tensor([0, 1, 2, 5, 8, 13, 21, 30, 37, 38, 39])
    with torch.inference_mode():
        with drop_tokens_after(lm.layers, 1, lambda row: keep):
            got = model(inputs_embeds=embeds, logits_to_keep=1, use_cache=True).logits
        with drop_tokens_after(lm.layers, 1, lambda row: keep):
            no_cache = model(inputs_embeds=embeds, logits_to_keep=1, use_cache=False).logits
        h = lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1][:, keep]
        pos = keep[None]
        cos, sin = lm.rotary_emb(h, pos)
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=None, past_key_values=None,
                                  position_ids=torch.arange(len(keep))[None])
        for layer in lm.layers[1:]:
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        ref = model.lm_head(lm.norm(h)[:, -1:])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_cache, ref, rtol=1e-5, atol=1e-5)


def test_decode_after_dropping(model, embeds):
    from transformers import DynamicCache

    keep = torch.arange(0, 40, 3)
    if keep[-1] != 39:
        keep = torch.cat([keep, torch.tensor([39])])
    cache = DynamicCache(config=model.config.text_config)
    with torch.inference_mode(), drop_tokens_after(model.model.language_model.layers, 1, lambda row: keep) as state:
        out = model.generate(inputs_embeds=embeds, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                             past_key_values=cache)
    assert out.shape == (1, 5) and state["seq_len"] == 40
    # 4 decode steps were cached after the prefill: layer 0 holds every position, layers >= 1 only the kept ones.
    assert cache.get_seq_length(0) == 40 + 4
    assert all(cache.get_seq_length(i) == len(keep) + 4 for i in range(1, len(cache.layers)))


def test_bad_layer_is_refused(model):
    layers = model.model.language_model.layers
    for k in (0, len(layers)):
        with pytest.raises(ValueError, match="valid range"):
            with drop_tokens_after(layers, k, lambda row: row):
                pass


def test_fastv_through_the_adapter_keeps_the_layer_averaged_budget(tiny_llava_dir):
    from omegaconf import OmegaConf

    from tango.config import compose
    from tango.models.base import load_adapter
    from tango.video import Clip

    adapter = load_adapter("llava_ov", pretrained=str(tiny_llava_dir), device=torch.device("cpu"), dtype="float32")
    frames = np.random.RandomState(1).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    clip = Clip(frames, np.arange(16), np.arange(16) / 8.0, 8.0, 16)
    method = OmegaConf.to_object(compose(["model=tiny_llava_ov", "method=fastv", "budget=0.1"]).method)
    n = adapter.model.config.text_config.num_hidden_layers
    assert (method.layer, method.num_layers) == (1, n)  # configs/model_method/tiny_llava_ov_fastv.yaml
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, method, 0.1, max_new_tokens=2)
    keep = round(256 * (n * 0.1 - 1) / (n - 1))  # f = (L r - K) / (L - K)
    assert gen.stats["tokens_out"] == 256 and gen.stats["tokens_after_layer"] == keep
    assert gen.stats["tokens_layer_avg"] == (256 + (n - 1) * keep) / n
    assert abs(gen.stats["tokens_layer_avg"] / 256 - 0.1) < 0.01  # the layer-averaged budget is realized
    with pytest.raises(ValueError, match="infeasible"):
        adapter.generate(adapter.prepare(clip, "q"), clip, method, 0.05, max_new_tokens=1)


def test_decode_restriction_keeping_everything_is_bit_exact(model, embeds):
    from tango.hooks import restrict_decode_attention

    with torch.inference_mode():
        ref = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        with restrict_decode_attention(model.model.language_model.layers, 1,
                                       lambda row: torch.arange(row.shape[-1])) as state:
            got = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    assert torch.equal(ref.sequences, got.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits))
    assert state["steps"] == 3 and state["pruned_steps"] == 3


def test_decode_restriction_matches_a_masked_recompute(tiny_llava_dir, embeds):
    """DyCoke stage 2: the first decode step at layers >= L attends only to the selected cache positions. Reference:
    the whole sequence recomputed without a cache, with a 4-D mask whose last row hides the other positions from
    layer L on."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from tango.hooks import restrict_decode_attention

    eager = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    layers = eager.model.language_model.layers
    keep = torch.cat([torch.arange(0, 40, 3), torch.tensor([40])])  # a subset of the prompt + the new token
    with torch.inference_mode():
        with restrict_decode_attention(layers, 1, lambda row: keep):
            got = eager.generate(inputs_embeds=embeds, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        tok = got.sequences[:, :1]
        full = torch.cat([embeds, eager.get_input_embeddings()(tok)], dim=1)  # [1, 41, D]
        mask = torch.full((41, 41), torch.finfo(full.dtype).min).triu(1)
        last = torch.full((41,), torch.finfo(full.dtype).min)
        last[keep] = 0.0
        restricted = mask.clone()
        restricted[-1] = last

        def pre(mod, args, kwargs):
            kwargs["attention_mask"] = restricted[None, None]
            return args, kwargs

        handles = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers[1:]]
        try:
            ref = eager(inputs_embeds=full, attention_mask=torch.ones(1, 41, dtype=torch.long), use_cache=False,
                        logits_to_keep=1).logits[:, -1]
        finally:
            for handle in handles:
                handle.remove()
    torch.testing.assert_close(got.logits[1], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.logits[1], eager(inputs_embeds=full, use_cache=False).logits[:, -1], atol=1e-4)


def test_dycoke_through_the_adapter_runs_both_stages(tiny_llava_dir):
    from omegaconf import OmegaConf

    from tango.config import compose
    from tango.models.base import load_adapter
    from tango.video import Clip

    adapter = load_adapter("llava_ov", pretrained=str(tiny_llava_dir), device=torch.device("cpu"), dtype="float32")
    frames = np.random.RandomState(3).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    clip = Clip(frames, np.arange(16), np.arange(16) / 8.0, 8.0, 16)
    method = OmegaConf.to_object(compose(["model=tiny_llava_ov", "method=dycoke", "budget=0.5"]).method)
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, method, 0.5, max_new_tokens=4)
    assert gen.stats["tokens_out"] < 256 and gen.stats["method/regime"] in ("ttm", "ttm_cap")
    assert gen.stats["kv_steps"] == gen.stats["new_tokens"] - 1 and gen.stats["kv_pruned_steps"] >= 1


@pytest.mark.parametrize("family", ["llava_ov", "qwen2_5_vl", "qwen3_vl"])  # llava_video: llava_ov's decoder
def test_every_familys_attention_row_equals_its_eager_attention(family, tiny_llava_dir, tiny_qwen_dir, cache_dir):
    """The row in-LLM methods select from, through the helper ``DecoderView`` picks by ``config.model_type``."""
    from tango.hooks import DecoderView
    from tango.models.base import ensure_tiny_checkpoint, load_adapter

    path = {"llava_ov": tiny_llava_dir, "qwen2_5_vl": tiny_qwen_dir}.get(family) or ensure_tiny_checkpoint(
        family, cache_dir / "models" / f"tiny_{family}")
    adapter = load_adapter(family, pretrained=str(path), device=torch.device("cpu"), dtype="float32",
                           attn_implementation="eager")
    lm = adapter.model.model.language_model
    view = DecoderView(lm.layers, lm.config.model_type, visual_positions=torch.arange(1))
    torch.manual_seed(0)
    embeds = torch.randn(1, 24, lm.config.hidden_size)
    rows = {}

    def select(row):
        rows["row"] = row
        return torch.arange(row.shape[-1])

    with torch.inference_mode():
        ref = lm(inputs_embeds=embeds, output_attentions=True).attentions
        for k in (1, len(lm.layers) - 1):
            with drop_tokens_after(view.layers, k, select, attention_row=view.attention_row):
                lm(inputs_embeds=embeds)
            torch.testing.assert_close(rows["row"], ref[k - 1][0, :, -1].float(), rtol=1e-5, atol=1e-7)


def test_a_decoder_without_an_attention_row_helper_is_an_error(model):
    from tango.hooks import DecoderView

    view = DecoderView(model.model.language_model.layers, "qwen3", visual_positions=torch.arange(4))
    with pytest.raises(NotImplementedError, match="no attention-row helper for decoder model_type='qwen3'"):
        view.attention_row


def test_in_llm_methods_select_among_visual_positions_only(model, embeds):
    """Text between frames (e.g. timestamps) is not in ``visual_positions``: never dropped, never a candidate."""
    from tango.hooks import DecoderView
    from tango.methods import METHODS

    lm = model.model.language_model
    visual = torch.cat([torch.arange(4, 14), torch.arange(18, 28), torch.arange(30, 38)])  # 28 positions, 2 gaps
    view = DecoderView(lm.layers, lm.config.model_type, visual_positions=visual)
    fastv = METHODS["fastv"](layer=1, num_layers=len(lm.layers))
    with torch.inference_mode(), fastv.decoder_hooks(view, 0.5) as state:
        model.generate(inputs_embeds=embeds, max_new_tokens=1, do_sample=False)
    kept = set(state["keep"].tolist())
    assert set(range(40)) - set(visual.tolist()) <= kept  # every non-visual position stays
    assert len(kept & set(visual.tolist())) == fastv.plan(28, 0.5)["num_keep"]
