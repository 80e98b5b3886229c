"""The tiny checkpoints carry the real checkpoints' chat templates (``tango.models.chat_templates``), in the real hub
layout, and those render the documented prompts."""

import pytest

from tango.models import chat_templates as fc
from tango.models.base import ensure_tiny_checkpoint

pytestmark = pytest.mark.unit

Q = "What is shown in this image?"
VIDEO_TURN = [{"type": "video"}, {"type": "text", "text": Q}]
SYSTEM = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]


def _render(template, messages, **kw):
    from transformers.utils.chat_template_utils import render_jinja_template

    (text,), _ = render_jinja_template(conversations=[messages], chat_template=template, add_generation_prompt=True,
                                       **kw)
    return text


def test_qwen2_tokenizer_template_renders_llava_onevisions_own_prompt():
    # The prompt transformers' LLaVA-OV conversion script feeds the converted checkpoint (LLaVA-NeXT's qwen_1_5).
    assert _render(fc.QWEN2_TOKENIZER_TEMPLATE, [{"role": "user", "content": "<image>\n" + Q}]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "What is shown in this image?<|im_end|>\n<|im_start|>assistant\n")
    assert _render(fc.QWEN2_TOKENIZER_TEMPLATE, [{"role": "system", "content": "S"}, {"role": "user", "content": Q}]) \
        == f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"


def test_llava_processor_template():
    assert _render(fc.LLAVA_PROCESSOR_TEMPLATE, [{"role": "user", "content": VIDEO_TURN}]) == (
        f"<|im_start|>user\n<video>\n{Q}<|im_end|>\n<|im_start|>assistant\n")
    # images before videos before texts, whatever the item order; string content renders nothing
    items = [{"type": "text", "text": Q}, {"type": "video"}, {"type": "image"}]
    assert _render(fc.LLAVA_PROCESSOR_TEMPLATE, SYSTEM + [{"role": "user", "content": items}]) == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\n<video>\n{Q}<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert _render(fc.LLAVA_PROCESSOR_TEMPLATE, [{"role": "user", "content": Q}]) == (
        "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("template, default_system", [(fc.QWEN2_5_VL_TEMPLATE, True), (fc.QWEN3_VL_TEMPLATE, False)])
def test_qwen_templates(template, default_system):
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    user = f"<|im_start|>user\n{video}{Q}<|im_end|>\n<|im_start|>assistant\n"
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if default_system else ""
    assert _render(template, [{"role": "user", "content": VIDEO_TURN}]) == system + user
    assert _render(template, SYSTEM + [{"role": "user", "content": VIDEO_TURN}]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + user)
    # lmms-eval's chat messages: items carry their media under the type's key
    lmms = [{"type": "video", "video": "a.mp4", "max_pixels": 10}, {"type": "text", "text": Q}]
    assert _render(template, [{"role": "user", "content": lmms}]) == system + user
    assert _render(template, [{"role": "user", "content": Q}]) == (
        system + f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family, processor_template, tokenizer_template", [
    ("llava_ov", fc.LLAVA_PROCESSOR_TEMPLATE, fc.QWEN2_TOKENIZER_TEMPLATE),
    ("qwen2_5_vl", fc.QWEN2_5_VL_TEMPLATE, fc.QWEN2_5_VL_TEMPLATE),
    ("qwen3_vl", fc.QWEN3_VL_TEMPLATE, fc.QWEN3_VL_TEMPLATE)])
def test_tiny_checkpoints_load_the_real_templates(family, processor_template, tokenizer_template, cache_dir):
    from transformers import AutoProcessor, AutoTokenizer

    path = ensure_tiny_checkpoint(family, cache_dir / "models" / f"tiny_{family}")
    assert AutoProcessor.from_pretrained(path).chat_template == processor_template
    assert AutoTokenizer.from_pretrained(path).chat_template == tokenizer_template
