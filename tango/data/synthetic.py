"""Offline synthetic video benchmark: coloured shapes moving over a plain or gradient background.

``ensure_synthetic_task(out_dir)`` builds (once, deterministically from the seed) a small multiple-choice video QA
task that lmms-eval 0.7.3 can load offline with ``TaskManager(include_path=out_dir)``::

    out_dir/
      videos/v00000.mp4 ...   libx264 / yuv420p, size x size, fps, num_frames frames (PyAV)
      test.jsonl              one question per video (doc fields: see ``_build``)
      <task_name>.yaml        filled from task_template/task.yaml.tmpl (dataset_path: json, absolute data_files)
      utils.py                copied from task_template/utils.py (doc_to_visual / doc_to_text / process_results)
      manifest.json           the generation parameters; same parameters -> nothing is rebuilt

Question types are small functions in a registry (``QUESTION_TYPES``, ``@register_question_type``). Each one draws a
scene (background + objects, every object a shape moving linearly during its visible frames ``[t_start, t_end]``)
and a question whose correct option sits at a given letter, so answers are balanced over A-D by construction. New
types (objects visible in a few frames only, temporal order, counting over time, background questions) are new
functions over the same scene schema.

Concurrency: generation takes a file lock next to ``out_dir`` and builds into a temporary sibling folder renamed into
place, with ``manifest.json`` written last, so concurrent callers (SLURM array tasks) never see a half-written task.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tango.data.task_template.utils import LETTERS, parse_answer_letter

__all__ = [
    "COLORS",
    "BRIGHTNESS_LEVELS",
    "DEFAULT_QUESTION_TYPES",
    "COUNT_OPTIONS",
    "DIRECTIONS",
    "EVENT_COLORS",
    "PRUNING_QUESTION_TYPES",
    "QUESTION_GROUPS",
    "QUESTION_TYPES",
    "SPLITS",
    "WHEN_OPTIONS",
    "SHAPES",
    "Question",
    "SceneSpec",
    "ensure_synthetic_task",
    "brief_window",
    "doc_rng",
    "load_docs",
    "make_doc",
    "make_docs",
    "object_center",
    "parse_answer_letter",
    "register_question_type",
    "render_video",
    "rgb_to_yuv420p",
    "yuv420p_to_rgb",
]

GENERATOR = "tango.data.synthetic"
# Bump when the rendering / question logic changes in a way that changes the output for the same parameters.
GENERATOR_VERSION = 3

TEMPLATE_DIR = Path(__file__).resolve().parent / "task_template"
TEMPLATE_FILES = ("task.yaml.tmpl", "utils.py")

# A small palette of clearly distinct, saturated colours (max - min channel >= 150). Backgrounds are low-saturation
# greys (max - min <= 20), so "saturated pixel" == "shape pixel", also after yuv420p compression.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 210),
    "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS = ("left", "right", "up", "down")  # image coordinates: "up" = decreasing y

# Valid ranges of the public arguments: (low, high), inclusive.
RANGES = {
    "num_videos": (1, 100_000),
    "num_frames": (2, 4096),
    "size": (48, 1024),  # >= 48 px keeps the smallest shape (count scenes, r = 0.1 * size) >= 10 px across
    "fps": (1, 120),
    "seed": (0, 2**63 - 1),
}
# Splits: ``test`` is the evaluation split (doc i of seed s is drawn from the stream ``[s, i]``, as before splits
# existed); ``train`` draws from ``[s, i, TRAIN_STREAM]``, a disjoint family of streams, so no train scene is an
# evaluation scene for any (seed, index) pair.
SPLITS = ("test", "train")
TRAIN_STREAM = 0x7472_6169_6E  # "train"
_TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


# ----------------------------------------------------------------------------------------------------------------
# Scene schema and rendering
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """What a question generator may depend on besides its RNG."""

    size: int
    num_frames: int
    fps: int


@dataclass
class Question:
    """A question generator's output: the scene to render and one multiple-choice question about it.

    ``background``: ``{"kind": "plain"|"gradient", "axis": "horizontal"|"vertical", "rgb0": [r,g,b], "rgb1": [r,g,b]}``
    (plain: rgb1 == rgb0). ``objects``: dicts made by ``_object`` (same keys for every object and every type, so the
    JSONL has one schema that pyarrow / datasets can load).
    """

    question: str
    options: list[str]
    answer_index: int
    background: dict[str, Any]
    objects: list[dict[str, Any]]


QuestionFn = Callable[[np.random.Generator, SceneSpec, int], Question]
QUESTION_TYPES: dict[str, QuestionFn] = {}
DEFAULT_QUESTION_TYPES = ("color", "shape", "count", "direction")


def register_question_type(name: str) -> Callable[[QuestionFn], QuestionFn]:
    """Register ``fn(rng, spec, answer_index) -> Question`` under ``name``; the correct option must be at
    ``options[answer_index]``."""

    def deco(fn: QuestionFn) -> QuestionFn:
        if name in QUESTION_TYPES:
            raise ValueError(f"question type {name!r} is already registered")
        QUESTION_TYPES[name] = fn
        return fn

    return deco


def _object(
    shape: str,
    color: str,
    radius: float,
    start: tuple[float, float],
    end: tuple[float, float],
    t_start: int,
    t_end: int,
) -> dict[str, Any]:
    """One object: ``shape`` of colour ``color`` with "radius" ``radius`` px, its centre moving linearly from
    ``start`` (at frame ``t_start``) to ``end`` (at ``t_end``), drawn only in frames ``t_start..t_end``."""
    return {
        "shape": shape,
        "color": color,
        "rgb": list(COLORS[color]),
        "radius": round(float(radius), 3),
        "x0": round(float(start[0]), 3),
        "y0": round(float(start[1]), 3),
        "x1": round(float(end[0]), 3),
        "y1": round(float(end[1]), 3),
        "t_start": int(t_start),
        "t_end": int(t_end),
    }


def _random_background(rng: np.random.Generator) -> dict[str, Any]:
    """A plain or linear-gradient background of low-saturation greys (never confusable with the palette)."""

    def grey(level: int) -> list[int]:
        return [int(np.clip(level + rng.integers(-8, 9), 0, 255)) for _ in range(3)]

    g0 = int(rng.integers(70, 181))
    if rng.random() < 0.5:
        rgb = grey(g0)
        return {"kind": "plain", "axis": "horizontal", "rgb0": rgb, "rgb1": list(rgb)}
    g1 = int(rng.integers(70, 181))
    while abs(g1 - g0) < 40:
        g1 = int(rng.integers(70, 181))
    axis = "horizontal" if rng.random() < 0.5 else "vertical"
    return {"kind": "gradient", "axis": axis, "rgb0": grey(g0), "rgb1": grey(g1)}


def _render_background(bg: dict[str, Any], size: int) -> np.ndarray:
    c0 = np.asarray(bg["rgb0"], dtype=np.float32)
    c1 = np.asarray(bg["rgb1"], dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if bg["axis"] == "horizontal":  # colour changes along x
        w = np.broadcast_to(ramp[None, :, None], (size, size, 1))
    else:
        w = np.broadcast_to(ramp[:, None, None], (size, size, 1))
    return np.rint(c0 * (1.0 - w) + c1 * w).astype(np.uint8)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up, base down; height 2r, base 2r
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def object_center(obj: dict[str, Any], t: int) -> tuple[float, float]:
    """The centre (x, y) of ``obj`` at frame ``t`` (linear between its start and end)."""
    span = obj["t_end"] - obj["t_start"]
    a = 0.0 if span <= 0 else min(max((t - obj["t_start"]) / span, 0.0), 1.0)
    return obj["x0"] + a * (obj["x1"] - obj["x0"]), obj["y0"] + a * (obj["y1"] - obj["y0"])


def render_video(background: dict[str, Any], objects: list[dict[str, Any]], size: int, num_frames: int,
                 frame_indices=None) -> np.ndarray:
    """Render a scene to ``(num_frames, size, size, 3)`` uint8 RGB (objects drawn in list order); with
    ``frame_indices`` only those frames (``render_video(...)[frame_indices]``, without drawing the others)."""
    bg = _render_background(background, size)
    ts = range(num_frames) if frame_indices is None else [int(t) for t in frame_indices]
    bad = [t for t in ts if not 0 <= t < num_frames]
    if bad:
        raise ValueError(f"frame_indices {bad} are outside [0, {num_frames - 1}]")
    frames = np.empty((len(ts), size, size, 3), dtype=np.uint8)
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    for i, t in enumerate(ts):
        frame = bg.copy()
        for obj in objects:
            if not obj["t_start"] <= t <= obj["t_end"]:
                continue
            cx, cy = object_center(obj, t)
            mask = _shape_mask(obj["shape"], coords[None, :] - cx, coords[:, None] - cy, obj["radius"])
            frame[mask] = obj["rgb"]
        frames[i] = frame
    return frames


# ----------------------------------------------------------------------------------------------------------------
# Question types
# ----------------------------------------------------------------------------------------------------------------


def _place_answer(rng: np.random.Generator, answer: str, pool: list[str], answer_index: int) -> list[str]:
    """4 options: ``answer`` at ``answer_index``, 3 distractors drawn from ``pool`` (without ``answer``)."""
    distractors = [p for p in pool if p != answer]
    picked = [distractors[i] for i in rng.permutation(len(distractors))[: len(LETTERS) - 1]]
    picked.insert(answer_index, answer)
    return picked


def _single_mover(rng: np.random.Generator, spec: SceneSpec, shape: str, color: str, direction: str) -> dict[str, Any]:
    """One shape crossing the middle of the frame in ``direction``, over the whole clip, never leaving the frame."""
    s = spec.size
    r = 0.14 * s
    a, b = 0.22 * s, 0.78 * s  # travel along the axis: 56 % of the frame
    across = float(rng.uniform(0.3, 0.7)) * s
    start, end = {
        "right": ((a, across), (b, across)),
        "left": ((b, across), (a, across)),
        "down": ((across, a), (across, b)),
        "up": ((across, b), (across, a)),
    }[direction]
    return _object(shape, color, r, start, end, 0, spec.num_frames - 1)


def _choice(rng: np.random.Generator, seq) -> Any:
    return seq[int(rng.integers(len(seq)))]


@register_question_type("color")
def _q_color(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    color = _choice(rng, list(COLORS))
    options = _place_answer(rng, color, list(COLORS), answer_index)
    obj = _single_mover(rng, spec, _choice(rng, SHAPES), color, _choice(rng, DIRECTIONS))
    return Question(
        "What is the color of the moving shape in the video?", options, answer_index, _random_background(rng), [obj]
    )


@register_question_type("shape")
def _q_shape(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    shape = _choice(rng, SHAPES)
    options = _place_answer(rng, shape, list(SHAPES), answer_index)
    obj = _single_mover(rng, spec, shape, _choice(rng, list(COLORS)), _choice(rng, DIRECTIONS))
    return Question(
        "What is the shape of the moving object in the video?", options, answer_index, _random_background(rng), [obj]
    )


@register_question_type("direction")
def _q_direction(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    direction = _choice(rng, DIRECTIONS)
    options = _place_answer(rng, direction, list(DIRECTIONS), answer_index)
    obj = _single_mover(rng, spec, _choice(rng, SHAPES), _choice(rng, list(COLORS)), direction)
    return Question(
        "In which direction does the shape move in the video?", options, answer_index, _random_background(rng), [obj]
    )


@register_question_type("count")
def _q_count(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """1-5 shapes of distinct colours, each drifting inside its own cell of a 3x3 grid (so they never overlap);
    the options are 4 consecutive numbers (1-4 or 2-5) in increasing order."""
    low = int(rng.integers(1, 3))
    count = low + answer_index
    options = [str(low + i) for i in range(len(LETTERS))]
    s = spec.size
    cell = s / 3.0
    r = 0.1 * s
    slack = max(cell / 2.0 - r - 1.0, 0.0)  # how far a centre may move from its cell centre
    cells = rng.permutation(9)[:count]
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:count]]
    objects = []
    for c, color in zip(cells, colors):
        cx, cy = (c % 3 + 0.5) * cell, (c // 3 + 0.5) * cell
        d0, d1 = rng.uniform(-slack, slack, size=2), rng.uniform(-slack, slack, size=2)
        objects.append(
            _object(
                _choice(rng, SHAPES),
                color,
                r,
                (cx + d0[0], cy + d0[1]),
                (cx + d1[0], cy + d1[1]),
                0,
                spec.num_frames - 1,
            )
        )
    return Question("How many shapes are there in the video?", options, answer_index, _random_background(rng), objects)


# ---- Types for pruning studies: where the answer lives in the visual tokens differs by group. ----------------
# localized: a small object seen in a few frames only (the answer lives in a handful of tokens);
# temporal: when / in which order things appear; counting: objects that appear one after another over the video;
# global (control): the background, answerable from almost any token.

WHEN_OPTIONS = ("beginning", "early middle", "late middle", "end")  # the four quarters of the clip, in order
# The pruning types use one fixed option list each, in a fixed order (the answer index picks the option): what they
# test is which visual tokens survive pruning, not matching free text against shuffled options.
EVENT_COLORS = ("red", "green", "blue", "yellow")  # brief_color / order: the colours asked about, option order
COUNT_OPTIONS = ("1", "2", "3", "4")  # count_events
BRIGHTNESS_LEVELS = {"very dark": 45, "dark": 95, "bright": 150, "very bright": 205}  # grey level of each option


def brief_window(num_frames: int) -> int:
    """Frames a "brief" object is visible: 1/8 of the clip (>= 2), e.g. 4 of 32 frames; any ``linspace`` sampling
    of >= half the frames sees it in >= 1 frame."""
    return max(2, num_frames // 8)


def _brief_object(rng: np.random.Generator, spec: SceneSpec, color: str, shape: str, t_start: int,
                  radius_frac: float = 0.09, length: int | None = None) -> dict[str, Any]:
    """A small shape visible in frames ``t_start .. t_start + length - 1`` (default ``brief_window``), drifting a
    little, anywhere inside the frame (never clipped)."""
    s = spec.size
    r = radius_frac * s
    lo, hi = r + 1.0, s - r - 1.0
    x0, y0 = rng.uniform(lo, hi, size=2)
    drift = 0.08 * s
    x1 = float(np.clip(x0 + rng.uniform(-drift, drift), lo, hi))
    y1 = float(np.clip(y0 + rng.uniform(-drift, drift), lo, hi))
    length = brief_window(spec.num_frames) if length is None else max(int(length), 1)
    t_end = min(t_start + length - 1, spec.num_frames - 1)
    return _object(shape, color, r, (x0, y0), (x1, y1), t_start, t_end)


def _plain_grey(rng: np.random.Generator, level: int) -> dict[str, Any]:
    rgb = [int(np.clip(level + rng.integers(-6, 7), 0, 255))] * 3
    return {"kind": "plain", "axis": "horizontal", "rgb0": rgb, "rgb1": list(rgb)}


@register_question_type("brief_color")
def _q_brief_color(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """localized: one small shape visible in ``brief_window`` consecutive frames only; its colour. Options are
    ``EVENT_COLORS`` in order."""
    color = EVENT_COLORS[answer_index]
    t0 = int(rng.integers(0, spec.num_frames - brief_window(spec.num_frames) + 1))
    obj = _brief_object(rng, spec, color, _choice(rng, SHAPES), t0)
    return Question("What is the color of the small shape that appears briefly in the video?", list(EVENT_COLORS),
                    answer_index, _random_background(rng), [obj])


@register_question_type("order")
def _q_order(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """temporal: two shapes of different colours (from ``EVENT_COLORS``, the options, in order), one visible only
    in the first half and one only in the second (never together); which colour appears first."""
    n, w = spec.num_frames, brief_window(spec.num_frames)
    first = EVENT_COLORS[answer_index]
    others = [c for c in EVENT_COLORS if c != first]
    second = others[int(rng.integers(len(others)))]
    half = n // 2
    t_a = int(rng.integers(0, max(half - w, 0) + 1))
    t_b = int(rng.integers(half, max(n - w, half) + 1))
    objs = [_brief_object(rng, spec, first, _choice(rng, SHAPES), t_a, 0.11, length=min(w, half - t_a)),
            _brief_object(rng, spec, second, _choice(rng, SHAPES), t_b, 0.11)]
    return Question("Which color appears first in the video?", list(EVENT_COLORS), answer_index,
                    _random_background(rng), objs)


@register_question_type("when")
def _q_when(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """temporal: one shape visible in ``brief_window`` frames inside one quarter of the clip; which quarter.
    Options are the four quarters in order (``WHEN_OPTIONS``), so the answer index is the quarter."""
    n, w = spec.num_frames, brief_window(spec.num_frames)
    q0, q1 = answer_index * n // 4, (answer_index + 1) * n // 4  # quarter [q0, q1)
    t0 = int(rng.integers(q0, max(q1 - w, q0) + 1))
    obj = _brief_object(rng, spec, _choice(rng, list(COLORS)), _choice(rng, SHAPES), t0, 0.11)
    return Question("In which part of the video does the shape appear?", list(WHEN_OPTIONS), answer_index,
                    _random_background(rng), [obj])


@register_question_type("count_events")
def _q_count_events(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """counting over time: 1-4 shapes of distinct colours, each visible in its own ``brief_window`` of frames (the
    windows never overlap, so at most one shape is on screen at a time); options ``COUNT_OPTIONS`` in order."""
    count = answer_index + 1
    n, w = spec.num_frames, brief_window(spec.num_frames)
    slot = max(n // 5, 1)  # 5 slots of n // 5 frames: one shape per chosen slot, visible min(w, slot) frames
    w = min(w, slot)
    slots = np.sort(rng.permutation(5)[:count])
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:count]]
    objs = []
    for k, color in zip(slots, colors):
        t0 = min(int(k * slot + rng.integers(0, slot - w + 1)), n - 1)
        objs.append(_brief_object(rng, spec, color, _choice(rng, SHAPES), t0, 0.11, length=w))
    return Question("How many different shapes appear one after another in the video?", list(COUNT_OPTIONS),
                    answer_index, _random_background(rng), objs)


@register_question_type("background")
def _q_background(rng: np.random.Generator, spec: SceneSpec, answer_index: int) -> Question:
    """global (control): a plain grey background at one of four brightness levels, with one moving shape as a
    distractor; options are the levels from dark to bright, so the answer index is the level."""
    options = list(BRIGHTNESS_LEVELS)
    bg = _plain_grey(rng, BRIGHTNESS_LEVELS[options[answer_index]])
    obj = _single_mover(rng, spec, _choice(rng, SHAPES), _choice(rng, list(COLORS)), _choice(rng, DIRECTIONS))
    return Question("How bright is the background of the video?", options, answer_index, bg, [obj])


QUESTION_GROUPS = {
    "color": "appearance", "shape": "appearance", "count": "counting", "direction": "motion",
    "brief_color": "localized", "order": "temporal", "when": "temporal", "count_events": "counting",
    "background": "global",
}
# The types meant for pruning studies (one or two per group); DEFAULT_QUESTION_TYPES are the original four.
PRUNING_QUESTION_TYPES = ("brief_color", "order", "when", "count_events", "background")


# ----------------------------------------------------------------------------------------------------------------
# Argument checks, manifest, building
# ----------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any) -> int:
    low, high = RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")  # noqa: TRY004 (API: ValueError)
    if not low <= int(value) <= high:
        raise ValueError(f"{name}={value} is out of range: valid range is [{low}, {high}]")
    return int(value)


def check_args(num_videos, num_frames, size, fps, seed, task_name, question_types, split="test") -> dict[str, Any]:
    params = {
        "num_videos": _check_int("num_videos", num_videos),
        "num_frames": _check_int("num_frames", num_frames),
        "size": _check_int("size", size),
        "fps": _check_int("fps", fps),
        "seed": _check_int("seed", seed),
    }
    if params["size"] % 2:
        raise ValueError(f"size={size} must be even (yuv420p); valid range is even values in {list(RANGES['size'])}")
    if not isinstance(task_name, str) or not _TASK_NAME_RE.match(task_name):
        raise ValueError(f"task_name={task_name!r} is invalid: it must match {_TASK_NAME_RE.pattern}")
    types = list(DEFAULT_QUESTION_TYPES if question_types is None else question_types)
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if not types or unknown or len(set(types)) != len(types):
        raise ValueError(
            f"question_types={question_types!r} is invalid: give distinct names from {sorted(QUESTION_TYPES)}"
        )
    params["task_name"] = task_name
    params["question_types"] = types
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: valid splits are {list(SPLITS)}")
    if split != "test":  # "test" is left out of the manifest, so folders built before splits existed stay current
        params["split"] = split
    return params


def _template_digest() -> str:
    h = hashlib.sha256()
    for name in TEMPLATE_FILES:
        h.update(name.encode())
        h.update((TEMPLATE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _expected_manifest(params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "template_sha256": _template_digest(),
        "params": params,
        "encoder": {"codec": "libx264", "pix_fmt": "yuv420p", **X264_OPTIONS},
        "out_dir": str(out_dir),  # the docs hold absolute paths: a moved folder is rebuilt
    }


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(out_dir: Path, expected: dict[str, Any]) -> bool:
    manifest = _read_manifest(out_dir)
    if manifest is None or any(manifest.get(k) != v for k, v in expected.items()):
        return False
    p = expected["params"]
    required = [out_dir / "test.jsonl", out_dir / "utils.py", out_dir / f"{p['task_name']}.yaml"]
    required += [out_dir / "videos" / f"{_video_id(i)}.mp4" for i in range(p["num_videos"])]
    return all(f.is_file() for f in required)


def _video_id(index: int) -> str:
    return f"v{index:05d}"


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 -> planar yuv420p as PyAV's ``(H * 3 // 2, W)`` layout (BT.601, limited range, 2x2
    chroma averaging), computed in numpy so the encoder input does not depend on the CPU's swscale code path."""
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).ravel() for p in (y, sub(cb), sub(cr))]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def yuv420p_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_yuv420p`` (nearest-neighbour chroma upsampling, BT.601 limited range) -> ``(H, W, 3)``
    uint8. ``yuv420p_to_rgb(rgb_to_yuv420p(f))`` approximates what a decoder returns for ``f`` (chroma blur at
    edges, small colour shifts) without encoding, e.g. for training on rendered frames."""
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    flat = yuv.ravel()
    y = flat[: h * w].reshape(h, w).astype(np.float64) - 16.0
    u = flat[h * w : h * w + h * w // 4].reshape(h // 2, w // 2).astype(np.float64) - 128.0
    v = flat[h * w + h * w // 4 :].reshape(h // 2, w // 2).astype(np.float64) - 128.0
    u = u.repeat(2, 0).repeat(2, 1)
    v = v.repeat(2, 0).repeat(2, 1)
    r = 1.164383 * y + 1.596027 * v
    g = 1.164383 * y - 0.391762 * u - 0.812968 * v
    b = 1.164383 * y + 2.017232 * u
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


# x264 settings. `mbtree=0` makes the bitstream reproducible: with the macroblock-tree rate control on, repeated
# encodes of the same frames in one process differed now and then (its propagation step is float SIMD code, the one
# kind of x264 assembly that is not bit-exact with the C version). Integer SIMD paths are bit-exact with C, so the
# videos should also be identical across CPU types; `asm=0` also worked but was 5x slower.
X264_OPTIONS = {"crf": "18", "preset": "medium", "x264-params": "mbtree=0"}


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av  # PyAV; imported lazily so `import tango.data` stays cheap

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(X264_OPTIONS))
        stream.width = stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _av_version() -> str:
    import av

    return str(getattr(av, "__version__", "unknown"))


def _answer_index(doc_index: int, num_types: int) -> int:
    """Balanced letters: within a type the letter cycles A..D, and each type starts one letter later."""
    return (doc_index // num_types + doc_index % num_types) % len(LETTERS)


def doc_rng(seed: int, index: int, split: str = "test") -> np.random.Generator:
    """The RNG of doc ``index``: one independent stream per (seed, index, split), so doc i does not depend on
    ``num_videos`` and the train streams never coincide with the test streams."""
    if split == "test":
        return np.random.default_rng([seed, index])
    if split == "train":
        return np.random.default_rng([seed, index, TRAIN_STREAM])
    raise ValueError(f"split={split!r} is invalid: valid splits are {list(SPLITS)}")


def make_doc(
    index: int,
    *,
    spec: SceneSpec,
    seed: int,
    question_types: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    video_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Doc ``index`` of a task (exactly the doc ``ensure_synthetic_task`` writes for the same arguments), without
    rendering or encoding anything: type ``question_types[index % len]``, balanced answer letter, scene + question.
    ``video`` is ``video_dir/<video_id>.mp4`` (``None`` without ``video_dir``). Render it with
    ``render_video(doc["background"], doc["objects"], doc["size"], doc["num_frames"])``."""
    types = list(DEFAULT_QUESTION_TYPES if question_types is None else question_types)
    qtype = types[index % len(types)]
    answer_index = _answer_index(index, len(types))
    q = QUESTION_TYPES[qtype](doc_rng(seed, index, split), spec, answer_index)
    if len(q.options) != len(LETTERS) or len(set(q.options)) != len(LETTERS):
        raise RuntimeError(f"question type {qtype!r} produced bad options {q.options}")
    video_id = _video_id(index)
    doc = {
        "doc_id": index,
        "video_id": video_id,
        "video": None if video_dir is None else str(Path(video_dir) / f"{video_id}.mp4"),
        "question_type": qtype,
        "question": q.question,
        "options": list(q.options),
        "answer": LETTERS[q.answer_index],
        "answer_index": int(q.answer_index),
        "answer_text": q.options[q.answer_index],
        "num_frames": spec.num_frames,
        "size": spec.size,
        "fps": spec.fps,
        "seed": seed,
        "background": q.background,
        "objects": q.objects,
    }
    if split != "test":  # test docs keep the schema they had before splits existed
        doc["split"] = split
    return doc


