"""The full-token path against lmms-eval's own model wrapper, on the same documents: the harness at ``method=none``
with the wrapper's preprocessing settings feeds the model the same frames, pixels and prompt ids, and generates,
parses and scores the same answers.

Qwen3-VL: lmms-eval 0.7.3's ``qwen3_vl`` chat wrapper (qwen-vl-utils decoding and resize, its system prompt, the
processor of transformers 5.23) on the tiny checkpoint. The other families have no parity test yet."""

import pytest
import torch

from tango.config import compose, validate

pytestmark = pytest.mark.e2e

#: the harness settings that reproduce lmms-eval's qwen3_vl chat wrapper (its defaults -- it always loads bfloat16 --
#: with ``max_num_frames`` 16)
LMMS_EVAL_QWEN3 = ["model.num_frames=16", "model.dtype=bfloat16", "model.frame_sampling=qwen_vl_utils",
                   "model.video_backend=decord",
                   "model.system_prompt='You are a helpful assistant.'", "model.video_resize=qwen_vl_utils",
                   "model.min_pixels=200704", "model.max_pixels=1605632", "model.video_layout=nested"]


def _synthetic(cfg):
    from lmms_eval.tasks import TaskManager
    from omegaconf import OmegaConf

    from tango.data.synthetic import ensure_synthetic_task

    t = cfg.task
    ensure_synthetic_task(t.include_path, task_name=t.lmms_task, **OmegaConf.to_container(t.synthetic))
    return TaskManager(include_path=t.include_path)


def _evaluate(lm, cfg, tm):
    from lmms_eval.evaluator import simple_evaluate

    out = simple_evaluate(model=lm, tasks=[cfg.task.lmms_task], task_manager=tm, limit=cfg.limit, bootstrap_iters=0,
                          log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          fewshot_random_seed=0)
    (samples,) = out["samples"].values()
    return {s["doc_id"]: s for s in samples}


def test_qwen3_vl_full_tokens_equal_lmms_evals_qwen3_vl_wrapper(tmp_path, cache_dir, monkeypatch):
    from lmms_eval.models.chat.qwen3_vl import Qwen3_VL
    from qwen_vl_utils import vision_process

    from tango.api import build_lm

    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "decord")
    cfg = compose(["model=tiny_qwen3_vl", "task=synthetic", "method=none", "task.synthetic.num_videos=3", "limit=3",
                   *LMMS_EVAL_QWEN3])
    validate(cfg)
    tm = _synthetic(cfg)
    harness = build_lm(cfg)
    wrapper = Qwen3_VL(pretrained=cfg.model.pretrained, device="cpu", device_map="cpu", max_num_frames=16)

    # What each path feeds the model: decoded frame indices (the wrapper's reader / the harness's clip), the pixels
    # entering the vision tower, the grid, and the prompt ids (the wrapper's first forward / the harness's processor
    # inputs, which it embeds itself).
    ref = {"frames": [], "pixels": [], "grid": [], "ids": []}
    reader = vision_process.VIDEO_READER_BACKENDS["decord"]

    def spy_reader(ele):
        video, meta, fps = reader(ele)
        ref["frames"].append(list(meta["frames_indices"]))
        return video, meta, fps

    def spy_tower(mod, args, kwargs):
        ref["pixels"].append(args[0].clone())
        ref["grid"].append(kwargs["grid_thw"].clone())

    def spy_prefill(mod, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            ref["ids"].append(kwargs["input_ids"].clone())

    monkeypatch.setitem(vision_process.VIDEO_READER_BACKENDS, "decord", spy_reader)
    hooks = [wrapper.model.model.visual.register_forward_pre_hook(spy_tower, with_kwargs=True),
             wrapper.model.register_forward_pre_hook(spy_prefill, with_kwargs=True)]
    try:
        theirs = _evaluate(wrapper, cfg, tm)
    finally:
        for h in hooks:
            h.remove()

    ours_in = {"frames": [], "pixels": [], "grid": [], "ids": []}
    prepare = harness.adapter.prepare

    def spy_prepare(clip, question):
        inputs = prepare(clip, question)
        ours_in["frames"].append(clip.indices.tolist())
        ours_in["grid"].append(inputs["video_grid_thw"])
        ours_in["ids"].append(inputs["input_ids"])
        return inputs

    monkeypatch.setattr(harness.adapter, "prepare", spy_prepare)
    tower = harness.adapter.model.model.visual.register_forward_pre_hook(
        lambda mod, args, kwargs: ours_in["pixels"].append(args[0].clone()) and None, with_kwargs=True)
    try:
        ours = _evaluate(harness, cfg, tm)
    finally:
        tower.remove()

    assert sorted(ours) == sorted(theirs) == [0, 1, 2]

    def by_prompt(seen):  # the two paths visit the documents in different orders: match them by prompt ids
        assert len({len(v) for v in seen.values()}) == 1
        return {tuple(ids[0].tolist()): (frames, pixels, grid)
                for ids, frames, pixels, grid in zip(seen["ids"], seen["frames"], seen["pixels"], seen["grid"])}

    mine, ref_by = by_prompt(ours_in), by_prompt(ref)
    assert mine.keys() == ref_by.keys() and len(mine) == 3
    for key, (frames, pixels, grid) in mine.items():
        assert frames == ref_by[key][0]
        assert torch.equal(pixels, ref_by[key][1]) and torch.equal(grid, ref_by[key][2])
    for doc in ours:
        assert ours[doc]["resps"] == theirs[doc]["resps"]
        assert ours[doc]["filtered_resps"] == theirs[doc]["filtered_resps"]
        assert ours[doc]["acc"] == theirs[doc]["acc"]
