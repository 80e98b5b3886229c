"""Tiny LLaVA-OV: offline checkpoint round trip and the pre-LLM pruning path against the unhooked model."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tango.methods import build_method
from tango.methods.base import PruningMethod, Selection
from tango.models.base import load_adapter
from tango.models.base import ensure_tiny_checkpoint
from tango.video import Clip

pytestmark = pytest.mark.tiny


@dataclass
class KeepFirstPerFrame(PruningMethod):
    """Test method: the first round(L * budget) tokens of every frame, raster order."""

    name: str = "keep_first"

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        n, l, d = x.shape
        k = round(l * budget)
        idx = (torch.arange(n)[:, None] * l + torch.arange(k)[None]).reshape(-1)
        return Selection(x[:, :k].reshape(-1, d), idx, {"tokens_in": n * l, "tokens_out": n * k})


@dataclass
class NeedsAttention(KeepFirstPerFrame):
    needs_attention = True
    seen: tuple = ()

    seen_metric: object = None

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        self.seen, self.seen_metric = (attn, timestamps, grid), metric
        return super().prune(x, budget=budget)


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir):
    return load_adapter("llava_ov", pretrained=str(tiny_llava_dir), device=torch.device("cpu"), dtype="float32")


@pytest.fixture(scope="module")
def clip():
    frames = np.random.RandomState(0).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    return Clip(frames, np.arange(16) * 2, np.arange(16) * 2 / 8.0, 8.0, 32)


def test_checkpoint_is_deterministic_and_loads_like_a_real_one(tmp_path, tiny_llava_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    again = ensure_tiny_checkpoint("llava_ov", tmp_path / "again", seed=0)
    other = ensure_tiny_checkpoint("llava_ov", tmp_path / "other", seed=1)
    a, b, c = (LlavaOnevisionForConditionalGeneration.from_pretrained(p).state_dict()
               for p in (tiny_llava_dir, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="valid"):
        ensure_tiny_checkpoint("nope", tmp_path / "x")


def test_full_tokens_are_bit_exact_with_the_unhooked_model(adapter, clip):
    inputs = adapter.prepare(clip, "What colour is the moving shape?")
    gen = adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=6)
    with torch.inference_mode():
        ref = adapter.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    ref_text = adapter.processor.batch_decode(ref[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert gen.text == ref_text.strip()
    assert gen.stats["tokens_in"] == gen.stats["tokens_out"] == 16 * 16
    assert gen.stats["prompt_tokens"] == inputs["input_ids"].shape[1]


def test_full_token_logits_equal_the_unhooked_forward(adapter, clip):
    """Same prefill logits through the inputs_embeds route as through the model's own pixel path."""
    inputs = adapter.prepare(clip, "Which way does it move?")
    m = adapter.model
    with torch.inference_mode():
        ref = m(**inputs, logits_to_keep=1).logits
        video = m.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output[0]
        emb = m.get_input_embeddings()(inputs["input_ids"])
        emb[inputs["input_ids"] == adapter.video_token_id] = video
        got = m(inputs_embeds=emb, attention_mask=inputs["attention_mask"], logits_to_keep=1).logits
    assert torch.equal(ref, got)


@pytest.mark.parametrize("budget,kept_per_frame", [(0.25, 4), (0.5, 8), (1.0, 16)])
def test_pruned_prefill_has_exactly_the_kept_tokens(adapter, clip, budget, kept_per_frame):
    inputs = adapter.prepare(clip, "How many shapes?")
    gen = adapter.generate(inputs, clip, KeepFirstPerFrame(), budget, max_new_tokens=3)
    removed = 16 * (16 - kept_per_frame)
    assert gen.stats["tokens_out"] == 16 * kept_per_frame
    assert gen.stats["prompt_tokens"] == inputs["input_ids"].shape[1] - removed
    assert gen.stats["new_tokens"] >= 1 and gen.stats["ttft_ms"] >= gen.stats["llm_prefill_ms"] > 0


