"""The offline synthetic video benchmark (tango.data.synthetic): generation, pixels, caching, lmms-eval loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tango.data import synthetic
from tango.data.synthetic import COLORS, ensure_synthetic_task, load_docs, render_video
from tango.data.task_template import utils as task_utils

SMALL = {"num_videos": 12, "num_frames": 8, "size": 64, "fps": 8, "seed": 7}  # 3 docs of each of the 4 types


def decode_pyav(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def shape_mask(frame: np.ndarray) -> np.ndarray:
    """Shape pixels: saturated ones (the backgrounds are near-grey, the palette is saturated)."""
    f = frame.astype(np.int16)
    return (f.max(-1) - f.min(-1)) > 70


def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: float(np.sum((np.asarray(COLORS[c], float) - rgb) ** 2)))


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def classify_shape(mask: np.ndarray) -> str:
    """circle / square / triangle / diamond from one object's pixel mask (fill ratio + where the widest row is)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = crop.mean()
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    widths = crop.sum(1)
    return "triangle" if np.argmax(widths) > 0.7 * (len(widths) - 1) else "diamond"


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> Path:
    return ensure_synthetic_task(tmp_path_factory.mktemp("synth") / "task", **SMALL)


@pytest.fixture(scope="module")
def small_docs(small_task) -> list[dict]:
    return load_docs(small_task)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_layout_and_doc_fields(small_task, small_docs):
    assert (small_task / "tango_synthetic.yaml").is_file() and (small_task / "utils.py").is_file()
    manifest = json.loads((small_task / "manifest.json").read_text())
    assert manifest["params"]["num_frames"] == SMALL["num_frames"] and manifest["num_docs"] == SMALL["num_videos"]
    assert len(small_docs) == SMALL["num_videos"]
    assert [d["doc_id"] for d in small_docs] == list(range(SMALL["num_videos"]))
    assert len({d["video_id"] for d in small_docs}) == len(small_docs)
    for d in small_docs:
        assert Path(d["video"]).is_absolute() and Path(d["video"]).is_file()
        assert Path(d["video"]) == small_task / "videos" / f"{d['video_id']}.mp4"
        assert len(d["options"]) == 4 and len(set(d["options"])) == 4
        assert d["answer"] in "ABCD" and d["options"]["ABCD".index(d["answer"])] == d["answer_text"]
        assert d["question_type"] in {"color", "shape", "count", "direction"}
        assert d["objects"] and d["background"]["kind"] in {"plain", "gradient"}
    assert {d["question_type"] for d in small_docs} == {"color", "shape", "count", "direction"}


@pytest.mark.unit
def test_generation_is_deterministic(small_task, small_docs, tmp_path):
    other = ensure_synthetic_task(tmp_path / "again", **SMALL)
    again = load_docs(other)
    strip = lambda docs: [{k: v for k, v in d.items() if k != "video"} for d in docs]
    assert strip(again) == strip(small_docs)
    # The raw test.jsonl files only differ by the folder prefix of the absolute video paths.
    assert (other / "test.jsonl").read_text().replace(str(other), "X") == (
        small_task / "test.jsonl"
    ).read_text().replace(str(small_task), "X")
    for a, b in zip(small_docs, again):
        assert np.array_equal(decode_pyav(a["video"]), decode_pyav(b["video"]))
        assert Path(a["video"]).read_bytes() == Path(b["video"]).read_bytes()
    # ... and the seed matters.
    changed = load_docs(ensure_synthetic_task(tmp_path / "seed8", **{**SMALL, "seed": 8}))
    assert strip(changed) != strip(small_docs)


@pytest.mark.unit
def test_encoder_is_reproducible(small_docs, tmp_path):
    """x264 with its default macroblock-tree rate control gave different bytes now and then for the same frames;
    re-encode every scene several times in this process and require identical files."""
    for d in small_docs:
        frames = render_video(d["background"], d["objects"], SMALL["size"], SMALL["num_frames"])
        digests = set()
        for k in range(3):
            synthetic._write_mp4(tmp_path / f"{k}.mp4", frames, SMALL["fps"])
            digests.add((tmp_path / f"{k}.mp4").read_bytes())
        assert len(digests) == 1 and digests == {Path(d["video"]).read_bytes()}, d["doc_id"]


