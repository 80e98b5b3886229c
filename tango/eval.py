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

from tango.methods.base import PruningMethod, SampleError, check_budget
from tango.video import read_clip


class PrunedVideoLM(lmms):
    is_simple = True

    def __init__(self, adapter, method: PruningMethod, budget: float, num_frames: int, fps: float | None = None,
                 video_backend: str = "decord", max_new_tokens: int = 16, progress: bool = True,
                 frame_sampling: str = "uniform"):
        super().__init__()
        self.adapter, self.method, self.budget = adapter, method, check_budget(budget)
        self.num_frames, self.fps, self.video_backend = num_frames, fps, video_backend
        self.frame_sampling = frame_sampling
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
            clip = read_clip(visuals[0], self.num_frames, backend=self.video_backend, fps=self.fps,
                             sampling=self.frame_sampling)
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
                frames = {"frames": len(clip.indices), "frames_repeated": clip.repeated_frames,
                          "short_video": clip.repeated_frames > 0}
                try:
                    gen = self.adapter.generate(
                        inputs, clip, self.method, self.budget,
                        max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                        stop=list(gen_kwargs.get("until", []) or []))
                except SampleError as e:  # this sample only (e.g. too few frames for the method); the run goes on
                    error = f"{type(e).__name__}: {e} ({clip.total_frames}-frame video)"
                    tqdm.write(f"[tango] {task} doc {doc_id}: skipped, {error}")
                    self.request_stats[(task, doc_id)] = {"order": i, **frames, "error": error}
                    answers.append("")
                    continue
                self.request_stats[(task, doc_id)] = {"order": i, **frames, **gen.stats}
                answers.append(gen.text)
        return answers

    def answer(self, video: str, question: str, max_new_tokens: int | None = None) -> str:
        """One answer, outside lmms-eval: decode ``video`` as a run would, prune, generate. Per-request figures
        (tokens, latency) are in ``self.last_stats``."""
        clip = read_clip(video, self.num_frames, backend=self.video_backend, fps=self.fps,
                         sampling=self.frame_sampling)
        gen = self.adapter.generate(self.adapter.prepare(clip, question), clip, self.method, self.budget,
                                    max_new_tokens=max_new_tokens or self.max_new_tokens)
        self.last_stats = gen.stats
        return gen.text

    def loglikelihood(self, requests):
        raise NotImplementedError("loglikelihood is not supported: the video benchmarks use generate_until")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported")

    def clean(self):
        # lmms-eval's default deletes every nn.Module attribute; keep the model loaded for the next task or budget.
        pass


#: lmms-eval entry point (pyproject: [project.entry-points."lmms_eval.models"]).
def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="tango_harness", simple_class_path="tango.api.HarnessLM")]


class _Probe(dict):
    """A doc that records the fields a task function subscripts while they are empty (``None``): HF datasets fill a
    field one annotation lacks with ``None``, which scores every answer wrong instead of failing."""

    def __init__(self, doc: dict):
        super().__init__(doc)
        self.empty: list[str] = []

    def __getitem__(self, key):
        value = super().__getitem__(key)  # a field absent from every annotation: KeyError, reported by the caller
        if value is None:
            self.empty.append(key)
        return value


def _leaf_tasks(task_names: list[str], task_manager) -> dict:
    from lmms_eval.tasks import get_task_dict

    def leaves(d):
        for k, v in d.items():
            yield from (leaves(v) if isinstance(v, dict) else [(getattr(k, "group_name", k), v)])

    return dict(leaves(get_task_dict(task_names, task_manager)))


def doc_problems(task_names: list[str], task_manager, limit: int | None = None) -> tuple[list[str], list[str]]:
    """``(missing videos, annotation problems)`` of the first ``limit`` docs of each task, found before inference.

    Each doc goes through the task's own ``doc_to_visual``, ``doc_to_text``, ``doc_to_target`` and
    ``process_results`` (on an empty reply): a field it needs that is missing or empty is reported with the task,
    the doc index and the annotation files, instead of a ``KeyError`` (or a silent zero) after inference. Built-in
    video tasks ``sys.exit`` from ``doc_to_visual`` when a file is missing; that is caught and reported too."""
    missing, problems = [], []
    for name, task in _leaf_tasks(task_names, task_manager).items():
        files = (task.config.dataset_kwargs or {}).get("data_files") or task.config.dataset_path
        if isinstance(files, dict):
            files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
        files = ", ".join(files) if isinstance(files, (list, tuple)) else str(files)
        target = task.config.doc_to_target
        if isinstance(target, str) and "{{" not in target and target not in (task.features or []):
            problems.append(f"{name}: doc_to_target field {target!r} is in no annotation (fields: "
                            f"{sorted(task.features or [])}; annotations: {files})")
            continue
        for i, doc in enumerate(itertools.islice(task.eval_docs, limit)):
            probe = _Probe(doc)
            try:
                try:
                    visuals = task.doc_to_visual(probe)
                except SystemExit as e:  # lmms-eval's video tasks exit on a missing file
                    missing.append(str(e))
                else:
                    missing += [v for v in visuals if isinstance(v, str) and not os.path.exists(v)]
                task.doc_to_text(probe)
                task.doc_to_target(probe)
                if callable(task.config.process_results):  # the task's function, without lmms-eval's retry loop
                    task.config.process_results(probe, [""])
            except KeyError as e:
                problems.append(f"{name} doc {i}: missing field {e.args[0]!r} (annotations: {files})")
                continue
            except Exception as e:  # noqa: BLE001 (the task's own code: any error means this doc cannot be scored)
                empty = f"empty field(s) {sorted(set(probe.empty))}, " if probe.empty else ""
                problems.append(f"{name} doc {i}: {empty}{type(e).__name__}: {e} (annotations: {files})")
                continue
            if probe.empty:
                problems.append(f"{name} doc {i}: empty field(s) {sorted(set(probe.empty))} (annotations: {files})")
    return missing, problems


def check_docs(task_names: list[str], task_manager, limit: int | None = None) -> None:
    """Raise before inference: ``FileNotFoundError`` listing missing videos, ``DataError`` listing annotation
    problems (the first 20 and the count of each)."""
    from tango.config import DataError

    missing, problems = doc_problems(task_names, task_manager, limit)

    def listed(items):
        return "\n  ".join(items[:20]) + (f"\n  ... {len(items) - 20} more" if len(items) > 20 else "")

    if problems:
        raise DataError(f"{len(problems)} annotation problem(s) in {task_names}, found before inference:\n  "
                        + listed(problems))
    if missing:
        raise FileNotFoundError(f"{len(missing)} video(s) of {task_names} are missing"
                                f"{' (first 20 shown)' if len(missing) > 20 else ''}:\n  {listed(missing)}")
