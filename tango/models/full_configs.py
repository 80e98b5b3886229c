"""Real architectures of the full-size models (three 7B, Qwen3-VL-8B) as transformers config objects, plus offline
processors of real size.

Nothing is downloaded: the configs are typed in here, weights are never loaded (build on the ``meta`` device for
shape / parameter / FLOPs checks, or with random weights on a GPU for latency, ``scripts/bench_prefill.py``). The
processors use the harness's offline byte-level tokenizer (``tango.models.tiny.byte_tokenizer``) with the real image /
video processor sizes, so the prompt's *token counts* of the visual span are the real ones; the text part of the
prompt is shorter than with the real tokenizer, which does not matter for latency (a few dozen tokens).

Sources of the numbers (public, checked with the harness's code search; each is cited again next to its value):

- [Q2] Qwen2-7B(-Instruct) ``config.json`` as printed in github.com/Retruth/deontic ``nlp_models/qwen2/README.md``:
  hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads, rope_theta 1e6, rms_norm_eps 1e-6,
  max_position_embeddings 32768, untied embeddings, and the module print ``Embedding(152064, 3584)`` /
  ``lm_head 3584 -> 152064``.
- [SIG] SigLIP-so400m-patch14 dimensions (hidden 1152, intermediate 4304, 16 heads, 27 layers, patch 14) from
  github.com/pypi-data/pypi-mirror-367 ``kvmm/models/siglip/config.py`` (``SigLIPSo400mP14``); image size 384 from the
  checkpoint name ``google/siglip-so400m-patch14-384``; 26 of 27 layers in LLaVA-OV / llava-hf from
  LLaVA-NeXT's ``llava/model/multimodal_encoder/siglip_encoder.py`` (github.com/LLaVA-VL/LLaVA-NeXT: it deletes
  the last layer) and
  transformers 5.23's own ``LlavaOnevisionConfig()`` default vision config (26 layers, 1152 / 4304 / 16 heads,
  384 px, patch 14, ``vision_feature_layer=-1``, ``"full"``), whose docstring names
  ``llava-hf/llava-onevision-qwen2-7b-ov-hf``.
- [OV] LLaVA-OV / LLaVA-Video facts (mlp2x_gelu projector 1152 -> 3584, bilinear 14x14 pooling + one newline for OV,
  2x2 average pooling 13x13 + one newline per row for LLaVA-Video): LLaVA-NeXT's ``llava/model/llava_arch.py``
  (``get_2dPool``, ``add_token_per_grid`` / ``add_token_per_frame``) and the llava-hf ports in transformers 5.23.
- [QVL] Qwen2.5-VL-7B-Instruct module print in github.com/acproject/duorou ``docs/qwen2.5vl_graph.md`` (also
  github.com/wujinggrt/DendronNote ``llm.Qwen2_5-VL.md``): vision depth 32, hidden 1280 (``Conv3d(3, 1280,
  kernel_size=(2, 14, 14))``), qkv 1280 -> 3840, gated MLP 1280 -> 3420, RMSNorm, merger 5120 -> 5120 -> 3584;
  text: ``Embedding(152064, 3584)``, q 3584 -> 3584, k/v 3584 -> 512 (4 KV heads x 128), MLP 18944, 28 layers.
  ``window_size 112``, ``fullatt_block_indexes [7, 15, 23, 31]``, ``num_heads 16``, ``out_hidden_size 3584``,
  ``tokens_per_second 2``: a Qwen2.5-VL vision-config class transcribed from the checkpoint (code search result, repo
  not named) and transformers 5.23's ``Qwen2_5_VLVisionConfig`` defaults (same window / full-attention blocks /
  heads). ``mrope_section [16, 24, 24]`` with ``rope_theta 1e6``: TensorRT-LLM's Qwen2.5-VL-7B-Instruct test config
  (code search hit, ``"_name_or_path": ... "Qwen2.5-VL-7B-Instruct"``) and several Qwen2-VL / 2.5-VL configs.

- [Q3VL] Qwen3-VL-8B-Instruct: no primary ``config.json`` is reachable here; the values agree across three code-search
  hits that transcribe it (none names its repository): a Qwen3-VL architecture note quoting the checkpoint's config
  (text hidden 4096, 36 layers, 32 heads, 8 KV heads, ``max_position_embeddings`` 262144, ``rope_theta`` 5e6,
  interleaved ``mrope_section`` [24, 20, 20]; vision depth 27, hidden 1152, ``out_hidden_size`` 4096, patch 16,
  temporal patch 2, merge 2, ``deepstack_visual_indexes`` [8, 16, 24]), an mlx-vlm test config with
  ``model_type: qwen3_vl`` (the same text values plus ``intermediate_size`` 12288, ``head_dim`` 128, vocab 151936,
  untied embeddings), and a Swift test's "published vision shape" (vision intermediate 4304, 16 heads,
  ``num_position_embeddings`` 2304, ``gelu_pytorch_tanh``), which is also transformers 5.23's
  ``Qwen3VLVisionConfig`` default. Video processor (``video_preprocessor_config.json`` as several code-search hits
  print it for Qwen3-VL checkpoints): ``size`` shortest_edge 4096 / longest_edge 25165824 (a total over the clip),
  patch 16, merge 2, temporal patch 2, fps 2, 4..768 frames, mean / std 0.5. Checkpoints considered: Qwen3-VL-8B-
  Instruct (the one VidCom2's and FlashVID's Qwen3 scripts run, and the size the 2026 tables report); 4B / 2B
  share the design with other widths; 30B-A3B / 235B-A22B are MoE (``Qwen3VLMoe*``, a different text model).

Not verified against a primary source (stated here, as the brief asks):

- the llava-hf ports' exact ``vocab_size`` (the original lmms-lab checkpoints and Qwen2-7B use 152064; the llava-hf
  conversion may pad it differently). It only sizes the embedding table and the LM head, which runs on the last
  position at prefill: < 0.01% of prefill FLOPs, no latency effect.
- Qwen2.5-VL's ``rms_norm_eps`` (1e-6 used) and the vision ``tokens_per_second`` (2 used; transformers' default is
  4): neither changes shapes or FLOPs; ``tokens_per_second`` only scales temporal M-RoPE ids.
- the real special-token ids (151646 / 151647 for LLaVA ``<image>`` / ``<video>``, 151655 / 151656 for Qwen's
  pads) are the defaults below, but :func:`full_config` with ``offline_ids=True`` replaces them by the byte
  tokenizer's ids so the offline processor and the model agree; ids do not affect latency.

LLaVA-OV / LLaVA-Video with ``with_head=True`` (the default for the benchmark) add SigLIP's attention-pooling head
(``vision_use_head``): the llava-hf towers have none, but Tango's attention source reads it (the adapter loads it from
the SigLIP checkpoint, see ``tango/models/llava_ov.py``). Its cost is < 1% of the tower's and it is counted by
``tango.flops.siglip_flops(with_head=True)``.
"""

