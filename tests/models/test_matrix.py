"""Every model family x every method on the tiny models: identity at budget 1, exact LLM sequence lengths."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tango.config import compose
from tango.methods import METHODS
from tango.models.base import ADAPTERS, load_adapter
from tango.models.base import ensure_tiny_checkpoint
from tango.video import Clip

pytestmark = pytest.mark.tiny
FAMILIES = {family: f"tiny_{family}" for family in ADAPTERS}  # family -> its tiny model config


@pytest.fixture(scope="module")
def adapters(cache_dir):
    kw = dict(device=torch.device("cpu"), dtype="float32")
    return {family: load_adapter(family, pretrained=str(ensure_tiny_checkpoint(family, cache_dir / "models" / name)),
                                 **kw) for family, name in FAMILIES.items()}


@pytest.fixture(scope="module")
def clip():
    frames = np.random.RandomState(4).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    return Clip(frames, np.arange(16) * 2, np.arange(16) * 2 / 8.0, 8.0, 32)


def method(model: str, name: str, budget: float):
    return OmegaConf.to_object(compose([f"model={model}", f"method={name}", f"budget={budget}"]).method)


def hooks(model) -> dict:
    """Hook ids per module (transformers keeps output-capturing hooks of its own)."""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for name, m in model.named_modules()}


def first_step(adapter, inputs, clip, m, budget):
    """Greedy tokens and the step-0 logits through the adapter (logits captured from the LM head)."""
    logits = []
    h = adapter.model.lm_head.register_forward_hook(lambda mod, a, out: logits.append(out[:, -1].clone()))
    try:
        gen = adapter.generate(inputs, clip, m, budget, max_new_tokens=3)
    finally:
        h.remove()
    return gen, logits[0]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_budget_one_is_the_identity(adapters, clip, family, name):
    adapter = adapters[family]
    inputs = adapter.prepare(clip, "What colour is the moving shape?")
    if METHODS[name].families and family not in METHODS[name].families:  # refused, naming the supported families
        with pytest.raises(ValueError, match=f"method '{name}' supports the model families"):
            adapter.generate(inputs, clip, method(FAMILIES[family], name, 1.0), 1.0)
        return
    ref, ref_logits = first_step(adapter, inputs, clip, method(FAMILIES[family], "none", 1.0), 1.0)
    hooks_before = hooks(adapter.model)  # after a first forward: transformers adds capture hooks lazily
    got, got_logits = first_step(adapter, inputs, clip, method(FAMILIES[family], name, 1.0), 1.0)
    assert got.text == ref.text and torch.equal(got_logits, ref_logits)
    assert got.stats["tokens_out"] == got.stats["tokens_in"] == ref.stats["tokens_in"]
    if family == "llava_ov":  # and the reference itself is the model's own pixel path
        with torch.inference_mode():
            own = adapter.model(**inputs, logits_to_keep=1).logits[:, -1]
        assert torch.equal(own, ref_logits)
    assert hooks(adapter.model) == hooks_before  # every hook the harness attached was removed


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", ["tango", "visionzip", "dycoke", "holitom", "fastvid", "flashvid", "vidcom2", "evs",
                                  "random", "uniform_pool"])
def test_pruned_prompt_length_is_the_realized_budget(adapters, clip, family, name):
    if METHODS[name].families and family not in METHODS[name].families:
        pytest.skip(f"{name} does not support {family} (tested by test_budget_one_is_the_identity)")
    adapter = adapters[family]
    inputs = adapter.prepare(clip, "How many shapes?")
    full = adapter.generate(inputs, clip, method(FAMILIES[family], "none", 1.0), 1.0, max_new_tokens=1)
    got = adapter.generate(inputs, clip, method(FAMILIES[family], name, 0.3), 0.3, max_new_tokens=2)
    assert 0 < got.stats["tokens_out"] < got.stats["tokens_in"] == full.stats["tokens_in"]
    removed = full.stats["prompt_tokens"] - got.stats["prompt_tokens"]
    if family == "llava_video":  # newlines of emptied rows go too
        assert removed >= full.stats["tokens_out"] - got.stats["tokens_out"]
    else:
        assert removed == full.stats["tokens_out"] - got.stats["tokens_out"]
    assert got.new_tokens if hasattr(got, "new_tokens") else got.stats["new_tokens"] >= 1


def test_tango_inner_llm_stage_on_llava_video(adapters, clip):
    """configs/model_method/tiny_llava_video_tango.yaml: prune + merge at layer 8 of 12, keeping half the span."""
    adapter = adapters["llava_video"]
    m = method("tiny_llava_video", "tango", 0.3)
    n_layers = adapter.model.config.text_config.num_hidden_layers
    assert m.stage == "both" and m.inner_llm and (m.inner_layer, m.num_layers) == (8, n_layers)
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, m, 0.3, max_new_tokens=3)
    out, after = gen.stats["tokens_out"], gen.stats["tokens_after_layer"]
    span = gen.stats["prompt_tokens"] - (adapter.prepare(clip, "q")["input_ids"].shape[1] - (16 * 16 + 1))
    # round(span / 2) positions survive; the newlines of the span are prunable too, so at most that many tokens
    assert 0 < after <= min(out, round(span * 0.5)) and after >= round(span * 0.5) - (span - out)
    assert gen.stats["tokens_layer_avg"] == (8 * out + (n_layers - 8) * after) / n_layers


@pytest.mark.parametrize("family", ["llava_ov", "llava_video"])
def test_holitom_inner_merge_halves_the_span_at_layer_k(adapters, clip, family):
    """HoliTom's inner stage (HOLITOM_k / HOLITOM_r): from layer K on, round(n * (1 - r)) of the n prunable span
    positions remain (LLaVA-OV: the visual tokens; LLaVA-Video: its span, newlines included), kept positions only."""
    adapter = adapters[family]
    m = OmegaConf.to_object(compose([f"model={FAMILIES[family]}", "method=holitom", "budget=0.3",
                                     "method.inner_llm=true", "method.inner_layer=4"]).method)
    assert m.stage == "both"
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, m, 0.3, max_new_tokens=2)
    n_layers = adapter.model.config.text_config.num_hidden_layers
    out, after = gen.stats["tokens_out"], gen.stats["tokens_after_layer"]
    if family == "llava_ov":
        assert after == round(out * 0.5)
    else:  # the span's newlines are prunable too, so at most that many visual tokens remain
        assert 0 < after <= out
    assert gen.stats["tokens_layer_avg"] == (4 * out + (n_layers - 4) * after) / n_layers


@pytest.mark.parametrize("family", ["llava_ov", "llava_video", "qwen2_5_vl", "qwen3_vl"])
def test_flashvid_inner_stage_keeps_ceil_of_its_share_from_layer_k(adapters, clip, family):
    """FlashVID's in-LLM stage (fastv_prune): from layer K on, ceil(0.3 n) of the n prunable span positions remain
    (LLaVA-OV, Qwen: the visual tokens; LLaVA-Video: its span, newlines included)."""
    adapter = adapters[family]
    m = OmegaConf.to_object(compose([f"model={FAMILIES[family]}", "method=flashvid", "budget=0.3",
                                     "method.inner_llm=true", "method.pruning_layer=4"]).method)
    assert m.stage == "both"
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, m, 0.3, max_new_tokens=2)
    n_layers = adapter.model.config.text_config.num_hidden_layers
    out, after = gen.stats["tokens_out"], gen.stats["tokens_after_layer"]
    if family != "llava_video":
        assert after == math.ceil(out * 0.3)  # upstream's float expression
    else:
        assert 0 < after <= out
    assert gen.stats["tokens_layer_avg"] == (4 * out + (n_layers - 4) * after) / n_layers


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fastv_layer_average_counts_visual_tokens_only(adapters, clip, family):
    """Layer-averaged counts never count newlines and never go negative (LLaVA-Video's span holds newlines)."""
    adapter = adapters[family]
    gen = adapter.generate(adapter.prepare(clip, "q"), clip, method(FAMILIES[family], "fastv", 0.1), 0.1,
                           max_new_tokens=1)
    n_layers = adapter.model.config.text_config.num_hidden_layers
    after, n = gen.stats["tokens_after_layer"], gen.stats["tokens_in"]
    assert 0 <= after < n and gen.stats["tokens_layer_avg"] == (n + (n_layers - 1) * after) / n_layers
    if family != "llava_video":  # one newline at most, outside the prunable span: the budget is met
        assert abs(gen.stats["tokens_layer_avg"] / n - 0.1) < 0.02
    assert gen.stats["new_tokens"] >= 1
