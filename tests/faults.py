"""Broken inputs the reliability tests and the README's catalogue of bad inputs share."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_truncated_mp4(path: Path, frames: int = 48, keep: int = 18, size: int = 64) -> Path:
    """An mp4 whose index (moov, written first: ``faststart``) declares ``frames`` frames, cut after the first
    ``keep`` packets: decoders read ``keep`` frames without an error, as from an interrupted copy."""
    full = path.with_suffix(".full.mp4")
    rgb = np.random.default_rng(0).integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for f in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(full)) as container:
        packets = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    path.write_bytes(full.read_bytes()[: packets[keep]])
    full.unlink()
    return path
