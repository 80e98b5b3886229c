"""Decoder hooks for methods that act inside the LLM (no patched model code), and what they see of the decoder.

A method with an in-LLM stage implements ``PruningMethod.decoder_hooks(decoder, budget)`` with the primitives here:

- :func:`drop_tokens_after` -- at prefill, a forward hook on ``layers[K-1].self_attn`` recomputes one attention row
  (the last prompt token's query against that layer's cached, position-encoded keys), so every layer keeps its SDPA /
  FA2 kernel; a selection function turns the row into the positions kept from layer ``K`` on. Forward pre-hooks on
  layers ``>= K`` slice the hidden states (layer ``K``), the rotary ``(cos, sin)`` and any tensor mask to those
  positions, so kept tokens keep their **original** positions. Layers ``< K`` keep the full KV cache, layers ``>= K``
  the pruned one; decoding continues from the unpruned length (``generate``'s ``position_ids``).
- :func:`restrict_decode_attention` -- decode-time KV selection through an attention mask.

The adapter describes its decoder with a :class:`DecoderView`: the layers, the visual span, and the attention-row
helper of its architecture (``ATTENTION_ROWS``, keyed by ``config.model_type``; an architecture without one is an
error, never a Qwen2 guess). Handles are always removed on exit. Batch 1 (the harness answers one request at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


def qwen2_attention_row(attn_mod, kwargs: dict) -> Tensor:
    """``[H, S]`` attention of the last position over all ``S`` positions in a Qwen2-style layer (q/k projections
    with bias, rotary embedding from the layer's ``position_embeddings``, grouped KV heads), in fp32.

    Called after the layer's forward: its keys (post-RoPE) are already in the cache. Qwen2.5-VL's text layers get
    their M-RoPE ``(cos, sin)`` already expanded, so the same rotation applies."""
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


def qwen3_attention_row(attn_mod, kwargs: dict) -> Tensor:
    """:func:`qwen2_attention_row` for Qwen3-style layers (Qwen3-VL's text model): the query is RMS-normalised per
    head (``q_norm``) before the rotation, as the layer's forward does; keys come from the cache (already ``k_norm``'d
    and rotated) or are recomputed the same way. Interleaved M-RoPE is already folded into ``(cos, sin)``."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

    hs = kwargs["hidden_states"]
    cos, sin = kwargs["position_embeddings"]
    q = attn_mod.q_norm(attn_mod.q_proj(hs[:, -1:]).view(hs.shape[0], 1, -1, attn_mod.head_dim)).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    cache = kwargs.get("past_key_values")
    if cache is not None:
        k = cache.layers[attn_mod.layer_idx].keys
    else:
        k = attn_mod.k_norm(attn_mod.k_proj(hs).view(hs.shape[0], hs.shape[1], -1, attn_mod.head_dim)).transpose(1, 2)
        k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn_mod.num_key_value_groups)
    return torch.softmax((q @ k.transpose(-1, -2)).float() * attn_mod.scaling, dim=-1)[0, :, 0]


#: ``config.model_type`` of a decoder -> its attention-row helper ``(self_attn module, forward kwargs) -> [H, S]``.
#: Each entry is tested against the eager attention of its family (tests/models/test_inllm.py).
ATTENTION_ROWS: dict[str, Callable[[torch.nn.Module, dict], Tensor]] = {
    "qwen2": qwen2_attention_row,               # LLaVA-OneVision, LLaVA-Video
    "qwen2_5_vl_text": qwen2_attention_row,     # Qwen2.5-VL
    "qwen3_vl_text": qwen3_attention_row,       # Qwen3-VL (q_norm / k_norm)
}



def keep_positions(seq_len: int, visual: Tensor, kept_visual: Tensor) -> Tensor:
    """``[S']`` sorted positions kept: every position outside ``visual`` plus ``kept_visual`` (a subset of it)."""
    keep = torch.ones(seq_len, dtype=torch.bool, device=visual.device)
    keep[visual] = False
    keep[kept_visual] = True
    return keep.nonzero()[:, 0]