from __future__ import annotations

import math

# Qwen2-7B text model [Q2] (LLaVA-OV-7B and LLaVA-Video-7B are built on it; Qwen2.5-VL-7B's text model has the same
# dimensions [QVL]).
QWEN2_7B_TEXT = dict(
    vocab_size=152064,            # [Q2] Embedding(152064, 3584); llava-hf port's value not verified (see docstring)
    hidden_size=3584,             # [Q2]
    intermediate_size=18944,      # [Q2]
    num_hidden_layers=28,         # [Q2]
    num_attention_heads=28,       # [Q2]
    num_key_value_heads=4,        # [Q2] GQA, k/v 3584 -> 512
    max_position_embeddings=32768,  # [Q2]
    rms_norm_eps=1e-6,            # [Q2]
    tie_word_embeddings=False,    # [Q2]
    hidden_act="silu",            # [Q2]
)
ROPE_THETA = 1_000_000.0          # [Q2] rope_theta 1000000.0; Qwen2.5-VL-7B likewise [QVL]

# SigLIP-so400m-patch14-384 as the llava-hf tower (last of 27 layers removed) [SIG].
SIGLIP_SO400M_26 = dict(
    hidden_size=1152,             # [SIG]
    intermediate_size=4304,       # [SIG]
    num_hidden_layers=26,         # [SIG] 27 - 1 (LLaVA-NeXT drops the last layer; llava-hf stores 26)
    num_attention_heads=16,       # [SIG]
    image_size=384,               # [SIG] checkpoint name
    patch_size=14,                # [SIG]
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)

