"""The lmms-eval model: one loaded adapter + one pruning method, handed to ``simple_evaluate`` as an instance.

Requests are answered at batch size 1. Each video is decoded on a background thread one request ahead, so decoding
never falls inside a timed window. Per-request figures (tokens, latency split) are kept in ``self.request_stats``
keyed by ``(task, doc_id)``, outside lmms-eval's own timers.
"""

from __future__ import annotations

import itertools
import os
import sys
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
        """Decode and preprocess one request; a broken video becomes a recorded per-sample error, not a crash."""
        ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1 or not isinstance(visuals[0], str):
            raise ValueError(f"{task} doc {doc_id}: expected exactly one video path from doc_to_visual, got "
                             f"{[type(v).__name__ for v in visuals]}")
        try:
            clip = read_clip(visuals[0], self.num_frames, backend=self.video_backend, fps=self.fps)
            return clip, self.adapter.prepare(clip, ctx), None
        except Exception as e:  # unreadable / empty video: decoders raise many types
            return None, None, f"{type(e).__name__}: {e} ({visuals[0]})"

    def generate_until(self, requests) -> list[str]:
        answers = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._load, requests[0]) if requests else None
            for i, req in enumerate(tqdm(requests, desc=f"{self.method.name} b={self.budget:g}",
                                         disable=not self.progress)):
                clip, inputs, error = pending.result()
                if i + 1 < len(requests):
                    pending = pool.submit(self._load, requests[i + 1])
                ctx, gen_kwargs, _, doc_id, task, split = req.args
                if error is not None:
                    tqdm.write(f"[tango] {task} doc {doc_id}: skipped, {error}")
                    self.request_stats[(task, doc_id)] = {"order": i, "error": error}
                    answers.append("")  # scored as wrong by the task; the error is in samples.jsonl and the record
                    continue
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


class HarnessLM(PrunedVideoLM):
    """Built from harness config overrides, for the lmms-eval CLI:
    ``python -m lmms_eval --model tango_harness --model_args model=llava_ov,method=tango,budget=0.1 --tasks ...``.
    Any other ``key=value`` in ``model_args`` is passed on as a config override (e.g. ``model.num_frames=16``)."""

    def __init__(self, model: str = "tiny_llava_ov", method: str = "none", budget: float = 1.0,
                 device: str = "auto", batch_size: int | str = 1, **overrides):
        from hydra.errors import HydraException
        from omegaconf import OmegaConf

        from tango.config import ConfigError, compose, validate
        from tango.models.base import resolve_device
        from tango.runner import build_lm

        # lmms-eval's CLI catches every Exception from here and exits 0: a bad argument leaves as SystemExit(2),
        # which it does not catch, after one line that names the value and the valid ones.
        try:
            if str(batch_size) != "1":
                raise ConfigError(f"batch_size={batch_size!r}; the harness answers requests one at a time (valid: 1)")
            cfg = compose([f"model={model}", f"method={method}", f"budget={budget}", f"device={device}",
                           *(f"{k}={v}" for k, v in overrides.items())])
            validate(cfg)
        except (ConfigError, HydraException) as e:
            print(f"[tango] error in --model_args: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from e
        m = OmegaConf.to_object(cfg.method)
        lm = build_lm(cfg, m, 1.0 if m.name == "none" else float(cfg.budget), resolve_device(cfg.device))
        self.__dict__.update(lm.__dict__)


#: lmms-eval entry point (pyproject: [project.entry-points."lmms_eval.models"]).
def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="tango_harness", simple_class_path="tango.eval.HarnessLM")]


def missing_videos(task_names: list[str], task_manager, limit: int | None = None) -> list[str]:
    """Video paths the first ``limit`` docs of the tasks will ask for that are not on disk.

    Built-in video tasks call ``sys.exit`` from ``doc_to_visual`` when a file is missing; that is caught and
    reported here, before a run starts, instead of ending the process mid-run."""
    from lmms_eval.tasks import get_task_dict

    def leaves(d):
        for v in d.values():
            yield from (leaves(v) if isinstance(v, dict) else [v])

    missing = []
    for task in leaves(get_task_dict(task_names, task_manager)):
        for doc in itertools.islice(task.eval_docs, limit):
            try:
                visuals = task.doc_to_visual(doc)
            except SystemExit as e:  # lmms-eval's video tasks exit on a missing file
                missing.append(str(e))
                continue
            missing += [v for v in visuals if isinstance(v, str) and not os.path.exists(v)]
    return missing


def check_videos(task_names: list[str], task_manager, limit: int | None = None) -> None:
    """Raise ``FileNotFoundError`` listing the missing videos (the first 20 and the count)."""
    missing = missing_videos(task_names, task_manager, limit)
    if missing:
        shown = "\n  ".join(missing[:20])
        raise FileNotFoundError(f"{len(missing)} video(s) of {task_names} are missing"
                                f"{' (first 20 shown)' if len(missing) > 20 else ''}:\n  {shown}")
