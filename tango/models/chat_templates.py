"""The real checkpoints' chat templates (pure data), carried by the offline processors (``full_configs``) and the tiny
checkpoints (``tiny``).

They are rewritten, not copied, so that they render the same text as the real ones for the messages the harness and
lmms-eval's wrappers build: a system turn or not, a user turn whose content is a string or a list of image / video /
text items, the generation prompt. Tool calls, assistant reasoning and vision ids (``add_vision_id``) are left out.
Expected renderings: ``tests/models/test_chat_templates.py``.
"""

# [LLAVA-T] llava-hf LLaVA-OneVision / LLaVA-Video processors: transformers' conversion script
#   ``models/llava_onevision/convert_llava_onevision_weights_to_hf.py`` (``chat_template``): no default system turn;
#   per turn ``<|im_start|>{role}\n``, ``<image>\n`` per image, ``<video>\n`` per video, then the texts, then
#   ``<|im_end|>\n``; string content renders nothing.
# [QWEN2-T] Qwen2-7B-Instruct's tokenizer template, which the conversion script's tokenizer keeps (lmms-eval's
#   ``llava_hf`` applies it): the default system turn "You are a helpful assistant." unless the first message is a
#   system one; ``<|im_start|>{role}\n{content}<|im_end|>\n``.
# [QWEN25-T] Qwen2.5-VL-Instruct: Qwen2's default system turn; list content renders
#   ``<|vision_start|><|image_pad|><|vision_end|>`` / ``<|vision_start|><|video_pad|><|vision_end|>`` / the text.
# [QWEN3-T] Qwen3-VL-Instruct: the same content rendering, no default system turn.
DEFAULT_SYSTEM = "You are a helpful assistant."
LLAVA_PROCESSOR_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'video' %}<video>\n{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN2_TOKENIZER_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_QWEN_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' or 'video' in c %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}")
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN2_5_VL_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    + QWEN3_VL_TEMPLATE)
