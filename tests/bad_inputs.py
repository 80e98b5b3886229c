"""The catalogue of bad inputs: what a user gives, and the message the harness answers with (a substring of it).

``tests/test_bad_inputs.py`` runs every row against the real code; the README's table is ``markdown()`` of this
list (checked by that test; regenerate with ``python scripts/update_readme.py``).

Kinds: ``config`` -- ``python run.py <given>``: refused before anything loads (one line, exit 2; Hydra's own errors
exit 1); ``lmms_eval`` -- ``python -m lmms_eval --model tango_harness --model_args <given>``: one line, exit 2;
``data`` -- a broken task file or video: refused before inference, or recorded as that sample's error when only
the sample is affected (the run goes on, the summary counts it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class BadInput:
    given: str
    message: str
    kind: str = "config"


CATALOGUE: list[BadInput] = [
    # -- the run's values --------------------------------------------------------------------------------------------
    BadInput("budget=1.5", "budget=1.5 is outside the valid range (0, 1]"),
    BadInput("budget=0", "budget=0.0 is outside the valid range (0, 1]"),
    BadInput("budget=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    BadInput("limit=0", "limit=0 must be >= 1 (or null)"),
    BadInput("limit=-1", "limit=-1 must be >= 1 (or null)"),
    BadInput("device=gpu", "device='gpu' is not one of auto, cpu, cuda, cuda:N"),
    BadInput("method=nope", "Could not find 'method/nope'"),
    BadInput("model=llava", "Could not find 'model/llava'"),
    BadInput("task=nope", "Could not find 'task/nope'"),
    BadInput("experiment=nope", "Could not find 'experiment/nope'"),
    BadInput("logger.wandb.mode=onlin", "logger.wandb.mode='onlin' is not one of the valid values"),
    # -- model ------------------------------------------------------------------------------------------------------
    BadInput("model.num_frames=0", "model.num_frames=0 must be >= 1"),
    BadInput("model.num_frames=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    BadInput("model.fps=0", "model.fps=0.0 must be > 0"),
    BadInput("model.video_backend=foo", "model.video_backend='foo' is not one of the valid values ['decord', 'pyav']"),
    BadInput("model.frame_sampling=foo",
             "model.frame_sampling='foo' is not one of the valid values ['uniform', 'qwen_vl_utils']"),
    BadInput("model=tiny_llava_ov model.video_layout=nested",
             "model.video_layout='nested' is not supported by the 'llava_ov' adapter (it supports ['chat_template']; "
             "leave it at 'flat')"),
    BadInput("model=tiny_qwen2_5_vl model.chat_template=tokenizer",
             "model.chat_template='tokenizer' is not supported by the 'qwen2_5_vl' adapter (it supports "
             "['video_resize', 'min_pixels', 'max_pixels']; leave it at 'processor')"),
    BadInput("model.reply=strip", "model.reply='strip' is not one of the valid values ['until', 'raw']"),
    BadInput("model.dtype=fp8", "model.dtype='fp8' is not one of the valid values"),
    BadInput("model.attn_implementation=flash", "model.attn_implementation='flash' is not one of the valid values"),
    BadInput("model.max_new_tokens=0", "model.max_new_tokens=0 must be >= 1"),
    BadInput("+model.foo=1", "model.foo is not a setting of model; valid: ['name', 'family'"),
    # -- method -----------------------------------------------------------------------------------------------------
    BadInput("method.alpah=2", "Could not override 'method.alpah'"),
    BadInput("+method.alpah=2", "method.alpah is not a setting of method; did you mean method.alpha?"),
    BadInput("method.salient_mode=foo", "Tango: salient_mode='foo' is invalid; valid: 'diverse' | 'topk'"),
    BadInput("model=tiny_llava_ov method=fastv budget=0.05",
             "budget=0.05 is infeasible for FastV with layer K=1 of num_layers=12"),
    BadInput("method=fastv method.layer=0", "layer=0 is outside the valid range [1, num_layers-1=3]"),
    BadInput("method=dycoke model.num_frames=1", "dycoke needs at least 2 frames, got num_frames=1"),
    BadInput("method=dycoke method.kv_layer=0", "kv_layer=0 must be >= 1"),
    BadInput("method=holitom method.beta=1.5", "beta=1.5 must be in [0, 1]"),
    BadInput("method=fastvid method.fork=qwen3", "fastvid: fork='qwen3' is invalid; valid: ['ov', 'video', 'qwen']"),
    # -- task -------------------------------------------------------------------------------------------------------
    BadInput("task=synthetic task.synthetic.num_videos=0", "num_videos=0 is out of range: valid range is [1, 100000]"),
    BadInput("task=synthetic task.synthetic.size=8", "size=8 is out of range: valid range is [48, 1024]"),
    BadInput("task=synthetic task.synthetic.num_frames=1", "num_frames=1 is out of range: valid range is [2, 4096]"),
    BadInput("task.synthetic.question_types=[colour]", "question_types=['colour'] is invalid: give distinct names"),
    BadInput("task=videomme_local TANGO_DATA=/nonexistent",
             "task.data_root='/nonexistent' is not a folder; it comes from $TANGO_DATA"),
    BadInput("task=mlvu_local TANGO_DATA=<empty-dir>", "no annotations for mlvu_dev under data root"),
    # -- the lmms-eval CLI ------------------------------------------------------------------------------------------
    BadInput("budget=1.5", "error in --model_args: budget=1.5 is outside the valid range (0, 1]", "lmms_eval"),
    BadInput("method=nope", "error in --model_args: In 'config': Could not find 'method/nope'", "lmms_eval"),
    BadInput("batch_size=2", "batch_size=2; the harness answers requests one at a time (valid: 1)", "lmms_eval"),
    # -- data -------------------------------------------------------------------------------------------------------
    BadInput("an annotation without `answer`", "tango_synthetic doc 1: empty field(s) ['answer']", "data"),
    BadInput("no annotation has `answer`", "doc_to_target field 'answer' is in no annotation", "data"),
    BadInput("an annotation without `video`", "tango_synthetic doc 2: empty field(s) ['video']", "data"),
    BadInput("an annotation without `options`", "tango_synthetic doc 3: empty field(s) ['options']", "data"),
    BadInput("a video file missing", "1 video(s) of ['tango_synthetic'] are missing", "data"),
    BadInput("a truncated mp4 (index first; 18 of 48 frames)",
             "VideoDecodeError: decoded 18 of the 48 frames its header declares", "data"),
    BadInput("a 1-frame clip for DyCoke (fps sampling of a short video)",
             "SampleError: dycoke needs at least 2 frames, got num_frames=1", "data"),
]


def markdown() -> str:
    """The README's table."""
    where = {"config": "`python run.py`", "lmms_eval": "`--model_args`", "data": "task data"}
    rows = ["| where | input | message (excerpt) |", "|---|---|---|"]
    for b in CATALOGUE:
        given = b.given if b.kind == "data" else f"`{b.given}`"
        rows.append(f"| {where[b.kind]} | {given} | {b.message.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