# Qwen2.5-VL-7B vision tower [QVL].
QWEN25_VL_7B_VISION = dict(
    depth=32,                     # [QVL] 32 x Qwen2_5_VLVisionBlock
    hidden_size=1280,             # [QVL] Conv3d(3, 1280, ...)
    intermediate_size=3420,       # [QVL] gate/up 1280 -> 3420
    num_heads=16,                 # [QVL]
    out_hidden_size=3584,         # [QVL] merger 5120 -> 3584
    patch_size=14,                # [QVL] kernel (2, 14, 14)
    temporal_patch_size=2,        # [QVL]
    spatial_merge_size=2,         # [QVL] merger input 5120 = 4 x 1280
    window_size=112,              # [QVL]
    fullatt_block_indexes=[7, 15, 23, 31],  # [QVL]
    tokens_per_second=2,          # [QVL] (not shape-relevant)
    hidden_act="silu",            # [QVL] act_fn SiLU
    in_channels=3,
)
MROPE_SECTION = [16, 24, 24]      # [QVL]

# Qwen3-VL-8B-Instruct [Q3VL].
QWEN3_VL_8B_TEXT = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6, hidden_act="silu",
    attention_bias=False,
    rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                     "mrope_interleaved": True},
)
QWEN3_VL_8B_VISION = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16, temporal_patch_size=2,
    spatial_merge_size=2, out_hidden_size=4096, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24],
    hidden_act="gelu_pytorch_tanh", in_channels=3,
)
#: the checkpoint's video processor [Q3VL]; ``size`` bounds the pixels of the whole clip, not of one frame.
QWEN3_VL_VIDEO_PROCESSOR = dict(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16,
                                temporal_patch_size=2, merge_size=2, fps=2, min_frames=4, max_frames=768,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])

REAL_TOKEN_IDS = {
    "llava": {"image_token_index": 151646, "video_token_index": 151647},
    "qwen": {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
             "vision_end_token_id": 151653},
}


