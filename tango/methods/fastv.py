"""FastV: drop the least-attended visual tokens after decoder layer K, by the last prompt token's attention.

Paper: "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models" (ECCV'24), arXiv:2403.06764.
Reproduced: ``pkunlp-icler/FastV@d1659729b5bf1be225e99ee15783deeea80f63b1``, the HF llava-hf fork
``src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py::LlamaModel.fastv_forward``
(selection block at ``layer_idx == FASTV_k``). Parity is tested against that block (``tests/fixtures/fastv/``).

In-LLM method: ``prune`` is the identity at the LLM input (it only checks feasibility and records the plan);
:meth:`FastV.decoder_hooks` calls :func:`fastv_select` before layer ``K`` and drops the hidden states of the
unselected positions for layers ``>= K``, keeping **original** position ids (gather cos/sin by the kept positions).
The signal is layer ``K-1``'s attention row of the **last prompt token** over the full sequence, averaged over heads
(that one row is recomputed from the RoPE'd query/keys, GQA keys repeated, so SDPA/FA2 stay on:
``tango.hooks.ATTENTION_ROWS``).

Budget mapping: ``budget`` is the layer-averaged visual-token fraction. With ``L = num_layers`` decoder layers and
keep fraction ``f`` after layer ``K``, ``budget = (K + (L - K) * f) / L``, so ``f = (L * budget - K) / (L - K)``;
``f <= 0`` is infeasible (e.g. K = 3, budget = 0.1 on 28 layers) and raises. Kept after K:
``round(n_visual * f)`` with Python's half-to-even ``round``, as the reference's ``round(N * (1 - fastv_r))``.
``n_visual`` is the adapter's video span; HoliTom's LLaVA-OV port counts the single newline token too (6273).

Intentional deviations from the reference:

- the knob is the layer-averaged ``budget`` instead of the pruned fraction ``fastv_r`` (``1 - fastv_r = f``);
- the attention row is an argument (head-averaged here), not read from ``output_attentions`` of an eager layer;
- batch 1 as the reference (``attn`` is one sequence's row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tango.hooks import keep_positions
from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection


def fastv_keep_fraction(budget: float, layer: int, num_layers: int) -> float:
    """Fraction ``f`` of visual tokens kept after layer ``layer`` so that the layer average equals ``budget``."""
    budget = check_budget(budget)
    f = (num_layers * budget - layer) / (num_layers - layer)
    if f <= 0.0:
        raise ValueError(
            f"budget={budget!r} is infeasible for FastV with layer K={layer} of num_layers={num_layers}: layers 0..K-1 "
            f"see every visual token, so the layer-averaged budget must exceed K/num_layers={layer / num_layers:.4f} "
            f"(f=(num_layers*budget-K)/(num_layers-K)={f:.4f})"
        )
    return min(f, 1.0)


def fastv_num_keep(n_visual: int, keep_fraction: float) -> int:
    """Visual tokens kept after layer K: ``round(n_visual * f)`` (half-to-even, as the reference)."""
    return round(n_visual * keep_fraction)


def fastv_layer_counts(n_visual: int, num_keep: int, layer: int, num_layers: int) -> list[int]:
    """Visual tokens each decoder layer sees: ``n_visual`` for layers ``< K``, ``num_keep`` from ``K`` on."""
    return [n_visual] * layer + [num_keep] * (num_layers - layer)


def fastv_select(attn: Tensor, *, visual: Tensor, num_keep: int) -> Tensor:
    """Sequence positions kept from layer K on.

    Args:
        attn: ``[H, S]`` attention of the last prompt token at layer ``K-1`` over the ``S`` positions, per head
            (averaged here), or ``[S]`` already head-averaged.
        visual: ``[V]`` sorted positions of the prunable visual tokens (``DecoderView.visual_positions``; the
            reference's ``image_start .. image_start + image_len - 1``).
        num_keep: visual tokens kept (:func:`fastv_num_keep`).

    Returns:
        ``[S - V + num_keep]`` sorted long positions: every non-visual position and the ``num_keep`` most attended
        visual ones.
    """
    row = attn.mean(0) if attn.dim() == 2 else attn
    top = visual[row[visual].topk(num_keep).indices]
    return keep_positions(row.shape[0], visual, top)


@dataclass
class FastV(PruningMethod):
    """FastV: identity at the LLM input, selection at decoder layer ``layer`` (see module doc)."""

    name: str = "fastv"
    #: decoder layer K before which visual tokens are dropped; the signal is layer K-1's attention (paper: 2).
    layer: int = 2
    #: decoder layers of the LLM (Qwen2-7B: 28); sets the layer-averaged budget mapping.
    num_layers: int = 28

    stage = "in_llm"
    display_name = "FastV"
    color = "#E69F00"  # Okabe-Ito
    needs_attention = False

    def __post_init__(self) -> None:
        if self.num_layers < 2:
            raise ValueError(f"num_layers={self.num_layers!r} must be >= 2")
        if not 1 <= self.layer < self.num_layers:
            raise ValueError(f"layer={self.layer!r} is outside the valid range [1, num_layers-1={self.num_layers - 1}]")

    def check_feasible(self, budget: float, num_frames: int) -> None:
        """Layers 0..K-1 see every visual token: the budget must exceed ``K / num_layers``."""
        fastv_keep_fraction(check_budget(budget), self.layer, self.num_layers)

    def plan(self, n_visual: int, budget: float) -> dict:
        """Keep fraction, kept count and per-layer visual counts for ``n_visual`` tokens; raises if infeasible."""
        f = fastv_keep_fraction(budget, self.layer, self.num_layers)
        keep = n_visual if f == 1.0 else fastv_num_keep(n_visual, f)
        counts = fastv_layer_counts(n_visual, keep, self.layer, self.num_layers)
        return {"keep_fraction": f, "num_keep": keep, "layer_counts": counts,
                "tokens_layer_avg": sum(counts) / len(counts)}

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        """Identity at the LLM input; ``stats`` carry the in-LLM plan for ``N * L`` visual tokens."""
        n, length, _ = x.shape
        plan = self.plan(n * length, budget)
        sel = identity_selection(x)
        sel.stats.update(tokens_kept_after_layer=plan["num_keep"], tokens_layer_avg=plan["tokens_layer_avg"],
                         budget_rule="round(n*f) after layer K, f=(layers*budget-K)/(layers-K)",
                         keep_fraction=plan["keep_fraction"], layer=self.layer, num_layers=self.num_layers)
        return sel

    def select(self, attn: Tensor, *, visual: Tensor, budget: float) -> Tensor:
        """:func:`fastv_select` with the count of :meth:`plan` for the ``visual`` positions."""
        keep = self.plan(int(visual.numel()), budget)["num_keep"]
        return fastv_select(attn, visual=visual, num_keep=keep)

    def decoder_hooks(self, decoder, budget: float):
        """Drop the visual positions not selected by layer ``K-1``'s last-token attention from layer ``K`` on."""
        from tango.hooks import drop_tokens_after

        decoder.require_layers(self.num_layers, self.name)
        return drop_tokens_after(decoder.layers, self.layer, lambda row: self.select(
            row, visual=decoder.visual_positions.to(row.device), budget=budget), attention_row=decoder.attention_row)


__all__ = ["FastV", "fastv_keep_fraction", "fastv_layer_counts", "fastv_num_keep", "fastv_select"]
