"""In-LLM token dropping on Qwen2-style decoders through module hooks (no patched model code).

At prefill, a forward hook on ``layers[K-1].self_attn`` recomputes one attention row (the last prompt token's query
against that layer's RoPE'd, cached keys), so every layer keeps its SDPA / FA2 kernel; a selection function turns
the row into the sequence positions kept from layer ``K`` on. Forward pre-hooks on layers ``>= K`` then slice the
hidden states (layer ``K``), the RoPE ``(cos, sin)`` and any tensor mask to those positions, so kept tokens keep
their **original** positions. Layers ``< K`` keep the full KV cache, layers ``>= K`` the pruned one; decoding
continues from the unpruned length (``generate``'s ``position_ids``). Handles are always removed on exit.
Batch 1 (the harness answers one request at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor


def last_token_attention(attn_mod, kwargs: dict) -> Tensor:
    """``[H, S]`` attention of the last position over all ``S`` positions in ``attn_mod``'s layer, in fp32.

    Called after the layer's forward: its keys (post-RoPE) are already in the cache."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

    hs = kwargs["hidden_states"]
    cos, sin = kwargs["position_embeddings"]
    q = attn_mod.q_proj(hs[:, -1:]).view(hs.shape[0], 1, -1, attn_mod.head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    cache = kwargs.get("past_key_values")
    if cache is not None:
        k = cache.layers[attn_mod.layer_idx].keys
    else:  # no cache (use_cache=False): recompute this layer's RoPE'd keys
        k = attn_mod.k_proj(hs).view(hs.shape[0], hs.shape[1], -1, attn_mod.head_dim).transpose(1, 2)
        k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn_mod.num_key_value_groups)
    return torch.softmax((q @ k.transpose(-1, -2)).float() * attn_mod.scaling, dim=-1)[0, :, 0]


@contextmanager
def _attached(layers, k: int, on_row, pre):
    """``on_row`` as a forward hook on ``layers[k-1].self_attn`` and ``pre(i)`` as a forward pre-hook on every layer
    ``i >= k``; every handle is removed on exit, error or not."""
    handles = [layers[k - 1].self_attn.register_forward_hook(on_row, with_kwargs=True)]
    try:
        handles += [layers[i].register_forward_pre_hook(pre(i), with_kwargs=True) for i in range(k, len(layers))]
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def drop_tokens_after(layers, k: int, select: Callable[[Tensor], Tensor] | None = None,
                      transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None):
    """Drop sequence positions from decoder layer ``k`` on, chosen at prefill by ``select(row [H, S]) -> keep [S']``
    (sorted long positions), or by ``transform(hidden [1, S, D], row) -> (keep [S'], hidden [1, S', D])`` when the
    kept hidden states are also rewritten (Tango / HoliTom merge the dropped tokens into the kept ones). Yields a
    dict that receives ``keep``, ``seq_len`` and ``layer`` once prefill has run."""
    if not 1 <= k < len(layers):
        raise ValueError(f"in-LLM layer K={k} is outside the valid range [1, {len(layers) - 1}] for this decoder")
    if (select is None) == (transform is None):
        raise ValueError("pass exactly one of select and transform")
    state: dict = {"layer": k}

    def on_row(mod, args, kwargs, out):
        if "row" not in state:  # the first call of this context is the prefill
            state["seq_len"] = kwargs["hidden_states"].shape[1]
            state["row"] = last_token_attention(mod, kwargs)
            if select is not None:
                state["keep"] = select(state["row"])

    def pre(i):
        def hook(mod, args, kwargs):
            h = args[0]
            m = kwargs.get("attention_mask")
            cache = kwargs.get("past_key_values")
            prefill = cache is None or cache.get_seq_length(i) == 0
            if prefill and i == k:
                if transform is not None:
                    state["keep"], h = transform(h, state["row"])
                else:
                    h = h[:, state["keep"]]
            keep = state["keep"]
            if prefill:
                cos, sin = kwargs["position_embeddings"]
                kwargs["position_embeddings"] = (cos[:, keep], sin[:, keep])
                kwargs["position_ids"] = None  # only fed to the kernel; sliced ids would look like packed sequences
                if torch.is_tensor(m):
                    kwargs["attention_mask"] = m[..., keep, :][..., keep]
            elif torch.is_tensor(m):  # decode with an explicit mask (eager / padding): drop the pruned KV columns
                tail = torch.arange(state["seq_len"], m.shape[-1], device=m.device)
                kwargs["attention_mask"] = m[..., torch.cat([keep, tail])]
            return (h, *args[1:]), kwargs
        return hook

    with _attached(layers, k, on_row, pre):
        yield state