def _offline_ids(style: str) -> dict:
    from tango.models.tiny import byte_tokenizer

    tok = byte_tokenizer(style)
    if style == "llava":
        return {"image_token_index": tok.convert_tokens_to_ids("<image>"),
                "video_token_index": tok.convert_tokens_to_ids("<video>"),
                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def llava_ov_7b_config(with_head: bool = True, offline_ids: bool = False):
    """``LlavaOnevisionConfig`` of LLaVA-OneVision-7B (``llava-hf/llava-onevision-qwen2-7b-ov-hf``)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    ids = _offline_ids("llava") if offline_ids else dict(REAL_TOKEN_IDS["llava"])
    special = {k: ids.pop(k) for k in ("eos_token_id", "pad_token_id") if k in ids}
    vision = SiglipVisionConfig(**SIGLIP_SO400M_26, vision_use_head=with_head)
    text = Qwen2Config(**QWEN2_7B_TEXT, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                       bos_token_id=None, **special)
    side = SIGLIP_SO400M_26["image_size"]
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="full",
                                vision_feature_layer=-1, projector_hidden_act="gelu",  # [OV] mlp2x_gelu
                                image_grid_pinpoints=[[side * i, side * j] for i in range(1, 7) for j in range(1, 7)],
                                tie_word_embeddings=False, **ids)


def llava_video_7b_config(with_head: bool = True, offline_ids: bool = False):
    """LLaVA-Video-7B-Qwen2: the LLaVA-OV-7B architecture (same tower, projector and LLM [OV]); its different
    pooling (2x2 average) and newline layout (one per row) live in the adapter (``LlavaVideo``)."""
    return llava_ov_7b_config(with_head=with_head, offline_ids=offline_ids)


def qwen2_5_vl_7b_config(offline_ids: bool = False):
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-7B-Instruct."""
    from transformers import Qwen2_5_VLConfig

    ids = _offline_ids("qwen") if offline_ids else dict(REAL_TOKEN_IDS["qwen"])
    special = {k: ids.pop(k) for k in ("eos_token_id", "pad_token_id") if k in ids}
    text = dict(QWEN2_7B_TEXT, max_position_embeddings=128000, bos_token_id=None, **special,
                rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": MROPE_SECTION})
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(QWEN25_VL_7B_VISION), **ids)


def qwen3_vl_8b_config(offline_ids: bool = False):
    """``Qwen3VLConfig`` of Qwen3-VL-8B-Instruct [Q3VL]."""
    from transformers import Qwen3VLConfig

    ids = _offline_ids("qwen") if offline_ids else dict(REAL_TOKEN_IDS["qwen"])
    special = {k: ids.pop(k) for k in ("eos_token_id", "pad_token_id") if k in ids}
    return Qwen3VLConfig(text_config=dict(QWEN3_VL_8B_TEXT, **special), vision_config=dict(QWEN3_VL_8B_VISION),
                         tie_word_embeddings=False, **ids)


def full_config(family: str, offline_ids: bool = False, **kwargs):
    """The full-size config of ``family`` (its adapter's ``spec.full_config``); ``offline_ids`` makes its
    special-token ids those of :func:`build_processor`."""
    from tango.models.base import family_spec

    return family_spec(family).full_config(offline_ids=offline_ids, **kwargs)


def model_class(family: str):
    import transformers

    from tango.models.base import family_spec

    return getattr(transformers, family_spec(family).hf_class)


def meta_model(family: str, **kwargs):
    """The 7B model on the ``meta`` device: real shapes, no storage (safe on any machine)."""
    import torch

    cfg = full_config(family, **kwargs)
    with torch.device("meta"):
        return model_class(family)(cfg)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_processor(family: str):
    """Offline processor with the real visual sizes and the byte-level tokenizer (use with ``offline_ids=True``);
    the adapter's ``spec.offline_processor``."""
    from tango.models.base import family_spec

    return family_spec(family).offline_processor()


def llava_processor():
    """LLaVA-OV / LLaVA-Video: 384 x 384 frames (``LlavaOnevisionVideoProcessor``), 729 patches per image."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    from tango.models.chat_templates import LLAVA_PROCESSOR_TEMPLATE, QWEN2_TOKENIZER_TEMPLATE
    from tango.models.tiny import byte_tokenizer

    side, patch = SIGLIP_SO400M_26["image_size"], SIGLIP_SO400M_26["patch_size"]
    pinpoints = [[side * i, side * j] for i in range(1, 7) for j in range(1, 7)]
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": side, "width": side},
                                                     image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": side, "width": side}),
        tokenizer=byte_tokenizer("llava", chat_template=QWEN2_TOKENIZER_TEMPLATE),
        num_image_tokens=(side // patch) ** 2,
        vision_feature_select_strategy="full", chat_template=LLAVA_PROCESSOR_TEMPLATE)


def qwen2_5_vl_processor():
    """Qwen2.5-VL: ``Qwen2VLVideoProcessor`` with its defaults (``shortest_edge`` 128*28*28, ``longest_edge``
    768*28*28 pixels per frame, the qwen-vl-utils ``VIDEO_MIN_PIXELS`` / ``VIDEO_MAX_PIXELS``), patch 14, merge 2,
    temporal patch 2."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from tango.models.chat_templates import QWEN2_5_VL_TEMPLATE
    from tango.models.tiny import byte_tokenizer

    v = QWEN25_VL_7B_VISION
    pix = dict(patch_size=v["patch_size"], temporal_patch_size=v["temporal_patch_size"],
               merge_size=v["spatial_merge_size"])
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pix), video_processor=Qwen2VLVideoProcessor(**pix),
        tokenizer=byte_tokenizer("qwen"), chat_template=QWEN2_5_VL_TEMPLATE)