@pytest.mark.unit
def test_rgb_to_yuv420p_layout():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, :3] = (255, 255, 255)  # white left half, black right half
    yuv = synthetic.rgb_to_yuv420p(frame)
    assert yuv.shape == (6, 6) and yuv.dtype == np.uint8
    y, u, v = yuv.ravel()[:24].reshape(4, 6), yuv.ravel()[24:30].reshape(2, 3), yuv.ravel()[30:].reshape(2, 3)
    assert (y[:, :3] == 235).all() and (y[:, 3:] == 16).all()  # BT.601 limited range
    assert (u == 128).all() and (v == 128).all()  # greys have no chroma


@pytest.mark.unit
def test_videos_decode_with_pyav_and_decord(small_docs):
    import decord

    n, s = SMALL["num_frames"], SMALL["size"]
    for d in small_docs:
        frames = decode_pyav(d["video"])
        assert frames.shape == (n, s, s, 3) and frames.dtype == np.uint8
        vr = decord.VideoReader(d["video"])
        assert len(vr) == n
        assert vr.get_avg_fps() == pytest.approx(SMALL["fps"])
        dframes = vr.get_batch(list(range(n))).asnumpy()
        assert dframes.shape == (n, s, s, 3)
        assert np.abs(dframes.astype(int) - frames.astype(int)).max() <= 2
        # The stored scene parameters describe the video: re-rendering them matches the decoded pixels.
        rendered = render_video(d["background"], d["objects"], s, n)
        err = np.abs(rendered.astype(float) - frames)
        assert err.mean() < 6.0 and np.median(err) <= 3.0  # another doc's scene is >= 13 off on average


