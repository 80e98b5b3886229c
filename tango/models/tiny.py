"""Tiny random checkpoints of the real model classes, built offline (no hub access) for tests and the default run.

Each builder writes a normal ``save_pretrained`` directory (model + processor + byte-level tokenizer + the real
checkpoint's chat templates, ``tango.models.chat_templates``), laid out as the real checkpoint is on the hub, so the
harness -- and lmms-eval's own wrappers -- load it with ``from_pretrained`` exactly like a real checkpoint. Weights
are a deterministic function of the seed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from tango.models import chat_templates

# 12 decoder layers (hidden 64, still ~0.1 ms a layer on CPU) so layer-averaged budgets down to 0.1 are feasible for
# in-LLM methods: FastV with K = 1 needs budget > K / layers.
TEXT_LAYERS = 12
TINY_VERSION = 3  # bump when a recipe changes: cached tiny checkpoints are rebuilt
MARKER = "tango_tiny.json"
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>",
            "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def byte_tokenizer(style: str, chat_template: str | None = None):
    """A 265-token byte-level BPE tokenizer (no merges) in LLaVA (``<video>``) or Qwen (``<|video_pad|>``) style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(symbols)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(_SPECIAL)
    if style == "llava":
        extra = {"image_token": "<image>", "video_token": "<video>"}
    elif style == "qwen":
        extra = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    else:
        raise ValueError(f"tokenizer style {style!r}; valid: 'llava', 'qwen'")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  extra_special_tokens=extra)
    tok.chat_template = chat_template
    return tok


def tiny_llava_ov(seed: int = 0, *, size: int = 112, vision_hidden: int = 64, vision_layers: int = 2,
                  vision_heads: int = 2, text_hidden: int = 64, text_layers: int = TEXT_LAYERS, **text_kwargs):
    """A seeded tiny ``LlavaOnevisionForConditionalGeneration`` and its processor: SigLIP (patch 14, with the
    attention-pooling head that Tango's attention source needs) + Qwen2; ``size`` 112 gives 8x8 patches per frame,
    pooled to 4x4 = 16 tokens, so a video of F frames gives 16F + 1 tokens. ``text_kwargs`` go to ``Qwen2Config``."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
                              Qwen2Config, SiglipVisionConfig)

    tok = byte_tokenizer("llava", chat_template=chat_templates.QWEN2_TOKENIZER_TEMPLATE)
    vision = SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=size,
                                patch_size=14, vision_use_head=True)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                       num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text_kwargs)
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"),
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               image_grid_pinpoints=pinpoints)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": size, "width": size},
                                                     image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": size, "width": size}),
        tokenizer=tok, num_image_tokens=(size // 14) ** 2, vision_feature_select_strategy="full",
        chat_template=chat_templates.LLAVA_PROCESSOR_TEMPLATE)
    return model, proc


def build_tiny_llava_ov(out_dir: str | Path, seed: int = 0) -> Path:
    """The default tiny LLaVA-OV (hidden 64, 2 vision + 12 text layers), saved at ``out_dir``."""
    return save_llava(*tiny_llava_ov(seed), out_dir)


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0, *, text_heads: int = 4, text_kv_heads: int = 2,
                          mrope_section: tuple[int, int, int] = (2, 3, 3)) -> Path:
    """Tiny ``Qwen2_5_VLForConditionalGeneration``: 2-block ViT (window 56, last block full attention) + 12-layer
    Qwen2.5 text model with 3-D M-RoPE (sections [2, 3, 3]). vLLM's CPU attention needs head_dim >= 32:
    ``text_heads=2, text_kv_heads=1, mrope_section=(4, 6, 6)`` (integrations/vllm)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = byte_tokenizer("qwen")
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=text_heads, num_key_value_heads=text_kv_heads,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": list(mrope_section)},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    pix = dict(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, temporal_patch_size=2,
               merge_size=2)
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pix), video_processor=Qwen2VLVideoProcessor(**pix), tokenizer=tok,
        chat_template=chat_templates.QWEN2_5_VL_TEMPLATE)
    return _save(model, proc, out_dir)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0, *, text_heads: int = 4, text_kv_heads: int = 2,
                        head_dim: int = 16, mrope_section: tuple[int, int, int] = (4, 2, 2)) -> Path:
    """Tiny ``Qwen3VLForConditionalGeneration``: 2-block ViT (patch 16, learned 8x8 position grid, DeepStack taps
    after both blocks, so two DeepStack maps are added after decoder layers 0 and 1) + 12-layer Qwen3 text model
    (``q_norm`` / ``k_norm``, head_dim 16, interleaved M-RoPE sections [4, 2, 2]). The video processor keeps the
    real checkpoint's settings (``shortest_edge`` 4096, ``longest_edge`` 25165824, fps 2, 4..768 frames) except the
    per-frame token ceiling ``max_video_tokens`` 16 (real: 768), so a 112 x 112 frame becomes 128 x 128 = 16 merged
    tokens per temporal patch. vLLM's CPU attention needs head_dim >= 32: ``text_heads=2, text_kv_heads=1,
    head_dim=32, mrope_section=(8, 4, 4)`` (integrations/vllm)."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = byte_tokenizer("qwen")
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=text_heads, num_key_value_heads=text_kv_heads, head_dim=head_dim,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": list(mrope_section),
                                 "mrope_interleaved": True},
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    pix = dict(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, temporal_patch_size=2,
               merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pix),
        video_processor=Qwen3VLVideoProcessor(**pix, fps=2, min_frames=4, max_frames=768, max_video_tokens=16),
        tokenizer=tok, chat_template=chat_templates.QWEN3_VL_TEMPLATE)
    return _save(model, proc, out_dir)


def save_llava(model, proc, out_dir: str | Path) -> Path:
    """``_save`` with the llava-hf hub layout: the processor's template in ``chat_template.json`` and the tokenizer's
    own (Qwen2-Instruct's) in ``tokenizer_config.json``. transformers 5.x would write both to one
    ``chat_template.jinja``, which the tokenizer then loads too, so ``tokenizer.apply_chat_template`` (lmms-eval's
    ``llava_hf``) would render the processor's template instead of the checkpoint's tokenizer template."""
    import json

    tokenizer_template = proc.tokenizer.chat_template
    out_dir = _save(model, proc, out_dir)
    (out_dir / "chat_template.jinja").unlink()
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": proc.chat_template}, indent=2))
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = tokenizer_template
    config_file.write_text(json.dumps(config, indent=2))
    return out_dir


def _save(model, proc, out_dir: str | Path) -> Path:
    # Build next to the target and rename into place, so a reader never sees a half-written checkpoint.
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(tmp)
    proc.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