def make_docs(
    num_videos: int,
    *,
    num_frames: int = 32,
    size: int = 112,
    fps: int = 8,
    seed: int = 1234,
    question_types: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    start: int = 0,
) -> list[dict[str, Any]]:
    """Docs ``start .. start + num_videos - 1`` in memory (no files), checked like ``ensure_synthetic_task``'s
    arguments; for training loops that render frames directly."""
    params = check_args(num_videos, num_frames, size, fps, seed, "tango_synthetic", question_types, split)
    spec = SceneSpec(size=params["size"], num_frames=params["num_frames"], fps=params["fps"])
    return [make_doc(i, spec=spec, seed=params["seed"], question_types=params["question_types"], split=split)
            for i in range(start, start + params["num_videos"])]


def _build(tmp_dir: Path, final_dir: Path, params: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write the whole task into ``tmp_dir`` with paths pointing into ``final_dir``; manifest.json last."""
    started = time.perf_counter()
    spec = SceneSpec(size=params["size"], num_frames=params["num_frames"], fps=params["fps"])
    types = params["question_types"]
    (tmp_dir / "videos").mkdir(parents=True)
    docs = []
    for i in range(params["num_videos"]):
        doc = make_doc(i, spec=spec, seed=params["seed"], question_types=types, split=params.get("split", "test"),
                       video_dir=final_dir / "videos")
        video_id = doc["video_id"]
        _write_mp4(
            tmp_dir / "videos" / f"{video_id}.mp4",
            render_video(doc["background"], doc["objects"], spec.size, spec.num_frames),
            spec.fps,
        )
        docs.append(doc)
    with open(tmp_dir / "test.jsonl", "w") as f:
        f.writelines(json.dumps(doc) + "\n" for doc in docs)

    yaml_text = (TEMPLATE_DIR / "task.yaml.tmpl").read_text()
    yaml_text = yaml_text.replace("@TASK_NAME@", params["task_name"])
    yaml_text = yaml_text.replace("@DATA_FILE@", json.dumps(str(final_dir / "test.jsonl")))  # a quoted YAML scalar
    (tmp_dir / f"{params['task_name']}.yaml").write_text(yaml_text)
    shutil.copyfile(TEMPLATE_DIR / "utils.py", tmp_dir / "utils.py")

    letters = {c: sum(d["answer"] == c for d in docs) for c in LETTERS}
    full = dict(
        manifest,
        num_docs=len(docs),
        answer_counts=letters,
        generation_seconds=round(time.perf_counter() - started, 3),
        av_version=_av_version(),
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    (tmp_dir / "manifest.json").write_text(json.dumps(full, indent=2) + "\n")


def ensure_synthetic_task(
    out_dir: str | os.PathLike,
    *,
    num_videos: int = 16,
    num_frames: int = 32,
    size: int = 112,
    fps: int = 8,
    seed: int = 1234,
    task_name: str = "tango_synthetic",
    question_types: list[str] | tuple[str, ...] | None = None,
    lock_timeout: float = 600.0,
    split: str = "test",
) -> Path:
    """Make sure ``out_dir`` holds the synthetic task for these parameters; return its absolute path.

    Builds on first use; reuses the folder untouched when ``manifest.json`` matches the parameters; rebuilds it when
    they differ. Safe to call from several processes at once. ``question_types`` defaults to
    ``("color", "shape", "count", "direction")``; doc ``i`` gets type ``question_types[i % len(question_types)]``.
    ``split``: ``"test"`` (evaluation, the default) or ``"train"`` (disjoint RNG streams, see ``doc_rng``); the
    lmms-eval split is called ``test`` either way.

    Raises ``ValueError`` for bad arguments and ``FileExistsError`` if ``out_dir`` is a non-empty folder that this
    generator did not create (it is never deleted).
    """
    from filelock import FileLock

    params = check_args(num_videos, num_frames, size, fps, seed, task_name, question_types, split)
    out_dir = Path(out_dir).expanduser().resolve()
    expected = _expected_manifest(params, out_dir)
    if _is_current(out_dir, expected):  # fast path, no lock: a folder with a manifest is complete
        return out_dir

    parent, name = out_dir.parent, out_dir.name
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f".{name}.lock"), timeout=lock_timeout):
        if _is_current(out_dir, expected):  # someone else built it while we waited
            return out_dir
        if out_dir.exists():
            manifest = _read_manifest(out_dir)
            ours = manifest is not None and manifest.get("generator") == GENERATOR
            if not out_dir.is_dir() or (not ours and any(out_dir.iterdir())):
                raise FileExistsError(f"{out_dir} exists and was not made by {GENERATOR}; refusing to overwrite it")
        # Under the lock nobody else is building: leftovers of crashed builders are stale.
        for stale in list(parent.glob(f".{name}.tmp-*")) + list(parent.glob(f".{name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)

        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_dir = parent / f".{name}.tmp-{token}"
        try:
            _build(tmp_dir, out_dir, params, expected)
            if out_dir.exists():
                old = parent / f".{name}.old-{token}"
                os.rename(out_dir, old)
                os.rename(tmp_dir, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp_dir, out_dir)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def load_docs(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The docs of a generated task (``out_dir/test.jsonl``), in doc_id order."""
    with open(Path(out_dir) / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m tango.data.synthetic --out DIR``: write the task for lmms-eval's own CLI (``--include_path DIR``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tango.data.synthetic", description=main.__doc__)
    p.add_argument("--out", required=True, help="folder for the videos, annotations and the task YAML")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    try:
        out = ensure_synthetic_task(args.out, num_videos=args.num_videos, num_frames=args.num_frames, size=args.size,
                                    seed=args.seed)
    except (ValueError, FileExistsError) as e:
        p.error(str(e))
    print(f"task tango_synthetic in {out} (pass --include_path {out} to lmms-eval)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