@dataclass
class DecoderView:
    """What a method's decoder hooks see of the loaded LLM, built by the adapter per request.

    Attributes:
        layers: the decoder layers (``nn.ModuleList``), each with a ``self_attn``.
        model_type: the decoder's ``config.model_type`` (picks the attention-row helper).
        visual_positions: ``[V]`` sorted long positions of the prunable visual tokens in the prompt the LLM sees.
            Layout tokens the family's reference never drops (a trailing newline, timestamp text between frames)
            are not in it, so text between frames is handled by construction.
    """

    layers: torch.nn.ModuleList
    model_type: str
    visual_positions: Tensor

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def attention_row(self) -> Callable[[torch.nn.Module, dict], Tensor]:
        if self.model_type not in ATTENTION_ROWS:
            raise NotImplementedError(
                f"no attention-row helper for decoder model_type={self.model_type!r}; in-LLM methods need one "
                f"(tango.hooks.ATTENTION_ROWS: {sorted(ATTENTION_ROWS)})")
        return ATTENTION_ROWS[self.model_type]

    def require_layers(self, num_layers: int, method: str) -> None:
        """A method whose budget mapping assumed ``num_layers`` decoder layers must run on such a decoder."""
        if num_layers != self.num_layers:
            raise ValueError(f"method.num_layers={num_layers} but this model's decoder has {self.num_layers} layers; "
                             f"set it in configs/model_method/<model>_{method}.yaml")


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
                      transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
                      attention_row: Callable[[torch.nn.Module, dict], Tensor] = qwen2_attention_row):
    """Drop sequence positions from decoder layer ``k`` on, chosen at prefill by ``select(row [H, S]) -> keep [S']``
    (sorted long positions), or by ``transform(hidden [1, S, D], row) -> (keep [S'], hidden [1, S', D])`` when the
    kept hidden states are also rewritten (Tango / HoliTom merge the dropped tokens into the kept ones). ``row`` comes
    from ``attention_row`` (``DecoderView.attention_row``). Yields a dict that receives ``keep``, ``seq_len`` and
    ``layer`` once prefill has run."""
    if not 1 <= k < len(layers):
        raise ValueError(f"in-LLM layer K={k} is outside the valid range [1, {len(layers) - 1}] for this decoder")
    if (select is None) == (transform is None):
        raise ValueError("pass exactly one of select and transform")
    state: dict = {"layer": k}

    def on_row(mod, args, kwargs, out):
        if "row" not in state:  # the first call of this context is the prefill
            state["seq_len"] = kwargs["hidden_states"].shape[1]
            state["row"] = attention_row(mod, kwargs)
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
def restrict_decode_attention(layers, k: int, select: Callable[[Tensor], Tensor | None],
                              attention_row: Callable[[torch.nn.Module, dict], Tensor] = qwen2_attention_row):
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
        state["step_keep"] = select(attention_row(mod, kwargs))
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


@contextmanager
def add_after_layers(layers, positions: Tensor, maps: list[Tensor], drop_state: dict):
    """Add ``maps[i] [V, D]`` to the prefill hidden states at ``positions [V]`` (sorted long, in the prompt the LLM
    sees) after decoder layer ``i`` -- Qwen3-VL's DeepStack injection (``Qwen3VLTextModel._deepstack_process``:
    ``h = h.clone(); h[mask] = h[mask] + map``, the same arithmetic, so bit-exact with the model's own path).

    Positions an in-LLM method dropped before layer ``i`` (``drop_state["keep"]`` from layer ``drop_state["layer"]``
    on) are skipped and the others are re-indexed into the shorter sequence, so every map stays aligned with the
    tokens it belongs to (the model's own injection has no notion of a drop and would fail on the length). Decode
    steps are untouched (the model adds DeepStack features at prefill only)."""
    done: set[int] = set()

    def hook_for(i):
        def hook(mod, args, out):
            if i in done:
                return None
            done.add(i)
            h = out.clone()
            pos, emb = positions.to(h.device), maps[i].to(h.device, h.dtype)
            keep = drop_state.get("keep")
            if keep is not None and i >= drop_state["layer"]:
                keep = keep.to(h.device)
                present = torch.isin(pos, keep)
                pos, emb = torch.searchsorted(keep, pos[present]), emb[present]
            h[0, pos] = h[0, pos] + emb
            return h
        return hook

    handles = []
    try:
        handles = [layers[i].register_forward_hook(hook_for(i)) for i in range(len(maps))]
        yield
    finally:
        for h in handles:
            h.remove()
