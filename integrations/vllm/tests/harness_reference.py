"""The harness's side of the parity test, run with the harness's own environment (transformers 5.23):
``python harness_reference.py SPEC.json`` (``family``: a harness model family, default ``qwen2_5_vl``) prints
``RESULT <json>``: the prompt text (the checkpoint's chat template,
as the harness builds it), the method's kept indices (and the ``attn`` / ``metric`` / ``timestamps`` it received), the prompt length
and the first generated token and its logprob, on the check video."""

import json
import sys

import check_video
import numpy as np
import torch

from tango.methods import build_method
from tango.models.base import load_adapter
from tango.video import Clip


def main(path: str) -> None:
    spec = json.loads(open(path).read())
    n, fps = spec["frames"], spec["fps"]
    clip = Clip(check_video.frames(n, spec["size"], spec["seed"]), np.arange(n), np.arange(n) / fps, fps, n)
    adapter = load_adapter(spec.get("family", "qwen2_5_vl"), pretrained=spec["checkpoint"], device=torch.device("cpu"), dtype="float32")
    method = build_method(spec["method"], **spec["hparams"])
    kept = {}
    prune = method.prune

    def record(x, **kwargs):
        sel = prune(x, **kwargs)
        kept["indices"] = sel.indices.tolist()
        kept.update({k: kwargs[k].tolist() for k in ("attn", "metric", "timestamps") if kwargs.get(k) is not None})
        return sel

    method.prune = record
    steps = []
    hook = adapter.model.lm_head.register_forward_hook(lambda m, a, out: steps.append(out[0, -1].float()))
    try:
        gen = adapter.generate(adapter.prepare(clip, spec["question"]), clip, method, spec["budget"], max_new_tokens=1)
    finally:
        hook.remove()
    logp = torch.log_softmax(steps[0], dim=-1)
    token = int(logp.argmax())
    print("RESULT " + json.dumps({"prompt": adapter.prompt(spec["question"]), **kept,
                                  "prompt_tokens": gen.stats["prompt_tokens"], "token": token,
                                  "logprob": float(logp[token])}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