@pytest.mark.unit
def test_answers_balanced(small_docs):
    counts = {c: sum(d["answer"] == c for d in small_docs) for c in "ABCD"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    types = {t: sum(d["question_type"] == t for d in small_docs) for t in ("color", "shape", "count", "direction")}
    assert set(types.values()) == {3}, types
    # The letter assignment on its own, for many sizes: <= 2 apart overall, <= 1 within every type.
    for num_types in range(1, 7):
        for n in range(1, 80):
            idx = [synthetic._answer_index(i, num_types) for i in range(n)]
            total = np.bincount(idx, minlength=4)
            assert total.max() - total.min() <= 2, (num_types, n, total)
            for t in range(num_types):
                per = np.bincount(idx[t::num_types], minlength=4)
                assert per.max() - per.min() <= 1, (num_types, n, t, per)


# ----------------------------------------------------------------------------------------------------------------
# Answers verified from the decoded pixels
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_color_answers_match_pixels(small_docs):
    checked = 0
    for d in small_docs:
        if d["question_type"] not in ("color", "shape", "direction"):  # single-object scenes
            continue
        frames = decode_pyav(d["video"])
        for frame in frames[[0, len(frames) // 2, -1]]:
            mask = shape_mask(frame)
            assert mask.sum() > 30
            assert nearest_color(np.median(frame[mask], axis=0)) == d["objects"][0]["color"]
        if d["question_type"] == "color":
            assert (
                nearest_color(np.median(frames[len(frames) // 2][shape_mask(frames[len(frames) // 2])], 0))
                == (d["answer_text"])
            )
            checked += 1
    assert checked == 3


@pytest.mark.unit
def test_direction_answers_match_pixels(small_docs):
    size = SMALL["size"]
    checked = 0
    for d in small_docs:
        if d["question_type"] != "direction":
            continue
        frames = decode_pyav(d["video"])
        dx, dy = centroid(shape_mask(frames[-1])) - centroid(shape_mask(frames[0]))
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == d["answer_text"], (d["doc_id"], dx, dy)
        assert max(abs(dx), abs(dy)) > 0.4 * size and min(abs(dx), abs(dy)) < 0.05 * size
        checked += 1
    assert checked == 3


@pytest.mark.unit
def test_count_and_shape_answers_match_pixels(small_docs):
    from scipy import ndimage

    counted = shaped = 0
    for d in small_docs:
        frames = decode_pyav(d["video"])
        mid = frames[len(frames) // 2]
        labels, n = ndimage.label(shape_mask(mid))
        sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, n + 1))
        blobs = int(np.sum(np.asarray(sizes) >= 8))
        assert blobs == len(d["objects"]), d["doc_id"]
        if d["question_type"] == "count":
            assert blobs == int(d["answer_text"])
            counted += 1
        if d["question_type"] == "shape":
            assert classify_shape(shape_mask(mid)) == d["answer_text"], d["doc_id"]
            shaped += 1
    assert counted == 3 and shaped == 3


@pytest.mark.unit
def test_every_shape_is_recognisable():
    """The four shapes are told apart by the same pixel rule the shape test uses (not only the ones drawn above)."""
    bg = {"kind": "plain", "axis": "horizontal", "rgb0": [128, 128, 128], "rgb1": [128, 128, 128]}
    for shape in synthetic.SHAPES:
        obj = synthetic._object(shape, "red", 0.14 * 64, (32, 32), (32, 32), 0, 0)
        assert classify_shape(shape_mask(render_video(bg, [obj], 64, 1)[0])) == shape


# ----------------------------------------------------------------------------------------------------------------
# Manifest reuse, regeneration, concurrency, bad arguments
# ----------------------------------------------------------------------------------------------------------------


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.unit
def test_manifest_reuse_and_regeneration(tmp_path):
    params = {"num_videos": 4, "num_frames": 6, "size": 48, "seed": 3}
    out = ensure_synthetic_task(tmp_path / "t", **params)
    before = _mtimes(out)
    assert len([k for k in before if k.startswith("videos/")]) == 4
    assert ensure_synthetic_task(tmp_path / "t", **params) == out
    assert _mtimes(out) == before  # nothing rewritten

    ensure_synthetic_task(tmp_path / "t", **{**params, "num_frames": 10})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["num_frames"] == 10
    docs = load_docs(out)
    assert all(d["num_frames"] == 10 for d in docs)
    assert decode_pyav(docs[0]["video"]).shape[0] == 10
    # Only the task folder and its lock remain next to it (no temporary or old copies).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.lock", "t"]

    # A broken / missing video is detected and the folder rebuilt.
    Path(docs[1]["video"]).unlink()
    ensure_synthetic_task(tmp_path / "t", **{**params, "num_frames": 10})
    assert Path(docs[1]["video"]).is_file()


@pytest.mark.unit
def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_synthetic_task(tmp_path / "mine", num_videos=2, num_frames=4, size=48)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.unit
def test_concurrent_callers_build_once(tmp_path):
    """Four processes (like SLURM array tasks) ask for the same task at once: one build, all get a complete task."""
    script = textwrap.dedent(
        """
        import sys, time
        from tango.data import synthetic
        real_build = synthetic._build
        def counting_build(*args, **kwargs):
            with open(sys.argv[2], "a") as f:
                f.write("build\\n")
            time.sleep(0.3)  # widen the race window
            return real_build(*args, **kwargs)
        synthetic._build = counting_build
        out = synthetic.ensure_synthetic_task(sys.argv[1], num_videos=4, num_frames=4, size=48, seed=11)
        docs = synthetic.load_docs(out)
        assert len(docs) == 4 and all(__import__("os").path.isfile(d["video"]) for d in docs)
        print(out)
        """
    )
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "t"), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.strip() == str((tmp_path / "t").resolve())
    assert log.read_text().count("build") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.lock", "builds.log", "t"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"num_frames": 1}, r"num_frames=1 .*\[2, 4096\]"),
        ({"num_frames": 2.5}, r"num_frames .*\[2, 4096\]"),
        ({"size": 32}, r"size=32 .*\[48, 1024\]"),
        ({"size": 2048}, r"size=2048 .*\[48, 1024\]"),
        ({"size": 65}, r"size=65 must be even"),
        ({"num_videos": 0}, r"num_videos=0 .*\[1, 100000\]"),
        ({"fps": 0}, r"fps=0 .*\[1, 120\]"),
        ({"seed": -1}, r"seed=-1 "),
        ({"num_frames": True}, r"num_frames must be an int"),
        ({"task_name": "bad name"}, r"task_name='bad name'"),
        ({"question_types": ["color", "nope"]}, r"question_types=\['color', 'nope'\] is invalid"),
        ({"question_types": []}, r"question_types=\[\]"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        ensure_synthetic_task(tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------------------------------------------
# The task hooks (utils.py) and lmms-eval
# ----------------------------------------------------------------------------------------------------------------

OPTIONS = ["red", "blue", "green", "a yellow thing"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        (" c \n", "C"),
        ("**D**", "D"),
        ("[A]", "A"),
        ("Answer: B", "B"),
        ("answer: c", "C"),
        ("The answer is (d).", "D"),
        ("The correct option is C", "C"),
        ("<answer>A</answer>", "A"),
        ("B. blue", "B"),
        ("C) green", "C"),
        ("d: a yellow thing", "D"),
        ("I think (c) is right", "C"),
        ("It is B", "B"),
        ("blue", "B"),
        ("The shape is green.", "C"),
        ("A blue circle", "B"),  # the article "A" is skipped, then the option text "blue" decides
        ("The answer is a red circle", "A"),
        ("", None),
        ("   ", None),
        ("I do not know", None),
        ("E", None),
        ("B or C", None),
        (None, None),
    ],
)
def test_parse_answer_letter(reply, expected):
    assert task_utils.parse_answer_letter(reply, OPTIONS) == expected


@pytest.mark.unit
def test_doc_hooks_without_lmms_eval(small_docs):
    doc = small_docs[1]
    text = task_utils.doc_to_text(doc, {"pre_prompt": "Q: ", "post_prompt": "\nLetter:"})
    lines = text.split("\n")
    assert lines[0] == "Q: " + doc["question"]
    assert lines[1:5] == [f"{c}. {o}" for c, o in zip("ABCD", doc["options"])]
    assert lines[5] == "Letter:"
    assert task_utils.doc_to_text(doc).endswith(task_utils.DEFAULT_POST_PROMPT)
    assert task_utils.doc_to_visual(doc) == [doc["video"]]
    assert task_utils.process_results(doc, [doc["answer"].lower() + ")"]) == {"acc": 1.0}
    wrong = "ABCD"[("ABCD".index(doc["answer"]) + 1) % 4]
    assert task_utils.process_results(doc, [f"Answer: {wrong}"]) == {"acc": 0.0}
    assert task_utils.process_results(doc, [""]) == {"acc": 0.0}
    # The generated folder carries an identical copy of the hooks.
    assert (Path(doc["video"]).parents[1] / "utils.py").read_text() == Path(task_utils.__file__).read_text()


@pytest.mark.tiny
def test_lmms_eval_loads_the_task(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lmms_eval.tasks import TaskManager, get_task_dict

    out = ensure_synthetic_task(tmp_path / "t", num_videos=8, num_frames=8, size=64, task_name="tango_synth_t")
    docs = load_docs(out)

    def load_task():
        tm = TaskManager("WARNING", include_path=str(out), include_defaults=False)
        assert "tango_synth_t" in tm.all_tasks
        return get_task_dict(["tango_synth_t"], tm)["tango_synth_t"]

    task = load_task()
    test_docs = task.test_docs()
    assert len(test_docs) == 8
    doc = test_docs[5]
    assert doc["doc_id"] == 5 and doc["answer"] == docs[5]["answer"] and doc["options"] == docs[5]["options"]
    text = task.doc_to_text(doc)
    assert text.startswith(doc["question"]) and "\nA. " in text and "\nD. " in text
    assert text.endswith("Answer with the option's letter from the given choices directly.")
    visual = task.doc_to_visual(doc)
    assert visual == [docs[5]["video"]] and os.path.isfile(visual[0])
    assert task.doc_to_target(doc) == doc["answer"]
    assert task.process_results(doc, [f"({doc['answer'].lower()})"]) == {"acc": 1.0}
    assert task.process_results(doc, ["E"]) == {"acc": 0.0}
    gen = task.config.generation_kwargs
    assert gen["do_sample"] is False and gen["max_new_tokens"] <= 16

    # Regenerating the same folder with other parameters is picked up (no stale datasets cache).
    ensure_synthetic_task(tmp_path / "t", num_videos=5, num_frames=8, size=64, task_name="tango_synth_t")
    assert len(load_task().test_docs()) == 5


@pytest.mark.tiny
def test_simple_evaluate_scores_an_oracle(tmp_path, monkeypatch):
    """End to end through lmms-eval: a model answering from the doc scores 1.0, one always saying "A" 1/4."""
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    from lmms_eval.api.model import lmms
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    out = ensure_synthetic_task(tmp_path / "t", num_videos=8, num_frames=4, size=48, task_name="tango_synth_e")

    class Fixed(lmms):
        is_simple = True

        def __init__(self, oracle: bool):
            super().__init__()
            self.oracle = oracle

        def generate_until(self, requests):
            replies = []
            for req in requests:
                context, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                assert doc_to_visual(doc) == [doc["video"]] and doc["question"] in context
                replies.append(f"Answer: {doc['answer']}" if self.oracle else "A")
            return replies

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    for oracle, expected in ((True, 1.0), (False, 0.25)):
        tm = TaskManager("WARNING", include_path=str(out), include_defaults=False)
        res = simple_evaluate(
            model=Fixed(oracle),
            tasks=["tango_synth_e"],
            task_manager=tm,
            batch_size=1,
            bootstrap_iters=0,
            log_samples=False,
        )
        assert float(res["results"]["tango_synth_e"]["acc,none"]) == pytest.approx(expected)