def test_attention_source_reaches_the_method(adapter, clip):
    inputs = adapter.prepare(clip, "What colour?")
    method = NeedsAttention()
    adapter.generate(inputs, clip, method, 0.5, max_new_tokens=2)
    attn, timestamps, grid = method.seen
    assert grid == (4, 4) and attn.shape == (16, 16)
    # Bilinear 8x8 -> 4x4 averages 2x2 blocks of probabilities that sum to 1 over 64 patches.
    torch.testing.assert_close(attn.sum(-1), torch.full((16,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(timestamps, torch.as_tensor(clip.timestamps, dtype=torch.float32))
    # metric = the pooling head's own output per frame (FastVID's frame-global feature), not pooled
    tower = adapter.model.model.vision_tower
    with torch.inference_mode():
        own = tower(inputs["pixel_values_videos"][0]).pooler_output
    assert method.seen_metric.shape == (16, tower.config.hidden_size)
    torch.testing.assert_close(method.seen_metric, own)


def test_last_layer_attention_matches_eager(adapter, clip):
    """VisionZip's source: attention received in the last SigLIP layer, recomputed under SDPA, equals the eager
    model's own attention weights (mean over heads and queries); keys come from the same layer."""
    from transformers import LlavaOnevisionForConditionalGeneration

    @dataclass
    class LastLayer(NeedsAttention):
        attention_source = "last_layer"

    inputs = adapter.prepare(clip, "q")
    method = LastLayer()
    adapter.generate(inputs, clip, method, 0.5, max_new_tokens=1)
    attn, metric = method.seen[0], method.seen_metric
    eager = LlavaOnevisionForConditionalGeneration.from_pretrained(
        adapter.model.config._name_or_path, attn_implementation="eager").eval()
    with torch.inference_mode():
        pv = inputs["pixel_values_videos"][0]
        out = eager.model.vision_tower(pv, output_attentions=True)
    expected = adapter._pool_like_features(out.attentions[-1].mean(dim=(1, 2)))
    torch.testing.assert_close(attn, expected, rtol=1e-4, atol=1e-6)
    assert metric.shape == (16, 16, adapter.model.config.vision_config.hidden_size // 2)


def test_unwired_in_llm_stages_are_refused_not_ignored(adapter, clip):
    @dataclass
    class Both(KeepFirstPerFrame):
        stage = "both"

    with pytest.raises(NotImplementedError, match="inside the LLM"):
        adapter.generate(adapter.prepare(clip, "q"), clip, Both(), 0.5)


def test_tiny_qwen2_5_vl_builds_and_generates(tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = ensure_tiny_checkpoint("qwen2_5_vl", tmp_path / "q")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    video = np.random.RandomState(0).randint(0, 255, (8, 112, 84, 3), dtype=np.uint8)
    inputs = proc(text=text, videos=[video], return_tensors="pt", videos_kwargs={"do_sample_frames": False})
    assert inputs["video_grid_thw"].tolist() == [[4, 8, 6]]
    assert (inputs["input_ids"] == model.config.video_token_id).sum() == 4 * 8 * 6 // 4
    out = model.generate(**inputs, min_new_tokens=3, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_pooling_head_loaded_from_a_siglip_checkpoint(tiny_llava_dir, tmp_path, clip):
    """A tower without its head (as in the llava-hf checkpoints) gets the head from a SigLIP checkpoint; with the
    same weights the attention source is exactly the built-in head's."""
    from safetensors.torch import save_file

    kw = dict(pretrained=str(tiny_llava_dir), device=torch.device("cpu"), dtype="float32")
    with_head = load_adapter("llava_ov", **kw)
    tower_head = with_head.model.model.vision_tower.head
    save_file({f"vision_model.head.{k}": v.contiguous() for k, v in tower_head.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    headless = load_adapter("llava_ov", pooling_head=str(tmp_path), **kw)
    tower = headless.model.model.vision_tower
    del tower.head
    tower.use_head = False
    inputs = with_head.prepare(clip, "q")
    a, b = NeedsAttention(), NeedsAttention()
    with_head.generate(inputs, clip, a, 0.5, max_new_tokens=1)
    headless.generate(inputs, clip, b, 0.5, max_new_tokens=1)
    torch.testing.assert_close(b.seen[0], a.seen[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b.seen_metric, a.seen_metric, rtol=1e-6, atol=1e-6)  # the loaded head's output too
    no_source = load_adapter("llava_ov", **kw)
    del no_source.model.model.vision_tower.head
    no_source.model.model.vision_tower.use_head = False
    with pytest.raises(ValueError, match="model.pooling_head"):
        no_source.generate(inputs, clip, NeedsAttention(), 0.5, max_new_tokens=1)


def test_reply_until_cuts_and_strips_raw_keeps_the_decoded_text(adapter, clip):
    from tango.models.base import Preprocessing

    inputs = adapter.prepare(clip, "Which way does it move?")
    try:
        adapter.configure(Preprocessing(reply="raw"))
        raw = adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=6, stop=["x"]).text
        assert len(raw) >= 3
        stop = [raw[1:3]]
        assert adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=6, stop=stop).text == raw
        adapter.configure(Preprocessing(reply="until"))
        cut = adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=6, stop=stop).text
        assert cut == raw[:raw.index(stop[0])].strip() != raw
    finally:
        adapter.configure(Preprocessing())


def test_tokenizer_chat_template_is_llava_hfs_prompt(adapter):
    """``chat_template=tokenizer``: the string lmms-eval's llava_hf builds (``"<video>\\n" + question`` through the
    tokenizer's own template, with its default system turn); ``processor``: the processor's template."""
    from tango.models.base import Preprocessing

    try:
        adapter.configure(Preprocessing(chat_template="tokenizer"))
        assert adapter.prompt("Q?") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                        "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n")
        adapter.configure(Preprocessing(chat_template="tokenizer", system_prompt="S"))
        assert adapter.prompt("Q?").startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<video>\nQ?")
        adapter.configure(Preprocessing())
        assert adapter.prompt("Q?") == "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    finally:
        adapter.configure(Preprocessing())
