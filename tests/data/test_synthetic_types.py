"""The pruning-study question types of the synthetic task (localized / temporal / counting / global), the train /
test split and per-type balance. Answers are checked against the rendered pixels, not the generator's own fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tango.data import synthetic as S
from tango.data.synthetic import (BRIGHTNESS_LEVELS, COLORS, PRUNING_QUESTION_TYPES, QUESTION_GROUPS, WHEN_OPTIONS,
                                  brief_window, ensure_synthetic_task, load_docs, make_doc, make_docs, render_video)

NEW = list(PRUNING_QUESTION_TYPES)
SPEC = dict(num_frames=32, size=112, fps=8)


def saturated(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.int16)
    return (f.max(-1) - f.min(-1)) > 70


def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: float(np.sum((np.asarray(COLORS[c], float) - rgb) ** 2)))


def frame_colors(frames: np.ndarray) -> list[set[str]]:
    """The palette colours visible in each frame (by nearest palette colour of the saturated pixels)."""
    out = []
    for f in frames:
        m = saturated(f)
        px = f[m].astype(float)
        out.append({nearest_color(p) for p in np.unique(px, axis=0)} if len(px) else set())
    return out


def rendered(doc) -> np.ndarray:
    return render_video(doc["background"], doc["objects"], doc["size"], doc["num_frames"])


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return make_docs(8 * len(NEW), question_types=NEW, seed=11, **SPEC)  # 8 docs of each new type


@pytest.mark.unit
def test_registry_and_groups():
    for t in NEW:
        assert t in S.QUESTION_TYPES
    assert {QUESTION_GROUPS[t] for t in NEW} == {"localized", "temporal", "counting", "global"}
    assert set(QUESTION_GROUPS) == set(S.QUESTION_TYPES)
    assert tuple(S.DEFAULT_QUESTION_TYPES) == ("color", "shape", "count", "direction")  # the default task is unchanged


@pytest.mark.unit
def test_balanced_letters_per_type(docs):
    for t in NEW:
        letters = [d["answer"] for d in docs if d["question_type"] == t]
        assert len(letters) == 8 and {c: letters.count(c) for c in "ABCD"} == dict.fromkeys("ABCD", 2), (t, letters)
    for d in docs:
        assert len(set(d["options"])) == 4 and d["options"][d["answer_index"]] == d["answer_text"]


@pytest.mark.unit
def test_brief_color_matches_pixels(docs):
    for d in (d for d in docs if d["question_type"] == "brief_color"):
        cols = frame_colors(rendered(d))
        shown = [t for t, c in enumerate(cols) if c]
        assert len(shown) == brief_window(d["num_frames"]) == 4  # visible in 4 of 32 frames only
        assert shown == list(range(shown[0], shown[0] + 4))
        assert set().union(*cols) == {d["answer_text"]}
        area = saturated(rendered(d)[shown[0]]).mean()
        assert area < 0.03  # a small object: < 3 % of the frame


@pytest.mark.unit
def test_order_matches_pixels(docs):
    for d in (d for d in docs if d["question_type"] == "order"):
        cols = frame_colors(rendered(d))
        seq = [next(iter(c)) for c in cols if c]
        assert all(len(c) <= 1 for c in cols)  # never on screen together
        first, last = seq[0], seq[-1]
        assert first != last and first == d["answer_text"] and last in d["options"]
        n = d["num_frames"]
        assert max(t for t, c in enumerate(cols) if first in c) < n // 2 <= min(t for t, c in enumerate(cols) if last in c)


@pytest.mark.unit
def test_when_matches_pixels(docs):
    for d in (d for d in docs if d["question_type"] == "when"):
        assert d["options"] == list(WHEN_OPTIONS)
        shown = [t for t, c in enumerate(frame_colors(rendered(d))) if c]
        quarters = {t * 4 // d["num_frames"] for t in shown}
        assert quarters == {d["answer_index"]}, (shown, d["answer_text"])


@pytest.mark.unit
def test_count_events_matches_pixels(docs):
    for d in (d for d in docs if d["question_type"] == "count_events"):
        cols = frame_colors(rendered(d))
        assert all(len(c) <= 1 for c in cols)  # one shape at a time
        assert len(set().union(*cols)) == int(d["answer_text"])
        # ... and each shape is on screen in one run of frames: count the runs
        runs = sum(1 for t, c in enumerate(cols) if c and (t == 0 or cols[t - 1] != c))
        assert runs == int(d["answer_text"])


@pytest.mark.unit
def test_background_matches_pixels(docs):
    for d in (d for d in docs if d["question_type"] == "background"):
        frame = rendered(d)[0]
        grey = frame[~saturated(frame)].mean()
        nearest = min(BRIGHTNESS_LEVELS, key=lambda k: abs(BRIGHTNESS_LEVELS[k] - grey))
        assert nearest == d["answer_text"] and d["options"] == list(BRIGHTNESS_LEVELS)


@pytest.mark.unit
def test_pruning_types_have_fixed_option_lists(docs):
    fixed = {"brief_color": list(S.EVENT_COLORS), "order": list(S.EVENT_COLORS), "when": list(WHEN_OPTIONS),
             "count_events": list(S.COUNT_OPTIONS), "background": list(BRIGHTNESS_LEVELS)}
    for d in docs:
        assert d["options"] == fixed[d["question_type"]], d["question_type"]


@pytest.mark.unit
def test_rendering_a_subset_of_frames_equals_indexing_the_full_render(docs):
    d = docs[1]
    idx = [0, 3, 3, 17, 31]
    full = render_video(d["background"], d["objects"], d["size"], d["num_frames"])
    assert np.array_equal(render_video(d["background"], d["objects"], d["size"], d["num_frames"], idx), full[idx])
    with pytest.raises(ValueError, match=r"frame_indices \[32\] are outside \[0, 31\]"):
        render_video(d["background"], d["objects"], d["size"], d["num_frames"], [0, 32])


@pytest.mark.unit
def test_small_clips_are_valid():
    """Short clips (down to 2 frames) still give valid scenes: objects inside the clip, 4 distinct options."""
    for n in (2, 3, 5, 8, 16):
        for d in make_docs(2 * len(NEW), question_types=NEW, seed=3, num_frames=n, size=48, fps=8):
            assert all(0 <= o["t_start"] <= o["t_end"] <= n - 1 for o in d["objects"])
            assert len(set(d["options"])) == 4
            assert saturated(rendered(d)).any()


@pytest.mark.unit
def test_determinism_and_split_disjointness():
    a = make_docs(40, question_types=NEW, seed=5, split="train", **SPEC)
    assert a == make_docs(40, question_types=NEW, seed=5, split="train", **SPEC)
    assert a[10:20] == make_docs(10, question_types=NEW, seed=5, split="train", start=10, **SPEC)
    test = make_docs(40, question_types=NEW, seed=5, split="test", **SPEC)
    key = lambda d: json.dumps([d["background"], d["objects"]], sort_keys=True)
    assert not {key(d) for d in a} & {key(d) for d in test}
    # Across seeds as well: train scenes of seeds 0-4 never equal test scenes of seeds 0-4.
    train_all = {key(d) for s in range(5) for d in make_docs(20, question_types=NEW, seed=s, split="train", **SPEC)}
    test_all = {key(d) for s in range(5) for d in make_docs(20, question_types=NEW, seed=s, **SPEC)}
    assert not train_all & test_all
    assert all(d["split"] == "train" for d in a) and all("split" not in d for d in test)
    with pytest.raises(ValueError, match="split='val' is invalid"):
        make_docs(2, split="val")


@pytest.mark.unit
def test_test_split_is_the_pre_split_stream():
    """The default (test) split draws doc i from default_rng([seed, i]), as the generator always did."""
    spec = S.SceneSpec(size=64, num_frames=8, fps=8)
    d = make_doc(3, spec=spec, seed=7)
    q = S.QUESTION_TYPES[d["question_type"]](np.random.default_rng([7, 3]), spec, d["answer_index"])
    assert (q.question, q.options, q.objects, q.background) == (d["question"], d["options"], d["objects"],
                                                                 d["background"])


@pytest.mark.unit
def test_task_folder_with_new_types_and_train_split(tmp_path):
    kw = dict(num_videos=5, num_frames=8, size=48, fps=8, seed=2, question_types=NEW)
    out = ensure_synthetic_task(tmp_path / "t", split="train", **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["split"] == "train" and manifest["params"]["question_types"] == NEW
    got = load_docs(out)
    spec = S.SceneSpec(size=48, num_frames=8, fps=8)
    for d in got:
        assert d == make_doc(d["doc_id"], spec=spec, seed=2, question_types=NEW, split="train",
                             video_dir=out / "videos")
    # The test split needs no `split` entry in the manifest: folders built before splits existed stay current.
    out2 = ensure_synthetic_task(tmp_path / "u", **kw)
    assert "split" not in json.loads((out2 / "manifest.json").read_text())["params"]
    assert [d["question"] for d in load_docs(out2)] == [d["question"] for d in got]  # same types, other scenes
    assert [d["objects"] for d in load_docs(out2)] != [d["objects"] for d in got]
    with pytest.raises(ValueError, match="split"):
        ensure_synthetic_task(tmp_path / "v", split="dev", **kw)


@pytest.mark.unit
def test_yuv420p_round_trip():
    rng = np.random.default_rng(0)
    d = make_docs(1, question_types=["background"], seed=1, num_frames=4, size=64, fps=8)[0]
    f = rendered(d)[0]
    back = S.yuv420p_to_rgb(S.rgb_to_yuv420p(f))
    assert back.shape == f.shape and back.dtype == np.uint8
    h, w = f.shape[:2]
    block = saturated(f).reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3)).repeat(2, 0).repeat(2, 1)
    flat = ~block  # 2x2 chroma blocks without any shape pixel
    assert np.abs(back[flat].astype(int) - f[flat]).max() <= 3  # greys survive; chroma only blurs shape edges
    noise = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    assert S.yuv420p_to_rgb(S.rgb_to_yuv420p(noise)).shape == (8, 8, 3)
