#!/usr/bin/env python
"""Analytical prefill FLOPs of a full-size model, in both conventions (``tango/flops.py``), without weights.

    python scripts/flops.py --model llava_ov --frames 32 --method none
    python scripts/flops.py --model llava_ov --frames 32 --method tango --budget 0.1
    python scripts/flops.py --model qwen2_5_vl --frames 32 --frame-hw 448 448 --method fastv --budget 0.25

``exact``: what the runner records per request (``tflops_*``: FLOPs = 2 x multiply-adds, dense attention square).
``paper``: FastV's per-layer formula as multiply-adds, the convention of the FastV / HoliTom / FastVID tables
(``tflops_llm_paper``). The last line is ``llm_prefill_paper_T=<number>``.

Token counts: the family's analytic video tokens (``FamilySpec.video_tokens``) plus ``--text-tokens`` (default 0, as
the papers' vanilla figures count the video only). A pre-LLM method keeps ``round(budget * visual)`` visual tokens
at every layer (the ideal count: the realised one is in each run's record); FastV keeps every token up to layer K
and its plan's count after (per-model K from ``configs/model_method``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango.flops import llm_prefill_macs_paper  # noqa: E402
from tango.methods import METHODS  # noqa: E402
from tango.models.base import ADAPTERS, family_spec  # noqa: E402


def tokens_per_layer(model: str, method: str, budget: float, visual: int, layout: int, text: int) -> int | list[int]:
    """The sequence length each decoder layer sees at prefill (an int: the same at every layer)."""
    from tango.bench import method_for

    m = method_for(model, method)  # with its per-model settings, as run.py composes them
    if method == "none" or budget >= 1.0:
        return visual + layout + text
    if m.stage == "in_llm":  # FastV: the prunable span is the visual tokens and the layout after them
        return [n + text for n in m.plan(visual + layout, budget)["layer_counts"]]
    if m.stage == "pre_llm":
        return round(budget * visual) + layout + text
    raise SystemExit(f"--method {method} on {model} acts before and inside the LLM (stage {m.stage!r}); its "
                     f"per-layer counts depend on the run: read tflops_llm_paper from a run's record")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(ADAPTERS), help="model family (full-size config)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--method", default="none", choices=sorted(METHODS))
    p.add_argument("--budget", type=float, default=1.0, help="fraction of visual tokens the LLM sees")
    p.add_argument("--text-tokens", type=int, default=0, help="prompt text tokens besides the video")
    p.add_argument("--frame-hw", type=int, nargs=2, default=(448, 448), metavar=("H", "W"),
                   help="frame size before the processor's resize (Qwen2.5-VL only)")
    args = p.parse_args(argv)
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget {args.budget} is outside the valid range (0, 1]")

    spec = family_spec(args.model)
    config = spec.full_config()
    visual, layout = spec.video_tokens(config, args.frames, tuple(args.frame_hw))
    per_layer = tokens_per_layer(args.model, args.method, args.budget, visual, layout, args.text_tokens)
    exact = spec.prefill_flops(config, args.frames, per_layer, tuple(args.frame_hw))
    paper = llm_prefill_macs_paper(config.text_config, per_layer)
    first = per_layer if isinstance(per_layer, int) else per_layer[0]
    last = per_layer if isinstance(per_layer, int) else per_layer[-1]
    print(f"model {args.model} ({spec.display_name}), {args.frames} frames, method {args.method}, budget "
          f"{args.budget:g}")
    print(f"tokens: {visual} visual + {layout} layout + {args.text_tokens} text; LLM sees {first} at layer 0, "
          f"{last} at the last layer")
    print("exact (FLOPs, 2 per multiply-add): " + ", ".join(f"{k.removeprefix('flops_')}_T={v / 1e12:.3f}"
                                                            for k, v in exact.items())
          + f", prefill_T={sum(exact.values()) / 1e12:.3f}")
    print("paper (FastV's formula, multiply-adds, LLM only): sum_l 4 n d^2 + 2 n^2 d + 2 n d m")
    print(f"llm_prefill_paper_T={paper / 1e12:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