def qwen3_vl_processor():
    """Qwen3-VL: ``Qwen3VLVideoProcessor`` with the checkpoint's settings [Q3VL] and the offline byte tokenizer; the
    chat template emits ``<|vision_start|><|video_pad|><|vision_end|>`` per video, as the checkpoint's does."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from tango.models.chat_templates import QWEN3_VL_TEMPLATE
    from tango.models.tiny import byte_tokenizer

    v = QWEN3_VL_VIDEO_PROCESSOR
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**{k: v[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                                                   "image_mean", "image_std")}),
        video_processor=Qwen3VLVideoProcessor(**v), tokenizer=byte_tokenizer("qwen"),
        chat_template=QWEN3_VL_TEMPLATE)


# ---- visual token counts (analytical, from the config) --------------------------------------------------------------

def llava_video_span(config, frames: int, family: str = "llava_ov") -> dict[str, int]:
    """Visual tokens of ``frames`` frames before pruning: ``{"visual": ..., "newlines": ..., "span": ...}``.
    LLaVA-OV: ``ceil(side/2)^2`` per frame (bilinear) + 1 newline; LLaVA-Video: ``floor(side/2)^2`` per frame
    (2x2 average) + one newline per pooled row."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    if family == "llava_ov":
        g = math.ceil(side / 2)
        visual, newlines = frames * g * g, 1
    elif family == "llava_video":
        g = side // 2
        visual, newlines = frames * g * g, frames * g
    else:
        raise ValueError(f"family {family!r} is not a LLaVA family")
    return {"visual": visual, "newlines": newlines, "span": visual + newlines}


def qwen_video_grid(config, frames: int, height: int, width: int,
                    min_pixels: int = 128 * 28 * 28, max_pixels: int = 768 * 28 * 28) -> tuple[int, int, int]:
    """``(grid_t, grid_h, grid_w)`` in patches for ``frames`` frames of ``height x width`` (``smart_resize`` of
    the Qwen2-VL video processor; odd frame counts are padded to the temporal patch)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return math.ceil(frames / v.temporal_patch_size), h // v.patch_size, w // v.patch_size


def qwen_video_tokens(config, frames: int, height: int, width: int, **kwargs) -> int:
    t, h, w = qwen_video_grid(config, frames, height, width, **kwargs)
    return t * h * w // config.vision_config.spatial_merge_size ** 2


def qwen3_video_grid(config, frames: int, height: int, width: int, min_pixels: int = 4096,
                     max_pixels: int = 25165824, max_video_tokens: int = 768) -> tuple[int, int, int]:
    """``(grid_t, grid_h, grid_w)`` in patches for ``frames`` frames of ``height x width`` through the Qwen3-VL video
    processor with ``cap_pixels_per_frame=True`` (the qwen-vl-utils per-frame cap the harness always passes):
    ``max_pixels`` bounds the whole clip, each frame at most ``max_video_tokens`` merge units; odd frame counts are
    padded to the temporal patch."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    per_frame = max(min(max_video_tokens * factor * factor, max_pixels // frames), int(min_pixels * 1.05))
    h, w = smart_resize(frames, height, width, temporal_factor=v.temporal_patch_size, factor=factor,
                        min_pixels=min_pixels, max_pixels=per_frame * frames)
    return math.ceil(frames / v.temporal_patch_size), h // v.patch_size, w // v.patch_size


def qwen3_video_tokens(config, frames: int, height: int, width: int, **kwargs) -> int:
    t, h, w = qwen3_video_grid(config, frames, height, width, **kwargs)
    return t * h * w // config.vision_config.spatial_merge_size ** 2
