"""Test data for tests/tasks: a fake data root in the real schemas of the four benchmarks (2-4 docs each) with tiny
synthetic mp4s. (Not a conftest.py: a second `conftest` module would shadow tests/conftest.py for
`from conftest import ...` in other test files.)

Layout as ``scripts/prepare_data.py`` leaves it (see ``tango/tasks/layout.py``); MVBench's ``moving_count`` videos
sit only under ``mvbench_video/data0613/`` to exercise the fallback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# Real columns (lmms-eval 0.7.3 utils + the hub dataset cards).
VIDEOMME_DOCS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "How many shapes appear?",
     "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-2",
     "task_type": "Object Recognition", "question": "Which shape is red?",
     "options": ["A. Circle.", "B. Square.", "C. Triangle.", "D. Star."], "answer": "A"},
    {"video_id": "302", "duration": "medium", "domain": "Sports Competition", "sub_category": "Football",
     "url": "https://www.youtube.com/watch?v=Xx0aBcDeFgH", "videoID": "Xx0aBcDeFgH", "question_id": "302-1",
     "task_type": "Action Reasoning", "question": "Why does the player stop?",
     "options": ["A. Tired.", "B. Whistle.", "C. Injury.", "D. Rain."], "answer": "B"},
]
MLVU_DOCS = [
    {"video_name": "count_1.mp4", "duration": 300.5, "question": "How many cups?\n(A) 1\n(B) 2\n(C) 3\n(D) 4",
     "candidates": ["1", "2", "3", "4"], "answer": "B", "task_type": "count", "question_id": "count_1"},
    {"video_name": "count_2.mp4", "duration": 410.0, "question": "How many dogs?\n(A) 2\n(B) 3\n(C) 5\n(D) 6",
     "candidates": ["2", "3", "5", "6"], "answer": "D", "task_type": "count", "question_id": "count_2"},
    {"video_name": "needle_1.mp4", "duration": 520.0, "question": "What is inserted?\n(A) a\n(B) b\n(C) c\n(D) d",
     "candidates": ["a", "b", "c", "d"], "answer": "A", "task_type": "needle", "question_id": "needle_1"},
    {"video_name": "order_1.mp4", "duration": 610.0, "question": "Which order?\n(A) 1-2\n(B) 2-1\n(C) 1-1\n(D) 2-2",
     "candidates": ["1-2", "2-1", "1-1", "2-2"], "answer": "C", "task_type": "order", "question_id": "order_1"},
]


def _lvb(i, correct, n_opts, group, category):
    opts = [f"option text {i}-{k}" for k in range(n_opts)] + ["N/A"] * (5 - n_opts)
    return {"video_id": f"vid{i:03d}", "id": f"vid{i:03d}_{i}", "video_path": f"vid{i:03d}.mp4",
            "subtitle_path": f"vid{i:03d}_en.json", "correct_choice": correct,
            "question": f"In the scene where the subtitle says 'x{i}', what happens?",
            **{f"option{k}": o for k, o in enumerate(opts)}, "duration": 15.0 * (i + 1), "duration_group": group,
            "question_category": category, "topic_category": "NP-News-Programs",
            "starting_timestamp_for_subtitles": 0.0}


LVB_DOCS = [_lvb(0, 2, 4, 15, "S2E"), _lvb(1, 0, 5, 60, "E2O"), _lvb(2, 4, 5, 600, "S2E"), _lvb(3, 1, 4, 3600, "T3O")]

# The stub model answers wrong on these doc ids (see test_local_tasks.py); expected scores follow.
WRONG = {"videomme_local": {1}, "mlvu_dev_local": {1}, "longvideobench_val_v_local": {1}}


def mvbench_docs(sub: str) -> list[dict]:
    return [{"video": f"{sub}_{i}.mp4", "question": f"What happens in {sub} clip {i}?",
             "candidates": [f"{sub} answer {k}" for k in range(3 + i)], "answer": f"{sub} answer {(i + 1) % (3 + i)}"}
            for i in range(2)]


def write_tiny_mp4(path: Path, frames: int = 4, size: int = 32) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def build_data_root(root: Path, mvbench_fallback_sub: str = "moving_count", frames: int = 4) -> dict:
    """Write annotations + videos (``frames`` frames each) for all four benchmarks under ``root``; return
    {benchmark: [video paths]}."""
    from tango.tasks.layout import mvbench_data_list, mvbench_subtasks

    root.mkdir(parents=True, exist_ok=True)
    proto = root / "proto.mp4"
    write_tiny_mp4(proto, frames=frames)
    videos: dict[str, list[Path]] = {}

    def put(key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, path)
        videos.setdefault(key, []).append(path)

    _parquet(root / "videomme" / "test-00000-of-00001.parquet", VIDEOMME_DOCS)
    for vid in dict.fromkeys(d["videoID"] for d in VIDEOMME_DOCS):
        put("videomme", root / "videomme" / "data" / f"{vid}.mp4")
    _parquet(root / "mlvu" / "test-00000-of-00001.parquet", MLVU_DOCS)
    for d in MLVU_DOCS:
        put("mlvu_dev", root / "mlvu" / d["video_name"])
    _parquet(root / "datasets" / "longvideobench" / "validation-00000-of-00001.parquet", LVB_DOCS)
    for d in LVB_DOCS:
        put("longvideobench_val_v", root / "datasets" / "longvideobench" / "videos" / d["video_path"])
    data_list = mvbench_data_list()
    for sub in mvbench_subtasks():
        docs = mvbench_docs(sub)
        (root / "mvbench_video" / "json").mkdir(parents=True, exist_ok=True)
        (root / "mvbench_video" / "json" / f"{sub}.json").write_text(json.dumps(docs, indent=1))
        for d in docs:
            folder = root / "mvbench_video" / ("data0613" if sub == mvbench_fallback_sub else "") / data_list[sub]
            put("mvbench", folder / d["video"])
    proto.unlink()
    return {k: [str(p) for p in v] for k, v in videos.items()}
