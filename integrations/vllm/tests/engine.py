"""One vLLM engine for the plugin tests, in its own process (vLLM spawns workers; memory is freed at exit):
``python engine.py SPEC.json`` prints ``RESULT <json>`` with per-request prompt length and ids, tokens, first logprob."""

import json
import sys

import check_video


def main(path: str) -> None:
    from vllm import LLM, SamplingParams

    spec = json.loads(open(path).read())
    llm = LLM(**spec["engine"])
    video = (check_video.frames(spec["frames"], spec["size"], spec["seed"]),
             check_video.metadata(spec["frames"], spec["fps"]))
    outs = llm.generate([{"prompt": spec["prompt"], "multi_modal_data": {"video": video}}],
                        SamplingParams(max_tokens=spec["max_tokens"], temperature=0, logprobs=1))
    result = []
    for o in outs:
        first = o.outputs[0].token_ids[0]
        result.append({"prompt_tokens": len(o.prompt_token_ids), "prompt_token_ids": list(o.prompt_token_ids),
                       "tokens": list(o.outputs[0].token_ids),
                       "logprob": o.outputs[0].logprobs[0][first].logprob})
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
