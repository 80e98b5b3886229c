"""The full-token path against lmms-eval 0.7.3's own model wrappers, on the same documents: the harness at
``method=none`` with the wrapper's settings feeds the model the same frames, pixels and prompt ids, and generates,
parses and scores the same answers.

Every family, on its tiny checkpoint (which carries the real checkpoint's chat templates in the hub layout), on the
synthetic task and on the VideoMME stand-in (``videomme_local``: lmms-eval's own ``videomme`` prompt and scoring over
a fake data root in the real schema):

- LLaVA-OneVision: ``llava_hf`` (simple; its chat path decodes every frame, docs/lmms-eval.md);
- LLaVA-Video: ``llava_hf`` on the same checkpoint feeds it as a OneVision model (bilinear pooling, one newline),
  which in the harness is ``model.family=llava_ov``; the harness's ``llava_video`` family (LLaVA-NeXT's average
  pooling and row newlines, the papers' setting) is a deliberate difference, asserted here;
- Qwen2.5-VL: ``qwen2_5_vl`` (chat); Qwen3-VL: ``qwen3_vl`` (chat).
"""

import pytest
import torch

from tango.config import compose, validate

pytestmark = pytest.mark.e2e

#: the harness settings that reproduce each wrapper at its defaults with 16 frames (``max_frames_num`` /
#: ``max_num_frames`` 16). llava_hf loads the checkpoint's own dtype (``auto``; the tiny ones are float32), the Qwen
#: wrappers always bfloat16.
LMMS_EVAL = {
    "llava_hf": ["model.num_frames=16", "model.dtype=float32", "model.frame_sampling=uniform",
                 "model.video_backend=decord", "model.chat_template=tokenizer", "model.prompt_variant=llava_hf",
                 "model.reply=raw"],
    "qwen2_5_vl": ["model.num_frames=16", "model.fps=null", "model.dtype=bfloat16",
                   "model.frame_sampling=qwen_vl_utils", "model.video_backend=decord",
                   "model.video_resize=qwen_vl_utils", "model.min_pixels=200704", "model.max_pixels=1605632",
                   "model.prompt_variant=qwen2_5_vl", "model.reply=raw"],
    "qwen3_vl": ["model.num_frames=16", "model.dtype=bfloat16", "model.frame_sampling=qwen_vl_utils",
                 "model.video_backend=decord", "model.system_prompt='You are a helpful assistant.'",
                 "model.video_resize=qwen_vl_utils", "model.min_pixels=200704", "model.max_pixels=1605632",
                 "model.video_layout=nested", "model.prompt_variant=qwen3_vl",
                 "model.reply=raw"],
}
LOCAL_TASK = "videomme_local"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """``(task names, make)``: the synthetic task (3 videos) and the VideoMME stand-in (3 docs, 2 videos of 20
    frames); ``make(prompt_variant)`` is their TaskManager as the harness builds it (``tango.api.task_manager``) and
    as ``lmms-eval --model <prompt_variant>`` does."""
    from omegaconf import OmegaConf

    from tango.api import task_manager
    from tasks.tango_tasks_fixtures import build_data_root

    from tango.data.synthetic import ensure_synthetic_task
    from tango.tasks import write_local_tasks

    tmp = tmp_path_factory.mktemp("parity")
    t = compose(["task=synthetic", "task.synthetic.num_videos=3", f"paths.cache_dir={tmp}"]).task
    ensure_synthetic_task(t.include_path, task_name=t.lmms_task, **OmegaConf.to_container(t.synthetic))
    build_data_root(tmp / "data", frames=20)  # lmms-eval's qwen3_vl fails on videos shorter than max_num_frames
    local = write_local_tasks(tmp / "data", tmp / "local_tasks")
    include = [t.include_path, str(local)]
    return [t.lmms_task, LOCAL_TASK], lambda variant: task_manager(
        OmegaConf.create({"task": {"include_path": include}, "model": {"prompt_variant": variant}}))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path, cache_dir):
    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FORCE_QWENVL_VIDEO_READER": "decord",
                 "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "datasets_cache")}.items():
        monkeypatch.setenv(k, v)


def _evaluate(lm, names, tm) -> dict:
    from lmms_eval.evaluator import simple_evaluate

    out = simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=3, bootstrap_iters=0, log_samples=True,
                          random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return {(task, s["doc_id"]): s for task, samples in out["samples"].items() for s in samples}


def _first_arg(args, kwargs, name):
    return (args[0] if args else kwargs[name]).clone()


