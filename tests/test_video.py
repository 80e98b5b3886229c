"""Frame sampling and both decoders: same indices, same frames."""

from pathlib import Path

import av
import numpy as np
import pytest

from tango.video import read_clip, sample_indices

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """40 frames, 64x48, 10 fps; frame i has a bright bar at column i, so a decoded frame tells its index."""
    path = tmp_path_factory.mktemp("v") / "bar.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"crf": "0"}
        for i in range(40):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, i : i + 2] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_uniform_sampling_matches_lmms_eval():
    assert sample_indices(100, 5, 30.0).tolist() == [0, 24, 49, 74, 99]
    assert sample_indices(3, 8, 30.0).tolist() == [0, 0, 0, 0, 1, 1, 1, 2]  # truncation, not rounding


def test_fps_sampling_is_capped():
    assert len(sample_indices(300, 64, 30.0, fps=2.0)) == 20   # 10 s at 2 fps
    assert len(sample_indices(3000, 64, 30.0, fps=2.0)) == 64  # cap


@pytest.mark.parametrize("bad", [dict(total_frames=0, num_frames=4, avg_fps=1.0),
                                 dict(total_frames=10, num_frames=0, avg_fps=1.0),
                                 dict(total_frames=10, num_frames=4, avg_fps=30.0, fps=-1.0)])
def test_bad_sampling_arguments(bad):
    with pytest.raises(ValueError):
        sample_indices(**bad)


def test_qwen_vl_utils_sampling_is_the_librarys_own(video):
    """``sampling="qwen_vl_utils"``: the frames qwen-vl-utils' own decord reader returns (what lmms-eval's Qwen chat
    wrappers feed the processor), with ``nframes = min(num_frames, total)`` floored to even, or by ``fps``."""
    from qwen_vl_utils.vision_process import _read_video_decord

    for num_frames, fps in [(8, None), (7, None), (64, None), (16, 2.0), (4, 2.0)]:
        ele = {"video": str(video), **({"nframes": max(2, min(num_frames, 40) // 2 * 2)} if fps is None
                                       else {"fps": fps, "max_frames": num_frames})}
        _, meta, _ = _read_video_decord(ele)
        clip = read_clip(video, num_frames, backend="pyav", fps=fps, sampling="qwen_vl_utils")
        assert clip.indices.tolist() == meta["frames_indices"], (num_frames, fps)
    assert sample_indices(40, 8, 10.0, sampling="qwen_vl_utils").tolist() == [0, 6, 11, 17, 22, 28, 33, 39]
    assert sample_indices(40, 8, 10.0).tolist() == [0, 5, 11, 16, 22, 27, 33, 39]  # uniform truncates
    with pytest.raises(ValueError, match=r"frame_sampling='qwen'; valid: \['uniform', 'qwen_vl_utils'\]"):
        sample_indices(40, 8, 10.0, sampling="qwen")


def test_decoders_agree(video):
    a = read_clip(video, 8, backend="decord")
    b = read_clip(video, 8, backend="pyav")
    assert a.indices.tolist() == b.indices.tolist() == np.linspace(0, 39, 8, dtype=int).tolist()
    assert a.frames.shape == b.frames.shape == (8, 48, 64, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0
    bar = b.frames[:, 24].mean(-1).argmax(-1)  # brightest column of row 24 = the source frame index
    assert np.abs(bar - b.indices).max() <= 1
    np.testing.assert_allclose(b.timestamps, b.indices / 10.0)


def test_bad_backend_and_missing_file(video, tmp_path):
    with pytest.raises(ValueError, match="valid"):
        read_clip(video, 4, backend="nope")
    with pytest.raises(FileNotFoundError):
        read_clip(tmp_path / "missing.mp4", 4)


def _peak_rss_mib(code: str) -> float:
    """Peak resident memory (MiB) of a fresh Python process running ``code``: its own ``VmHWM`` (``getrusage``'s
    maxrss would include the forking test process's size, carried across ``exec``)."""
    import subprocess
    import sys

    report = ("\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0])")  # kB
    out = subprocess.run([sys.executable, "-c", code + report], check=True, timeout=300, capture_output=True,
                         text=True).stdout
    return int(out.split()[-1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_pyav_keeps_only_the_sampled_frames_in_memory(tmp_path):
    """A 900-frame 640x360 video (622 MB of RGB frames) read for 8 frames: the process's peak memory stays near that
    of decoding one frame at a time (decoding every frame into memory first would add ~600 MB); the same frames as
    decord."""
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(900):
            img = np.zeros((360, 640, 3), np.uint8)
            img[:, i % 640] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    base = _peak_rss_mib("import av, numpy, tango.video")
    peak = _peak_rss_mib(f"from tango.video import read_clip; read_clip({str(path)!r}, 8, backend='pyav')")
    assert peak - base < 150, f"peak {peak:.0f} MiB against {base:.0f} MiB without decoding"
    clip, ref = read_clip(path, 8, backend="pyav"), read_clip(path, 8, backend="decord")
    assert clip.indices.tolist() == ref.indices.tolist() and clip.total_frames == ref.total_frames == 900
    assert np.abs(clip.frames.astype(int) - ref.frames.astype(int)).mean() < 2.0


def test_pyav_on_a_container_without_a_frame_count(tmp_path):
    """Matroska declares no frame count: PyAV counts in a first pass, then decodes the sampled frames."""
    from tango.video import declared_frames

    path = tmp_path / "bar.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, 2 * i : 2 * i + 2] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert declared_frames(str(path)) == 0
    clip = read_clip(path, 6, backend="pyav")
    assert clip.total_frames == 30 and clip.indices.tolist() == np.linspace(0, 29, 6, dtype=int).tolist()
    bar = clip.frames[:, 24].mean(-1).argmax(-1) // 2  # the bar's column tells the source frame
    assert np.abs(bar - clip.indices).max() <= 1
