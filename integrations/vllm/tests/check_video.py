"""The check video both environments build (no file exchanged): seeded uint8 frames, one block moving across."""

import numpy as np


def frames(n: int = 16, size: int = 112, seed: int = 0) -> np.ndarray:
    """``[n, size, size, 3]`` uint8: noise background (fixed) and a bright block moving one step per frame."""
    rng = np.random.default_rng(seed)
    video = np.repeat(rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8), n, axis=0)
    for i in range(n):
        x = (i * 5) % (size - 24)
        video[i, 40:64, x:x + 24] = 250
    return video


def metadata(n: int, fps: float) -> dict:
    """What vLLM's Qwen2.5-VL needs with pre-decoded frames: every frame of an ``n``-frame video at ``fps``."""
    return {"total_num_frames": n, "fps": fps, "duration": n / fps, "video_backend": "opencv",
            "frames_indices": list(range(n)), "do_sample_frames": False}