def _run_wrapper(wrapper, tower, names, tm, frames: list) -> tuple[dict, dict]:
    """The wrapper's samples and what it fed the model per request (``frames`` is filled by the caller's reader
    spy): tower pixels and the prompt ids of its first forward."""
    seen = {"frames": frames, "pixels": [], "ids": []}

    def spy_prefill(mod, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            seen["ids"].append(kwargs["input_ids"].clone())

    hooks = [tower.register_forward_pre_hook(
        lambda mod, args, kwargs: seen["pixels"].append(_first_arg(args, kwargs, "pixel_values")), with_kwargs=True),
        wrapper.model.register_forward_pre_hook(spy_prefill, with_kwargs=True)]
    try:
        return _evaluate(wrapper, names, tm), seen
    finally:
        for h in hooks:
            h.remove()


def _run_harness(cfg, names, tm, monkeypatch) -> tuple[dict, dict]:
    from tango.api import build_lm

    validate(cfg)
    harness = build_lm(cfg)
    seen = {"frames": [], "pixels": [], "ids": []}
    prepare = harness.adapter.prepare

    def spy_prepare(clip, question):
        inputs = prepare(clip, question)
        seen["frames"].append(clip.indices.tolist())
        seen["ids"].append(inputs["input_ids"])
        return inputs

    monkeypatch.setattr(harness.adapter, "prepare", spy_prepare)
    model = harness.adapter.model.model
    tower = getattr(model, "visual", None) or model.vision_tower
    hook = tower.register_forward_pre_hook(
        lambda mod, args, kwargs: seen["pixels"].append(_first_arg(args, kwargs, "pixel_values")), with_kwargs=True)
    try:
        return _evaluate(harness, names, tm), seen
    finally:
        hook.remove()


def _assert_same(ours, ours_in, theirs, theirs_in, n_docs=6):
    def by_prompt(seen):  # the two paths visit the documents in different orders: match them by prompt ids
        assert len({len(v) for v in seen.values()}) == 1, {k: len(v) for k, v in seen.items()}
        return {tuple(ids[0].tolist()): (frames, pixels)
                for ids, frames, pixels in zip(seen["ids"], seen["frames"], seen["pixels"])}

    mine, ref = by_prompt(ours_in), by_prompt(theirs_in)
    assert mine.keys() == ref.keys() and len(mine) == n_docs
    for key, (frames, pixels) in mine.items():
        assert list(frames) == list(ref[key][0])
        assert pixels.dtype == ref[key][1].dtype and torch.equal(pixels, ref[key][1])
    assert sorted(ours) == sorted(theirs) and len(ours) == n_docs
    for doc in ours:
        assert ours[doc]["resps"] == theirs[doc]["resps"], doc
        assert ours[doc]["filtered_resps"] == theirs[doc]["filtered_resps"], doc
        metric = "acc" if "acc" in ours[doc] else "videomme_perception_score"
        assert ours[doc][metric] == theirs[doc][metric], doc


@pytest.mark.parametrize("model, family", [("tiny_llava_ov", "llava_ov"), ("tiny_llava_video", "llava_video")])
def test_llava_full_tokens_equal_lmms_evals_llava_hf(model, family, tasks, cache_dir, monkeypatch):
    import lmms_eval.models.simple.llava_hf as llava_hf

    from tango.models.base import ensure_tiny_checkpoint

    names, make = tasks
    path = ensure_tiny_checkpoint(family, cache_dir / "models" / model)
    # llava_hf runs every llava_onevision checkpoint the OneVision way: that is the harness's llava_ov family.
    cfg = compose([f"model={model}", "model.family=llava_ov", "model.tiny=false", "task=synthetic", "method=none",
                   *LMMS_EVAL["llava_hf"]])
    frames: list = []

    class SpyReader(llava_hf.VideoReader):
        def get_batch(self, indices):
            frames.append(list(indices))
            return super().get_batch(indices)

    monkeypatch.setattr(llava_hf, "VideoReader", SpyReader)
    wrapper = llava_hf.LlavaHf(pretrained=str(path), device="cpu", device_map="cpu", max_frames_num=16)
    theirs, theirs_in = _run_wrapper(wrapper, wrapper.model.model.vision_tower, names, make("llava_hf"), frames)
    ours, ours_in = _run_harness(cfg, names, make(cfg.model.prompt_variant), monkeypatch)
    _assert_same(ours, ours_in, theirs, theirs_in)
    prompt = wrapper.tokenizer.decode(theirs_in["ids"][0][0])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>")

    if family == "llava_video":  # the deliberate difference: LLaVA-NeXT's pooling and row newlines, not llava_hf's
        cfg.model.family = "llava_video"
        _, video_in = _run_harness(cfg, [names[0]], make("llava_hf"), monkeypatch)
        assert [len(i[0]) for i in video_in["ids"]] != [len(i[0]) for i in ours_in["ids"][:3]]


@pytest.mark.parametrize("family, wrapper_class", [("qwen2_5_vl", "lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL"),
                                                   ("qwen3_vl", "lmms_eval.models.chat.qwen3_vl.Qwen3_VL")])
def test_qwen_full_tokens_equal_lmms_evals_chat_wrapper(family, wrapper_class, tasks, cache_dir, monkeypatch):
    import importlib

    from tango.models.base import ensure_tiny_checkpoint

    names, make = tasks
    cfg = compose([f"model=tiny_{family}", "task=synthetic", "method=none", *LMMS_EVAL[family]])
    frames = _spy_qwen_reader(monkeypatch)
    ensure_tiny_checkpoint(family, cfg.model.pretrained)
    module, name = wrapper_class.rsplit(".", 1)
    wrapper = getattr(importlib.import_module(module), name)(pretrained=cfg.model.pretrained, device="cpu",
                                                             device_map="cpu", max_num_frames=16)
    theirs, theirs_in = _run_wrapper(wrapper, wrapper.model.model.visual, names, make(family), frames)
    ours, ours_in = _run_harness(cfg, names, make(cfg.model.prompt_variant), monkeypatch)
    _assert_same(ours, ours_in, theirs, theirs_in)
    prompts = [wrapper.processor.decode(ids[0]) for ids in theirs_in["ids"]]
    # lmms-eval --model <family> picks VideoMME's qwen3_vl entry (VLMEvalKit's prompt) for Qwen3-VL only
    assert sum("Question: " in p and "\nOptions:\n" in p for p in prompts) == (3 if family == "qwen3_vl" else 0)


def _spy_qwen_reader(monkeypatch) -> list:
    """Record the frame indices qwen-vl-utils' decord reader decodes."""
    from qwen_vl_utils import vision_process

    frames: list = []
    reader = vision_process.VIDEO_READER_BACKENDS["decord"]

    def spy(ele):
        video, meta, fps = reader(ele)
        frames.append(list(meta["frames_indices"]))
        return video, meta, fps

    monkeypatch.setitem(vision_process.VIDEO_READER_BACKENDS, "decord", spy)
    return frames
