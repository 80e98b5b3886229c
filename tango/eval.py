"""The lmms-eval model: one loaded adapter + one pruning method, handed to ``simple_evaluate`` as an instance.

Requests are answered at batch size 1. Each video is decoded on a background thread one request ahead, so decoding
never falls inside a timed window. Per-request figures (tokens, latency split) are kept in ``self.request_stats``
keyed by ``(task, doc_id)``, outside lmms-eval's own timers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lmms_eval.api.model import lmms
from tqdm import tqdm

from tango.methods.base import PruningMethod, check_budget
from tango.video import read_clip


class PrunedVideoLM(lmms):
    is_simple = True

    def __init__(self, adapter, method: PruningMethod, budget: float, num_frames: int, fps: float | None = None,
                 video_backend: str = "decord", max_new_tokens: int = 16, progress: bool = True):
        super().__init__()
        self.adapter, self.method, self.budget = adapter, method, check_budget(budget)
        self.num_frames, self.fps, self.video_backend = num_frames, fps, video_backend
        self.max_new_tokens, self.progress = max_new_tokens, progress
        self.request_stats: dict[tuple[str, int], dict] = {}

    def _load(self, request):
        ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1 or not isinstance(visuals[0], str):
            raise ValueError(f"{task} doc {doc_id}: expected exactly one video path from doc_to_visual, got "
                             f"{[type(v).__name__ for v in visuals]}")
        clip = read_clip(visuals[0], self.num_frames, backend=self.video_backend, fps=self.fps)
        return clip, self.adapter.prepare(clip, ctx)

    def generate_until(self, requests) -> list[str]:
        answers = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._load, requests[0]) if requests else None
            for i, req in enumerate(tqdm(requests, desc=f"{self.method.name} b={self.budget:g}",
                                         disable=not self.progress)):
                clip, inputs = pending.result()
                if i + 1 < len(requests):
                    pending = pool.submit(self._load, requests[i + 1])
                ctx, gen_kwargs, _, doc_id, task, split = req.args
                gen = self.adapter.generate(
                    inputs, clip, self.method, self.budget,
                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                    stop=list(gen_kwargs.get("until", []) or []))
                self.request_stats[(task, doc_id)] = {"order": i, "frames": len(clip.indices), **gen.stats}
                answers.append(gen.text)
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("loglikelihood is not supported: the video benchmarks use generate_until")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported")

    def clean(self):
        # lmms-eval's default deletes every nn.Module attribute; keep the model loaded for the next task or budget.
        pass