@contextmanager
def restrict_decode_attention(layers, k: int, select: Callable[[Tensor], Tensor | None]):
    """Decode-time KV selection (DyCoke stage 2): at every decode step, ``select(row [H, S])`` on layer ``k-1``'s
    attention row of the new token over the whole cache returns the positions layers ``>= k`` may attend to (or
    None: the full cache). The cache itself stays whole, as in the reference; the selection is applied as an
    attention mask, so outputs equal attending over the gathered subset, but the decode attention FLOPs the
    reference saves by gathering are not saved here. Yields counters ``steps`` and ``pruned_steps``."""
    if not 1 <= k < len(layers):
        raise ValueError(f"decode-time KV layer L={k} is outside the valid range [1, {len(layers) - 1}]")
    state: dict = {"steps": 0, "pruned_steps": 0, "step_keep": None}

    def on_row(mod, args, kwargs, out):
        if kwargs["hidden_states"].shape[1] != 1:  # prefill: stage 2 acts on decode steps only
            state["step_keep"] = None
            return
        state["step_keep"] = select(last_token_attention(mod, kwargs))
        state["steps"] += 1
        state["pruned_steps"] += state["step_keep"] is not None

    def pre(i):
        def hook(mod, args, kwargs):
            keep = state["step_keep"]
            if keep is None or args[0].shape[1] != 1:
                return None
            kv_len = kwargs["past_key_values"].get_seq_length(i) + 1  # this layer's keys once the new one is added
            if keep.numel() == kv_len:  # nothing excluded: leave the kernel choice untouched
                return None
            allowed = torch.zeros(kv_len, dtype=torch.bool, device=args[0].device)
            allowed[keep] = True
            m = kwargs.get("attention_mask")
            if m is None:
                kwargs["attention_mask"] = allowed.view(1, 1, 1, kv_len)
            elif m.dtype == torch.bool:
                kwargs["attention_mask"] = m & allowed
            else:  # additive float mask (eager)
                kwargs["attention_mask"] = m.masked_fill(~allowed, torch.finfo(m.dtype).min)
            return args, kwargs
        return hook

    with _attached(layers, k, on_row, pre):
        yield state


def method_hooks(method, layers, *, image_start: int, image_len: int, budget: float):
    """The decoder hooks a method needs, as a context manager yielding its state dict.

    Args:
        image_start / image_len: the prunable visual span in the prompt the LLM sees.
    """
    if method.stage == "pre_llm" or budget >= 1.0:  # at budget 1 every method is the identity
        return nullcontext({})
    if method.stage == "in_llm" and hasattr(method, "select"):  # FastV: drop at layer K
        if method.num_layers != len(layers):
            raise ValueError(f"method.num_layers={method.num_layers} but this model's decoder has {len(layers)} "
                             f"layers; set it in configs/model_method/<model>_{method.name}.yaml")
        return drop_tokens_after(layers, method.layer, lambda row: method.select(
            row, image_start=image_start, image_len=image_len, budget=budget))
    if method.stage == "both" and hasattr(method, "kv_select"):  # DyCoke: TTM before, KV selection while decoding
        if not method.kv_pruning:
            return nullcontext({})
        start, length = method.kv_image_span(image_start, image_len)
        prev: dict = {"attn": None}

        def select(row):
            step = method.kv_select(row, prev["attn"], image_start=start, image_len=length)
            prev["attn"] = step.image_attn
            return step.keep
        return restrict_decode_attention(layers, method.kv_layer, select)
    if method.stage == "both" and hasattr(method, "inner_llm_select"):  # Tango on LLaVA-Video: prune + merge at K
        if method.num_layers != len(layers):
            raise ValueError(f"method.num_layers={method.num_layers} but this model's decoder has {len(layers)} "
                             f"layers; set it in configs/model_method/<model>_{method.name}.yaml")
        if not method.inner_llm_active(budget):
            return nullcontext({})
        end = image_start + image_len

        def transform(h, row):
            local, merged = method.inner_llm_select(h[:, image_start:end], row.mean(0)[image_start:end])
            pos = torch.arange(h.shape[1], device=h.device)
            keep = torch.cat([pos[:image_start], local + image_start, pos[end:]])
            return keep, torch.cat([h[:, :image_start], merged.to(h.dtype), h[:, end:]], dim=1)
        return drop_tokens_after(layers, method.inner_layer, transform=transform)
    raise NotImplementedError(
        f"method {method.name!r} acts inside the LLM in a way this adapter does not wire yet (stage "
        f"{method.stage!r}; e.g. Tango's LLaVA-Video inner stage)")
