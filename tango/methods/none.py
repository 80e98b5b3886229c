"""The full-token model: every visual token reaches the LLM unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection


@dataclass
class NoPruning(PruningMethod):
    name: str = "none"
    stage = "pre_llm"
    display_name = "Full tokens"
    color = "#000000"  # Okabe-Ito

    servable = True

    def count(self, num_frames, tokens_per_frame, budget=1.0, grid=None) -> int:
        check_budget(budget)
        return num_frames * tokens_per_frame

    def prune(self, x: Tensor, *, budget: float = 1.0, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        check_budget(budget)
        return identity_selection(x)
