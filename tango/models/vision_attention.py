"""The Qwen vision towers' attention sources (``PruningMethod.attention_source``) as pure functions of one video's
queries and keys, shared by the harness's adapters (:mod:`tango.models.qwen2_5_vl`, :mod:`tango.models.qwen3_vl`,
which recompute ``q``/``k`` with transformers) and the vLLM plugin (``integrations/vllm``, which recomputes them
inside vLLM's encoder). Torch only: no transformers, so the plugin's environment (another transformers) imports it.

Common arguments of the sources:

- ``q``, ``k``: ``[S, H, hd]`` the block's queries and keys after RoPE; ``k_raw``: ``[S, H, hd]`` the keys before
  RoPE. One video, ``S = T * h * w`` patches in the tower's row order, in which temporal patches are contiguous
  (windows never cross them: rows ``[i h w, (i+1) h w)`` are temporal patch ``i``) and each merge unit is ``unit``
  consecutive rows.
- ``grid_thw``: ``(T, h, w)`` the video's patch grid; ``unit``: ``spatial_merge_size ** 2``; ``scaling``: the
  block's softmax scale (``hd ** -0.5``).
- ``to_raster``: ``rows [T * L, ...]`` merged tokens in the tower's order -> ``[T, L, ...]`` raster order of the
  merged grid (Qwen2.5-VL: :func:`unwindow`; Qwen3-VL: a plain view).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ToRaster = Callable[[torch.Tensor], torch.Tensor]


def unwindow(rows: torch.Tensor, window_index: torch.Tensor, t: int) -> torch.Tensor:
    """``rows [T * L, ...]`` merged tokens in Qwen2.5-VL's window order (row ``i`` is raster merged token
    ``window_index[i]``) -> ``[T, L, ...]`` raster order."""
    return rows[torch.argsort(window_index.to(rows.device))].view(t, -1, *rows.shape[1:])


def pooling_head_attention(q: torch.Tensor, k: torch.Tensor, k_raw: torch.Tensor | None, grid_thw: tuple[int, int, int],
                           unit: int, scaling: float, to_raster: ToRaster) -> dict[str, torch.Tensor]:
    """Tango's Qwen saliency (``"pooling_head"``): per temporal patch all patch queries are averaged into one query
    per head, keys are averaged over each merge unit, ``softmax(q k^T * scaling)`` over that temporal patch's merged
    tokens, mean over heads. ``k_raw`` is unused. Returns ``attn [T, L]`` fp32, each row summing to 1."""
    t, h, w = grid_thw
    heads, hd = q.shape[1:]
    q = q.float().transpose(0, 1).reshape(heads, t, h * w, hd).mean(2, keepdim=True)      # [H, T, 1, hd]
    k = k.float().transpose(0, 1).reshape(heads, t, h * w // unit, unit, hd).mean(3)       # [H, T, L, hd]
    weights = torch.softmax((q @ k.transpose(-1, -2)) * scaling, dim=-1)                   # [H, T, 1, L]
    return {"attn": to_raster(weights[:, :, 0].mean(0).reshape(-1))}


def last_layer_attention(q: torch.Tensor, k: torch.Tensor, k_raw: torch.Tensor, grid_thw: tuple[int, int, int],
                         unit: int, scaling: float, to_raster: ToRaster) -> dict[str, torch.Tensor]:
    """VisionZip's source (``"last_layer"``): ``attn [T, L]`` the attention each patch receives within its temporal
    patch (softmax over that temporal patch's patches, mean over heads and queries), then the mean over each merge
    unit (rows sum to ``1 / unit``); ``metric [T, L, hd]`` the keys **before** RoPE (content only), mean over heads
    and over the merge unit. Frame by frame: ``[H, h w, h w]`` at a time."""
    _, h, w = grid_thw
    n = h * w
    received = torch.cat([
        torch.softmax((qf.transpose(0, 1) @ kf.permute(1, 2, 0)).float() * scaling, dim=-1).mean(dim=(0, 1))
        for qf, kf in zip(q.split(n), k.split(n))])                                        # [S], tower order
    attn = received.view(-1, unit).mean(1)
    metric = k_raw.float().mean(1).view(-1, unit, k_raw.shape[-1]).mean(1)
    return {"attn": to_raster(attn), "metric": to_raster(metric)}


#: ``attention_source`` -> its function (all with the signature above).
ATTENTION_SOURCES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "pooling_head": pooling_head_attention, "last_layer": last_layer_attention}
