"""Frame sampling and video decoding. decord (lmms-eval's decoder) or PyAV; both return the same frame indices.

Decoding happens outside every timed window (the eval wrapper prefetches on a background thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("decord", "pyav")
#: ``model.frame_sampling``: which frames :func:`sample_indices` picks (module doc of :func:`sample_indices`).
FRAME_SAMPLINGS = ("uniform", "qwen_vl_utils")
#: A decoded video may be short of its header's frame count by this fraction (edit lists can trim a few leading
#: frames of a valid file); a larger shortfall is a truncated or corrupt file and an error, not fewer frames.
MAX_FRAME_SHORTFALL = 0.02


class VideoDecodeError(RuntimeError):
    """The video decodes to fewer frames than its header declares (truncated or corrupt file)."""


@dataclass
class Clip:
    """Decoded frames of one video.

    Attributes:
        frames: ``[F, H, W, 3]`` uint8 RGB.
        indices: ``[F]`` frame indices in the source video.
        timestamps: ``[F]`` seconds, ``index / avg_fps``.
        avg_fps: the container's average frame rate.
        total_frames: frames in the source video (as decoded).
        declared_frames: frames the container header declares (0 when it declares none, e.g. some mkv/webm).
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    avg_fps: float
    total_frames: int
    declared_frames: int = 0

    @property
    def repeated_frames(self) -> int:
        """Sampled frames that repeat another (a video shorter than the frames asked for is padded by repetition,
        as lmms-eval's wrappers do); flagged per sample as ``short_video``."""
        return len(self.indices) - len(np.unique(self.indices))


def sample_indices(total_frames: int, num_frames: int, avg_fps: float, fps: float | None = None,
                   sampling: str = "uniform") -> np.ndarray:
    """Frame indices to decode.

    ``sampling="uniform"`` (lmms-eval's LLaVA wrappers): ``linspace(0, total-1, num_frames)`` truncated to int; with
    ``fps`` set, one frame every ``avg_fps / fps`` source frames, capped at ``num_frames`` (uniform over the whole
    video when the cap binds).

    ``sampling="qwen_vl_utils"`` (lmms-eval's ``qwen2_5_vl`` / ``qwen3_vl`` chat wrappers): the frame count is
    qwen-vl-utils' own ``smart_nframes`` -- without ``fps`` the wrapper's ``nframes = min(num_frames, total)`` floored
    to an even count (at least 2); with ``fps`` its rule (``fps`` per second, at least 4 and at most ``num_frames``,
    floored to even) -- and the indices are ``linspace(0, total-1, n)`` **rounded**, as its readers do."""
    if total_frames < 1:
        raise ValueError(f"video has total_frames={total_frames}; need at least 1")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}; need at least 1")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps={fps}; need a positive frame rate")
    if sampling == "qwen_vl_utils":
        import torch
        from qwen_vl_utils.vision_process import smart_nframes

        ele = ({"nframes": max(2, min(num_frames, total_frames) // 2 * 2)} if fps is None
               else {"fps": fps, "max_frames": num_frames})
        n = smart_nframes(ele, total_frames=total_frames, video_fps=avg_fps)
        return torch.linspace(0, total_frames - 1, n).round().long().numpy()
    if sampling != "uniform":
        raise ValueError(f"frame_sampling={sampling!r}; valid: {list(FRAME_SAMPLINGS)}")
    if fps is not None:
        n = max(1, int(total_frames / avg_fps * fps))
        num_frames = min(num_frames, n)
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def declared_frames(path: str) -> int:
    """The frame count in the container header of the first video stream (0 if it declares none); reads no frames."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}")
        return int(container.streams.video[0].frames or 0)


def check_frame_count(path: str, decoded: int, declared: int) -> None:
    """Raise :class:`VideoDecodeError` if ``decoded`` falls short of ``declared`` by more than
    ``MAX_FRAME_SHORTFALL``."""
    if declared and decoded < declared * (1 - MAX_FRAME_SHORTFALL):
        raise VideoDecodeError(f"decoded {decoded} of the {declared} frames its header declares: truncated or "
                               f"corrupt video {path}")


def _pyav_pass(path: str, plan: tuple | None) -> tuple[int, float, dict[int, np.ndarray]]:
    """Decode every frame of ``path`` with PyAV, converting to RGB only the frames :func:`sample_indices` picks for
    ``plan = (total, num_frames, fps, sampling)`` (none when ``plan`` is None: a counting pass). Memory holds the
    sampled frames only, not the video (a one-hour 720p video is ~290 GB of RGB frames).

    Returns:
        ``(frames decoded, average fps, {index: [H, W, 3] uint8})``.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        avg_fps = float(stream.average_rate or stream.guessed_rate)
        wanted = set() if plan is None else set(sample_indices(plan[0], plan[1], avg_fps, *plan[2:]).tolist())
        kept, total = {}, 0
        for frame in container.decode(stream):
            if total in wanted:
                kept[total] = frame.to_ndarray(format="rgb24")
            total += 1
    return total, avg_fps, kept


def read_clip(path: str | Path, num_frames: int, backend: str = "decord", fps: float | None = None,
              sampling: str = "uniform") -> Clip:
    """Decode the frames of ``path`` that :func:`sample_indices` picks (``sampling``); raises
    :class:`VideoDecodeError` when the file decodes to fewer frames than its header declares."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    declared = declared_frames(path)
    if backend == "decord":
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        total, avg_fps = len(vr), float(vr.get_avg_fps())
        check_frame_count(path, total, declared)
        idx = sample_indices(total, num_frames, avg_fps, fps, sampling)
        frames = vr.get_batch(idx.tolist()).asnumpy()
    elif backend == "pyav":
        # Every frame is decoded (seeking is not frame-exact), but only the sampled ones are converted and kept.
        # The indices come from the header's count; a stream that decodes to another count (within the tolerance)
        # is read a second time with the indices of its true count.
        total, avg_fps, kept = _pyav_pass(path, None if not declared else (declared, num_frames, fps, sampling))
        check_frame_count(path, total, declared)
        idx = sample_indices(total, num_frames, avg_fps, fps, sampling)
        if not set(idx.tolist()) <= kept.keys():
            _, _, kept = _pyav_pass(path, (total, num_frames, fps, sampling))
        frames = np.stack([kept[i] for i in idx])
    else:
        raise ValueError(f"video backend {backend!r}; valid: {list(BACKENDS)}")
    if len(frames) != len(idx):
        raise VideoDecodeError(f"asked {len(idx)} frames of {path}, got {len(frames)}")
    return Clip(frames=frames, indices=idx, timestamps=idx / avg_fps, avg_fps=avg_fps, total_frames=total,
                declared_frames=declared)
