"""Frame sampling and both decoders: same indices, same frames."""

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
