"""Analytical prefill FLOPs from the model config and the realized token counts, in two conventions.

**exact** (``tflops_*`` fields; 1 multiply-add = 2 FLOPs), chosen to match ``torch.utils.flop_counter.FlopCounterMode``
on the eager model exactly (tested): every linear layer counts ``2 * tokens * d_in * d_out``; attention counts
``QK^T`` and ``AV`` over the full ``n x n`` square (what a dense kernel computes; causal kernels skip about half of
it); norms, activations, softmax and RoPE are not counted; at prefill the LM head runs on the last position only
(``logits_to_keep=1``).

**paper** (``tflops_llm_paper``): the per-layer formula of FastV (Chen et al., ECCV 2024, §4),
``4 n d^2 + 2 n^2 d + 2 n d m`` summed over the decoder layers (``n`` tokens at that layer, ``d`` hidden size, ``m``
MLP intermediate size), LLM only, as a count of multiply-adds. It ignores grouped KV heads and the third SwiGLU
matrix; it is the convention of the tables of FastV, HoliTom and FastVID (HoliTom: 40.8 T for LLaVA-OV-7B at 32
frames), so harness numbers can be set beside theirs.
"""

from __future__ import annotations

from collections.abc import Sequence


def _get(cfg, name, default=None):
    return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def decoder_layer_flops(text_cfg, n: int) -> float:
    """One Qwen2-style decoder layer (GQA attention + SwiGLU MLP) on ``n`` tokens."""
    d, h = _get(text_cfg, "hidden_size"), _get(text_cfg, "num_attention_heads")
    kv = _get(text_cfg, "num_key_value_heads", h)
    hd = _get(text_cfg, "head_dim") or d // h
    proj = 2 * n * d * (2 * h * hd + 2 * kv * hd)          # q, o + k, v
    attn = 2 * 2 * n * n * h * hd                            # QK^T and AV
    mlp = 3 * 2 * n * d * _get(text_cfg, "intermediate_size")
    return float(proj + attn + mlp)


def llm_prefill_flops(text_cfg, tokens_per_layer: int | Sequence[int]) -> float:
    """Decoder prefill: ``tokens_per_layer`` is the sequence length (int, same for every layer) or one length per
    layer (in-LLM pruning). Includes the LM head on the last position."""
    layers = _get(text_cfg, "num_hidden_layers")
    counts = [tokens_per_layer] * layers if isinstance(tokens_per_layer, int) else list(tokens_per_layer)
    if len(counts) != layers:
        raise ValueError(f"got {len(counts)} per-layer token counts for a {layers}-layer decoder")
    head = 2 * _get(text_cfg, "hidden_size") * _get(text_cfg, "vocab_size")
    return sum(decoder_layer_flops(text_cfg, n) for n in counts) + head


def llm_prefill_macs_paper(text_cfg, tokens_per_layer: int | Sequence[int]) -> float:
    """Decoder prefill in the paper convention (module doc): ``sum_l 4 n_l d^2 + 2 n_l^2 d + 2 n_l d m``, MACs."""
    layers = _get(text_cfg, "num_hidden_layers")
    counts = [tokens_per_layer] * layers if isinstance(tokens_per_layer, int) else list(tokens_per_layer)
    if len(counts) != layers:
        raise ValueError(f"got {len(counts)} per-layer token counts for a {layers}-layer decoder")
    d, m = _get(text_cfg, "hidden_size"), _get(text_cfg, "intermediate_size")
    return float(sum(4 * n * d * d + 2 * n * n * d + 2 * n * d * m for n in counts))


def siglip_flops(vision_cfg, frames: int, with_head: bool = False) -> float:
    """SigLIP tower on ``frames`` images: patch embedding, encoder layers, optionally the attention-pooling head."""
    d, ff = _get(vision_cfg, "hidden_size"), _get(vision_cfg, "intermediate_size")
    p = _get(vision_cfg, "patch_size")
    n = (_get(vision_cfg, "image_size") // p) ** 2
    embed = 2 * n * 3 * p * p * d
    layer = 2 * n * d * 4 * d + 2 * 2 * n * n * d + 2 * 2 * n * d * ff
    total = embed + _get(vision_cfg, "num_hidden_layers") * layer
    if with_head:
        total += 2 * d * d + 2 * 2 * n * d * d + 2 * 2 * n * d + 2 * d * d + 2 * 2 * d * ff  # q, kv, attn, out, mlp
    return float(frames * total)


def llava_projector_flops(config, frames: int) -> float:
    """Two-layer MLP projector on every patch of every frame (it runs before LLaVA-OV's pooling)."""
    v, t = config.vision_config, config.text_config
    n = (v.image_size // v.patch_size) ** 2
    return float(frames * 2 * n * (v.hidden_size * t.hidden_size + t.hidden_size * t.hidden_size))


def llava_ov_prefill_flops(config, frames: int, tokens_per_layer: int | Sequence[int],
                           with_head: bool = False) -> dict[str, float]:
    """Prefill FLOPs of LLaVA-OV split into vision tower, projector and LLM."""
    return {"flops_vision": siglip_flops(config.vision_config, frames, with_head),
            "flops_projector": llava_projector_flops(config, frames),
            "flops_llm": llm_prefill_flops(config.text_config, tokens_per_layer)}
