#!/usr/bin/env python
"""Train the tiny LLaVA-OneVision on the synthetic video task (offline, CPU), deterministically from a seed.

    python scripts/train_tiny.py                                  # the shipped run -> checkpoints/tiny_llava_ov_trained
                                                                  # (2400 steps of 16, ~45 min on 2 CPU cores)
    python scripts/train_tiny.py --smoke --out /tmp/tiny_smoke    # a few steps in seconds (CI)
    python scripts/train_tiny.py --eval-only --out checkpoints/tiny_llava_ov_trained --eval-seed 1234
    TANGO_RESULTS=results/tiny_trained python scripts/train_tiny.py --sweep --seeds 0 1 2   # accuracy vs budget

Writes a normal ``save_pretrained`` checkpoint + processor/tokenizer, ``train_log.jsonl`` (loss / train accuracy
every ``--log-every`` steps, held-out accuracy per question type every ``--eval-every`` steps) and
``train_summary.json``. See ``tango/train.py``. A sanity signal for pruning, not a substitute for real benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango.train import TRAIN_TYPES, TrainConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out_dir, help="checkpoint folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--question-types", nargs="+", default=list(TRAIN_TYPES))
    p.add_argument("--eval-seed", type=int, default=d.eval_seed)
    p.add_argument("--eval-docs", type=int, default=d.eval_docs)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--text-hidden", type=int, default=d.text_hidden)
    p.add_argument("--vision-hidden", type=int, default=d.vision_hidden)
    p.add_argument("--text-layers", type=int, default=d.text_layers)
    p.add_argument("--vision-layers", type=int, default=d.vision_layers)
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="weight of the auxiliary token-colour / frame-index losses (0: answer loss only)")
    p.add_argument("--aux-frame-layer", type=int, default=d.aux_frame_layer)
    p.add_argument("--drop-prob", type=float, default=d.drop_prob,
                   help="fraction of training videos shown with a random subset of their visual tokens")
    p.add_argument("--drop-keep", type=float, nargs=2, default=list(d.drop_keep), metavar=("LOW", "HIGH"),
                   help="kept fraction of such a video, uniform in [LOW, HIGH]")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help="3 steps of batch 2, 9 held-out docs (seconds)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint in --out on --eval-docs held-out docs of --eval-seed and exit")
    p.add_argument("--sweep", action="store_true",
                   help="run the accuracy-vs-budget sweep (none + methods x budgets x seeds) through the runner on "
                        "task=synthetic_pruning with model=tiny_llava_ov_trained, in this process; results under "
                        "$TANGO_RESULTS (default results/tiny_trained)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="sweep: evaluation seeds")
    p.add_argument("--methods", nargs="+", default=None, help="sweep: methods (default tango fastv visionzip dycoke)")
    p.add_argument("--budgets", nargs="+", type=float, default=None, help="sweep: budgets (default .05 .1 .2 .3 .5)")
    p.add_argument("--num-videos", type=int, default=100, help="sweep: videos per evaluation seed")
    p.add_argument("--sweep-extra", nargs="*", default=[], help="sweep: extra Hydra overrides for every cell")
    p.add_argument("--method-extra", nargs="*", default=[],
                   help="sweep: extra Hydra overrides for the method cells only (not the full-token run), e.g. "
                        "method.count_rule=exact experiment=exact_count 'variant={count_rule:exact}'")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = TrainConfig(out_dir=a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
                      question_types=tuple(a.question_types), eval_seed=a.eval_seed, eval_docs=a.eval_docs,
                      eval_every=a.eval_every, log_every=a.log_every, threads=a.threads, text_hidden=a.text_hidden,
                      vision_hidden=a.vision_hidden, text_layers=a.text_layers, vision_layers=a.vision_layers,
                      aux_weight=a.aux_weight, aux_frame_layer=a.aux_frame_layer, drop_prob=a.drop_prob,
                      drop_keep=tuple(a.drop_keep), progress=not a.no_progress)
    cfg.extra["command"] = " ".join(["python scripts/train_tiny.py", *(argv if argv is not None else sys.argv[1:])])
    if a.smoke:
        cfg.steps, cfg.batch_size, cfg.warmup, cfg.eval_docs, cfg.eval_every, cfg.log_every = 3, 2, 1, 9, 3, 1
    if a.sweep:
        import os

        os.environ.setdefault("TANGO_RESULTS", str(Path(__file__).resolve().parents[1] / "results" / "tiny_trained"))
        from tango.train import SWEEP_BUDGETS, SWEEP_METHODS, run_cell, sweep_cells

        cells = sweep_cells(seeds=a.seeds, methods=a.methods or SWEEP_METHODS, budgets=a.budgets or SWEEP_BUDGETS,
                            num_videos=a.num_videos, extra=a.sweep_extra,
                            method_extra=a.method_extra)
        for i, overrides in enumerate(cells):
            print(f"[sweep {i + 1}/{len(cells)}] " + " ".join(overrides), flush=True)
            run_cell(overrides)
        return 0
    if a.eval_only:
        import torch
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        from tango.data import synthetic as S
        from tango.train import Encoder, evaluate_docs

        torch.set_num_threads(cfg.threads)
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(cfg.out_dir).eval()
        proc = AutoProcessor.from_pretrained(cfg.out_dir)
        enc = Encoder(proc, cfg.num_frames, cfg.video_frames, cfg.size)
        spec = S.SceneSpec(size=cfg.size, num_frames=cfg.video_frames, fps=8)
        docs = [S.make_doc(i, spec=spec, seed=cfg.eval_seed, question_types=list(cfg.question_types))
                for i in range(cfg.eval_docs)]
        print(json.dumps(evaluate_docs(model, enc, docs), indent=2))
        return 0
    from tango.train import train

    summary = train(cfg)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
